"""Beam search: the most likely continuation of a fixed length, approximately.

The beams are the N columns of one SamplingStep, so each step is one batched product
like sampling N streams; after each step the columns are reordered to the surviving
beams' parents. Width 1 is greedy decoding (--argmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Vocab
from .errors import CharlstmError
from .model import Params
from .sample import SamplingStep, log_softmax, read_prime


@dataclass(frozen=True)
class BeamResult:
    text: str  # the generated characters, prime excluded
    log_prob: float  # natural log of its probability under the model, given the prime


def beam_search(params: Params, vocab: Vocab, length: int, width: int, prime: str = "") -> BeamResult:
    """The highest-scoring of `width` beams after `length` characters."""
    if width < 1:
        raise CharlstmError(f"--beam must be 1 or more, got {width}")
    if length < 0:
        raise CharlstmError(f"--length must be 0 or more, got {length}")
    state, current = read_prime(params, vocab, prime, width)
    stepper = SamplingStep(params, state)
    # All beams start as copies of one: only the first may be extended at the first step.
    scores = np.full(width, -np.inf)
    scores[0] = 0.0
    history = np.empty((length, width), dtype=np.intp)  # history[t, b]: character t of beam b
    for t in range(length):
        candidates = scores[:, None] + log_softmax(stepper(current).T)  # (width, V)
        # stable, so that ties go to the lower (beam, character) index, as argmax does
        best = np.argsort(-candidates, axis=None, kind="stable")[:width]
        parents, current = np.divmod(best, candidates.shape[1])
        scores = candidates.reshape(-1)[best]
        history[:t] = history[:t, parents]
        history[t] = current
        for array in (stepper.h, stepper.c):  # (L, H, width): each column follows its parent
            array[...] = array[:, :, parents]
    return BeamResult(vocab.decode(history[:, 0]) if length else "", float(scores[0]) if length else 0.0)
