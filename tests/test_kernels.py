"""Every kernel set against the readable NumPy set (the oracle), cell by cell and
through the model, sampling, the gradient check and a resumed run; the choice of set
and threads in one place (kernels.use, runtime.configure)."""

import sys

import numpy as np
import pytest

from charlstm import kernels, model, runtime
from charlstm.errors import CharlstmError
from charlstm.kernels import numpy_cell
from charlstm.model import backward, forward
from charlstm.optim import Adam
from charlstm.sample import SamplingStep
from charlstm.train import resume, train
from helpers import numeric_gradient, perturbed_model, random_window, relative_error, tiny_config

# float32: the compiled tanh is a rational approximation (numba_cell.py), within a
# few float32 ulps of NumPy's; float64 keeps libm's tanh and NumPy's order of operations.
TOLERANCE = {np.float32: 5e-6, np.float64: 1e-14}


def column_block(rng, rows, batch, dtype):
    """A (rows, batch) view with contiguous rows spaced wider than batch, as the layer
    loop hands over a block of its (T, 4H, B) buffers."""
    return rng.normal(size=(rows, batch + 3)).astype(dtype)[:, 1:batch + 1]


def run_cell(cell_set, name, inputs):
    outputs = {key: value.copy() for key, value in inputs.items()}
    with kernels.using(cell_set) as chosen:
        getattr(chosen, name)(*outputs.values())
    return outputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 5, 33])
def test_compiled_cell_forward_and_backward_equal_numpy(compiled_set, dtype, batch):
    rng = np.random.default_rng(batch)
    hidden, vocab = 7, 11
    block = lambda rows: column_block(rng, rows, batch, dtype)  # noqa: E731
    z, recurrent = block(4 * hidden) * 2, block(4 * hidden)
    state = {"gates": block(4 * hidden), "c_prev": block(hidden), "c": block(hidden), "tanh_c": block(hidden),
             "h": block(hidden)}
    forward_in = {"z": z, "recurrent": recurrent, **state}
    ids_in = {"table": rng.normal(size=(4 * hidden, vocab)).astype(dtype),
              "ids": rng.integers(0, vocab, batch), "recurrent": recurrent, **state}
    backward_in = {"gates": np.tanh(block(4 * hidden)) * 0.5 + 0.5, "c_prev": block(hidden),
                   "tanh_c": np.tanh(block(hidden)), "d_out": block(hidden), "d_h_carry": block(hidden),
                   "d_c": block(hidden), "d_z": block(4 * hidden)}
    outputs = {"cell_forward": ("gates", "c", "tanh_c", "h"), "cell_forward_ids": ("gates", "c", "tanh_c", "h"),
               "cell_backward": ("d_z", "d_c")}
    for name, inputs in [("cell_forward", forward_in), ("cell_forward_ids", ids_in), ("cell_backward", backward_in)]:
        ours, oracle = run_cell(compiled_set, name, inputs), run_cell("numpy", name, inputs)
        for key in outputs[name]:
            assert ours[key].dtype == dtype
            np.testing.assert_allclose(ours[key], oracle[key], rtol=0, atol=TOLERANCE[dtype], err_msg=f"{name} {key}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_with_each_set_is_bitwise_numpys(compiled_set, dtype):
    rng = np.random.default_rng(7)
    start = rng.normal(size=1000).astype(dtype)
    results = {}
    for name in (compiled_set, "numpy"):
        params = start.copy()
        adam = Adam(len(params), weight_decay=0.01, dtype=dtype)
        with kernels.using(name):
            for step in range(5):
                adam.step(params, np.random.default_rng(step).normal(size=1000).astype(dtype), 1e-2,
                          decay_views=[params[:500]])
        results[name] = params, adam.exp_avg, adam.exp_avg_sq
    for ours, oracle in zip(results[compiled_set], results["numpy"]):
        assert ours.dtype == dtype and np.array_equal(ours, oracle)


# sizes below, at and past one block of the lanes (2 uniforms an output), odd and even
@pytest.mark.parametrize("size", [1, 2, 63, 64, 65, 1001, (7, 3, 50)])
@pytest.mark.parametrize("spent_before", [0, 1, 2])  # uniforms drawn first: 1 leaves NumPy holding a half
def test_uniforms_with_each_set_are_numpys_and_leave_the_generator_where_numpys_do(compiled_set, size,
                                                                                   spent_before):
    draw = kernels.current().random_float32
    if draw is None:
        pytest.skip(f"the {compiled_set} set draws with NumPy itself")
    for seed in range(3):
        ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        ours.random(spent_before, dtype=np.float32), theirs.random(spent_before, dtype=np.float32)
        drawn = draw(ours, size)
        assert drawn.dtype == np.float32 and np.array_equal(drawn, theirs.random(size, dtype=np.float32))
        assert ours.bit_generator.state == theirs.bit_generator.state
        assert np.array_equal(ours.random(9, dtype=np.float32), theirs.random(9, dtype=np.float32))


def test_uniforms_from_another_generator_are_numpys_own(compiled_set):
    draw = kernels.current().random_float32
    if draw is None:
        pytest.skip(f"the {compiled_set} set draws with NumPy itself")
    ours, theirs = (np.random.Generator(np.random.Philox(4)) for _ in range(2))
    assert np.array_equal(draw(ours, 100), theirs.random(100, dtype=np.float32))
    assert np.array_equal(ours.random(9), theirs.random(9))  # left in the same state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shard", [None, (3, 8)])
def test_dropout_with_each_set_is_bitwise_numpys(compiled_set, dtype, shard):
    apply = kernels.current().apply_dropout
    if apply is None:
        pytest.skip(f"the {compiled_set} set applies dropout with NumPy itself")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 5, 4)).astype(dtype)
    x[0, 0, 0] = -1.0  # a dropped negative is -0.0 in NumPy's product
    first, total = shard or (0, 4)
    uniforms = rng.random((6, total, 5), dtype=np.float32)
    for ours, oracle in zip(apply(uniforms, first, x, 0.3), model.apply_dropout(uniforms, first, x, 0.3)):
        assert ours.shape == oracle.shape and ours.dtype == dtype
        assert np.array_equal(ours, oracle) and np.array_equal(np.signbit(ours), np.signbit(oracle))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("vocab", [1, 7, 65, 1000])
def test_softmax_with_each_set_equals_numpys(compiled_set, dtype, vocab):
    softmax = kernels.current().softmax_rows
    if softmax is None:
        pytest.skip(f"the {compiled_set} set takes NumPy's softmax")
    rng = np.random.default_rng(vocab)
    logits = (rng.normal(size=(50, vocab)) * 10).astype(dtype)
    logits[0, 0] = -200  # a probability that underflows
    bias, targets = rng.normal(size=vocab).astype(dtype), rng.integers(0, vocab, 50)
    ours, oracle = logits.copy(), logits.copy()
    ours_nll, oracle_nll = softmax(ours, bias, targets), model.softmax_rows(oracle, bias, targets)
    assert ours.dtype == ours_nll.dtype == dtype
    np.testing.assert_allclose(ours, oracle, rtol=TOLERANCE[dtype], atol=1e-30)
    np.testing.assert_allclose(ours_nll, oracle_nll, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_softmax_with_each_set_keeps_a_diverged_row_not_finite(compiled_set):
    softmax = kernels.current().softmax_rows
    if softmax is None:
        pytest.skip(f"the {compiled_set} set takes NumPy's softmax")
    logits = np.array([[np.nan, 1, 2], [np.inf, 0, 0], [2, 1, 0]], np.float32)
    nll = softmax(logits, np.zeros(3, np.float32), np.array([1, 1, 2]))
    assert not np.isfinite(nll[:2]).any() and np.isfinite(nll[2])


def test_the_compiled_float32_exp_is_within_two_ulps_of_the_true_exp():
    numba = pytest.importorskip("numba", reason="numba is not installed: the NumPy set takes np.exp")
    from charlstm.kernels.numba_arrays import _exp

    @numba.njit
    def exp_each(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp(x[i])

    x = np.concatenate([np.linspace(-87, 0, 400_001, dtype=np.float32), np.float32([-0.0, -1e-30, -86.99])])
    ours = np.empty_like(x)
    exp_each(x, ours)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ours.dtype == np.float32 and (np.abs(ours - exact) / ulp).max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dropout, weight_dropout", [(0.0, 0.0), (0.3, 0.0), (0.3, 0.3)])
def test_the_model_with_each_set_equals_the_numpy_set_in_loss_state_and_gradients(compiled_set, dtype, dropout,
                                                                                  weight_dropout):
    rng = np.random.default_rng(4)
    vocab, hidden, layers, T, B = 13, 24, 2, 9, 20
    params = perturbed_model(rng, vocab, hidden, layers).astype(dtype)
    ids, targets, state = random_window(rng, vocab, layers, hidden, T, B, dtype)

    def loss_state_and_grads(name):
        with kernels.using(name):
            loss, final, cache = forward(params, ids, targets, state, dropout, np.random.default_rng(5),
                                         recurrent_weight_dropout=weight_dropout)
            grads = params.zeros_like()
            d_start = backward(params, cache, grads)
        return loss, [*final, *d_start, grads.flat]

    loss, arrays = loss_state_and_grads(compiled_set)
    oracle_loss, oracle_arrays = loss_state_and_grads("numpy")
    assert loss == pytest.approx(oracle_loss, rel=10 * TOLERANCE[dtype])
    for ours, theirs in zip(arrays, oracle_arrays):
        scale = max(np.abs(theirs).max(), 1e-3)
        assert np.abs(ours - theirs).max() <= 20 * TOLERANCE[dtype] * scale


def test_the_gradient_check_passes_with_each_set(kernel_set):
    rng = np.random.default_rng(6)
    vocab, hidden, layers, T, B = 6, 4, 2, 5, 3
    params = perturbed_model(rng, vocab, hidden, layers)
    ids, targets, state = random_window(rng, vocab, layers, hidden, T, B)

    def run():  # both kinds of dropout on, with the same masks every call
        return forward(params, ids, targets, state, dropout=0.3, rng=np.random.default_rng(7),
                       recurrent_weight_dropout=0.3)

    def loss():
        return run()[0]

    _, _, cache = run()
    grads = params.zeros_like()
    backward(params, cache, grads)
    worst = max(relative_error(grads[name], numeric_gradient(loss, params[name])).max() for name in params.names())
    assert worst < 1e-5


@pytest.mark.parametrize("num_samples", [1, 4])
def test_sampling_steps_with_each_set_equal_the_numpy_set(compiled_set, num_samples):
    rng = np.random.default_rng(8)
    params = perturbed_model(rng, vocab=9, hidden=16, layers=2).astype(np.float32)
    start = tuple(rng.normal(scale=0.5, size=(2, num_samples, 16)).astype(np.float32) for _ in range(2))
    feed = rng.integers(0, 9, (20, num_samples))

    def logits_of(name):
        with kernels.using(name):
            stepper = SamplingStep(params, start)
            return np.stack([stepper(ids).copy() for ids in feed])

    np.testing.assert_allclose(logits_of(compiled_set), logits_of("numpy"), rtol=0, atol=1e-5)


# A constant rate: a run first planned for fewer steps keeps the same schedule.
RESUME = {"train.lr_schedule": "constant", "train.batch_size": 8, "train.seq_len": 16, "train.max_steps": 12,
          "model.dropout": 0.2, "model.recurrent_weight_dropout": 0.2, "train.eval_every": 6,
          "train.checkpoint_every": 1000, "train.sample_every": 5, "train.sample_length": 5, "train.log_every": 3,
          "train.state_reset": 0.2}
QUIET = {"show_progress": False, "echo": lambda s: None}


def test_a_resumed_run_is_bitwise_the_uninterrupted_run_with_each_set(kernel_set, tiny_corpus, tmp_path):
    from charlstm import checkpoint

    def weights(run_dir):
        ckpt = checkpoint.load(run_dir / "last.safetensors")
        return ckpt.params.flat, ckpt.optimizer_moments[0], ckpt.carried_state[0]

    config = dict(RESUME, **{"train.kernels": kernel_set})
    train(tiny_config(**config), tiny_corpus, tmp_path / "one-go", **QUIET)
    train(tiny_config(**{**config, "train.max_steps": 7}), tiny_corpus, tmp_path / "resumed", **QUIET)
    resume(tmp_path / "resumed", ["train.max_steps=12"], **QUIET)
    for ours, theirs in zip(weights(tmp_path / "resumed"), weights(tmp_path / "one-go")):
        assert np.array_equal(ours, theirs)


def test_the_thread_count_changes_results_only_by_rounding(tiny_corpus, tmp_path):
    """1 or 2 BLAS threads give the same gradients to float32 rounding (OpenBLAS's
    sums change order with its thread count, so not bit for bit: a run's thread
    count is fixed, see runtime.py)."""
    results = []
    for threads in (1, 2):
        runtime.configure("auto", threads)
        rng = np.random.default_rng(9)
        params = perturbed_model(rng, 11, 128, 2).astype(np.float32)
        ids, targets = rng.integers(0, 11, (16, 64)), rng.integers(0, 11, (16, 64))
        state = tuple(np.zeros((2, 64, 128), np.float32) for _ in range(2))
        _, _, cache = forward(params, ids, targets, state, 0.2, np.random.default_rng(1))
        grads = params.zeros_like()
        backward(params, cache, grads)
        results.append(grads.flat.copy())
    runtime.configure("auto", 1)
    np.testing.assert_allclose(*results, rtol=1e-4, atol=1e-5)


def test_auto_takes_numba_when_it_imports_and_numpy_otherwise():
    try:
        import numba  # noqa: F401
        expected = "numba"
    except ImportError:
        expected = "numpy"
    assert kernels.load("auto").name == expected
    assert kernels.load("numpy").cell_forward is numpy_cell.cell_forward


def test_an_unknown_set_is_one_line():
    with pytest.raises(CharlstmError, match="unknown kernel set 'gpu'"):
        kernels.load("gpu")


def test_the_config_refuses_an_unknown_set_and_negative_threads():
    with pytest.raises(CharlstmError, match="train.kernels"):
        tiny_config(**{"train.kernels": "fortran"})
    with pytest.raises(CharlstmError, match="train.threads"):
        tiny_config(**{"train.threads": -1})


def test_threads_without_threadpoolctl_are_refused_before_the_run_directory(tmp_path, tiny_corpus, monkeypatch, capsys):
    """threadpoolctl comes with the fast extra: without it the plain install trains, and an
    explicit thread count is refused in one line, leaving nothing behind."""
    from charlstm.cli import main
    from helpers import TINY_RUN, one_error_line

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import threadpoolctl now fails
    assert main(["train", str(tiny_corpus), "--out", str(tmp_path / "run"), "--threads", "1", *TINY_RUN]) == 1
    assert "needs threadpoolctl" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
    assert main(["train", str(tiny_corpus), "--out", str(tmp_path / "plain"), *TINY_RUN]) == 0


def test_the_default_thread_count_is_this_process_share_of_the_cores(monkeypatch):
    pytest.importorskip("threadpoolctl", reason='threadpoolctl sets the BLAS threads (pip install "charlstm[fast]")')
    for variable in runtime.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    try:
        assert runtime.configure("auto", 0).threads == 8
        assert runtime.configure("auto", 0, ranks_on_host=2).threads == 4
        assert runtime.configure("auto", 0, ranks_on_host=16).threads == 1
        assert runtime.configure("auto", 3, ranks_on_host=2).threads == 3  # an explicit count stands
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runtime.configure("auto", 0, ranks_on_host=4).threads == 2  # as sweep --jobs sets it
    finally:
        runtime.configure("auto", 1)


def test_the_runtime_names_the_blas_and_whether_its_core_was_pinned(monkeypatch):
    pytest.importorskip("threadpoolctl", reason='threadpoolctl inspects the BLAS (pip install "charlstm[fast]")')
    from threadpoolctl import threadpool_info

    blas = next(lib for lib in threadpool_info() if lib["user_api"] == "blas")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    described = runtime.configure("auto", 1).describe()
    assert described.startswith(f"kernels {kernels.current().name}, 1 BLAS threads, {blas['internal_api']} ")
    assert f"{blas.get('architecture')} kernels" in described and "OPENBLAS_CORETYPE" not in described
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # read as the process found it, as a run records it
    assert runtime.blas_kernels().endswith("kernels (OPENBLAS_CORETYPE=Haswell)")
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # the plain install: nothing to inspect
    assert runtime.blas_kernels() == ""
    assert runtime.Runtime("numpy", 2, runtime.blas_kernels()).describe() == "kernels numpy, 2 BLAS threads"
