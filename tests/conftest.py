"""Fixtures shared by the test modules (plain helpers live in helpers.py)."""

from pathlib import Path

import pytest

from charlstm import kernels
from helpers import tiny_args, write_tiny_corpus


def _numba_missing() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return True
    return False


# Every kernel set, for tests that must hold for each; a set that cannot run here is
# skipped with the reason shown in pytest's summary (-rs).
KERNEL_SETS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("numba", id="numba", marks=pytest.mark.skipif(
        _numba_missing(), reason="numba is not installed: pip install -e '.[fast]' tests the compiled set")),
]


@pytest.fixture(params=KERNEL_SETS)
def kernel_set(request):
    """Run the test with each kernel set selected in turn."""
    with kernels.using(request.param):
        yield request.param


@pytest.fixture(params=[p for p in KERNEL_SETS if p.values != ("numpy",)])
def compiled_set(request):
    """Each set but the NumPy one, for tests that compare a set with the NumPy set (the
    NumPy set against itself could not fail)."""
    with kernels.using(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def restore_kernel_set():
    """Training and the CLI select a kernel set for the whole process; put back the
    one a test started with, so tests do not depend on their order."""
    with kernels.using(kernels.current().name):
        yield


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return write_tiny_corpus(tmp_path)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """best.safetensors of a 2x32 model trained until its argmax text is the corpus's
    sentences (300 steps, about a second): the checkpoint the export tests use."""
    from charlstm.cli import main

    root = tmp_path_factory.mktemp("small_model")
    corpus = write_tiny_corpus(root)
    assert main(["train", str(corpus), "--out", str(root / "run"), "--quiet",
                 "--set", "model.hidden_size=32", "--set", "train.max_steps=300",
                 "--set", "train.batch_size=8", "--set", "train.seq_len=32", "--set", "train.lr=0.01",
                 "--set", "train.eval_every=100", "--set", "train.sample_length=0"]) == 0
    return root / "run" / "best.safetensors"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory of the tiny config on the tiny corpus (20 steps), trained once for
    the whole test run: tests read it and never change it."""
    from charlstm.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    assert main(["train", str(write_tiny_corpus(root)), "--out", str(root / "run"), *tiny_args()]) == 0
    return root / "run"
