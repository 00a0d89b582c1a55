"""The check every export passes before its file is written: the exported artifact,
run on a few characters, gives the checkpoint's logits (computed by api.run).

Exporters build their files in memory, run them here where they can (onnxruntime,
node, or by reading the bytes back), and write nothing if the logits differ, so a
file that exists is a file that was checked.
"""

from __future__ import annotations

import numpy as np

from .errors import CharlstmError

PROBE_LENGTH = 64
# float32 logits computed in a different order (another runtime's kernels, JavaScript's
# doubles) agree to ~1e-6 on models of this size; a wrong mapping is off by O(1).
TOLERANCE = 1e-4


def probe_ids(vocab_size: int) -> np.ndarray:
    """PROBE_LENGTH character ids (fixed, pseudo-random) to run an export on."""
    return np.random.default_rng(0).integers(0, vocab_size, PROBE_LENGTH)


def require_close(expected: np.ndarray, actual: np.ndarray, artifact: str) -> float:
    """The largest absolute difference, or a CharlstmError saying the export was
    refused when it is above TOLERANCE (relative to the logits' scale) or not finite."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        raise CharlstmError(f"{artifact} gave logits of shape {actual.shape}, expected {expected.shape}; "
                            "nothing was written (a bug in charlstm's exporter: please report it)")
    difference = float(np.max(np.abs(expected - actual))) if expected.size else 0.0
    limit = TOLERANCE * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    if not np.isfinite(actual).all() or not difference <= limit:
        raise CharlstmError(f"{artifact} gave logits that differ from the checkpoint's by {difference:.3g} "
                            f"(more than {limit:.3g}); nothing was written (a bug in charlstm's exporter: "
                            "please report it)")
    return difference
