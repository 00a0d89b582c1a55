"""Evaluation: the mean loss of a model over a text, with state carried."""

from __future__ import annotations

import numpy as np

from .data import eval_windows
from .model import Params, forward, zero_state


def evaluate(params: Params, ids: np.ndarray, batch_size: int, seq_len: int) -> float:
    """Mean loss in nats/char over every next-character prediction in `ids`,
    streamed as `batch_size` contiguous streams with state carried."""
    batch_size = min(batch_size, len(ids) - 1)  # never more streams than predictions
    state = zero_state(params.num_layers, batch_size, params.hidden_size, params.flat.dtype)
    total, count = 0.0, 0.0
    for inputs, targets, mask in eval_windows(ids, batch_size, seq_len):
        loss, state, cache = forward(params, inputs, targets, state, mask=mask)
        total += loss * cache.count
        count += cache.count
    return total / count
