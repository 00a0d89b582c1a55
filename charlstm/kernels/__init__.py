"""Kernel sets: the per-step cell math behind one boundary.

The layer loop (charlstm/lstm.py) owns the matrix products and the buffers; a kernel
set owns the pointwise work of one time step, the part that NumPy runs as one ufunc
per operation. Every set provides the same three functions with the same in-place
contract, documented on the readable NumPy set (numpy_cell.py):

    cell_forward(z, recurrent, gates, c_prev, c, tanh_c, h)
    cell_forward_ids(table, ids, recurrent, gates, c_prev, c, tanh_c, h)
    cell_backward(gates, c_prev, tanh_c, d_out, d_h_carry, d_c, d_z)

and may compile whole-array work too, with the same arguments and results as the
NumPy function it stands for (None: that function runs): `adam_update`
(optim.adam_update), `scaled_transpose` (lstm.scaled_transpose),
`random_float32` (rng.random(shape, dtype=np.float32): the same numbers, and the
generator left in the same state), `apply_dropout` (model.apply_dropout: the same
numbers, in any layout) and `softmax_rows` (model.softmax_rows, to float32 rounding).

The model, the training loop, evaluation and sampling never name a set: they call
`current()`. The set is chosen here and only here (`use`), so a compiled set or a
GPU set is added by registering it in `_loaders`, without touching anything else.
Every set is tested against charlstm/reference.py, the textbook LSTM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import CharlstmError


@dataclass(frozen=True)
class KernelSet:
    name: str
    cell_forward: Callable
    cell_forward_ids: Callable
    cell_backward: Callable
    adam_update: Callable | None = None
    scaled_transpose: Callable | None = None
    random_float32: Callable | None = None
    apply_dropout: Callable | None = None
    softmax_rows: Callable | None = None


def _numpy() -> KernelSet:
    from . import numpy_cell
    return KernelSet("numpy", numpy_cell.cell_forward, numpy_cell.cell_forward_ids, numpy_cell.cell_backward)


def _numba() -> KernelSet:
    from . import numba_arrays, numba_cell, numba_random  # ImportError without numba (pip install "charlstm[fast]")
    return KernelSet("numba", numba_cell.cell_forward, numba_cell.cell_forward_ids, numba_cell.cell_backward,
                     numba_arrays.adam_update, numba_arrays.scaled_transpose, numba_random.random_float32,
                     numba_arrays.apply_dropout, numba_arrays.softmax_rows)


# name -> loader; a loader raises ImportError when its set cannot run here. `auto`
# takes the first set in this order that loads: the compiled set when numba is there.
_loaders: dict[str, Callable[[], KernelSet]] = {"numba": _numba, "numpy": _numpy}
_current: KernelSet = _numpy()


def names() -> list[str]:
    """Every selectable name, `auto` first."""
    return ["auto", *_loaders]


def load(name: str) -> KernelSet:
    """The kernel set called `name` (or the best available for `auto`); a CharlstmError
    in one line if it is unknown or cannot run here."""
    if name == "auto":
        for candidate in _loaders:
            try:
                return _loaders[candidate]()
            except ImportError:
                continue
    if name not in _loaders:
        raise CharlstmError(f"unknown kernel set {name!r}; choose one of {', '.join(names())}")
    try:
        return _loaders[name]()
    except ImportError as exc:
        raise CharlstmError(f"the {name} kernel set cannot run here ({exc})") from None


def current() -> KernelSet:
    """The set the layers step with."""
    return _current


def use(name: str) -> KernelSet:
    """Select the set every later step uses; returns it."""
    global _current
    _current = load(name)
    return _current


@contextmanager
def using(name: str) -> Iterator[KernelSet]:
    """Select a set for the duration of a `with` block (tests, benchmarks)."""
    global _current
    previous = _current
    try:
        yield use(name)
    finally:
        _current = previous
