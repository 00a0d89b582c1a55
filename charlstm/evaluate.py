"""Evaluation: the model's mean loss over a text, every stream starting from the
initial state, independent of the batch size the model was trained with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import eval_plan, eval_windows
from .model import Params, forward, initial_state
from .parallel import SingleProcess


@dataclass
class Evaluation:
    loss: float         # mean nats/char over every scored prediction
    chars: int          # predictions scored: every character of the text but the first
    streams: int        # segments read side by side
    warmup_chars: int   # characters read before the segments for context, not scored

    @property
    def bits_per_char(self) -> float:
        return self.loss / math.log(2)

    def describe(self) -> str:
        """What was done, in words, for the result line."""
        return (f"{self.chars:,} characters in {self.streams} stream{'' if self.streams == 1 else 's'} from the initial state, "
                f"{self.warmup_chars:,} characters of warm-up not scored")


def evaluate(params: Params, ids: np.ndarray, streams: int, seq_len: int, warmup: int,
             comm: SingleProcess = SingleProcess()) -> Evaluation:
    """Mean loss in nats/char over every next-character prediction in `ids`: the text
    is cut into `streams` contiguous segments read side by side (see
    data.eval_windows), each starting from the initial state `warmup` characters
    before its segment. The result does not depend on any training setting; more
    streams run faster, a longer warm-up scores each segment's start with more context.
    Under MPI (`comm`), each rank reads its share of the segments and the sums are added."""
    read_start, scored_start, _ = eval_plan(len(ids), streams, warmup)
    # np.array_split's shares: the segments need not divide evenly among the ranks.
    mine = np.array_split(np.arange(len(read_start)), comm.size)[comm.rank]
    state = initial_state(params, len(mine))
    sums = np.zeros(2)  # scored loss, scored characters
    for inputs, targets, mask in eval_windows(ids, streams, seq_len, warmup):
        if len(mine) == 0:
            continue
        inputs, targets, mask = inputs[:, mine], targets[:, mine], mask[:, mine]
        if not mask.any():  # e.g. a window of warm-up only: carry the state, score nothing
            state = forward(params, inputs, targets, state)[1]
            continue
        loss, state, cache = forward(params, inputs, targets, state, mask=mask)
        sums += loss * cache.count, cache.count
    total, count = comm.sum(sums)
    return Evaluation(total / count, int(count), len(read_start), int((scored_start - read_start).sum()))
