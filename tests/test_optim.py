import numpy as np
import pytest

from charlstm.optim import Adam, clip_global_norm, learning_rate


def test_clipping_scales_to_the_max_norm_and_returns_the_norm_before():
    grads = np.array([3.0, 4.0], dtype=np.float32)
    assert clip_global_norm(grads, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = np.array([0.3, 0.4], dtype=np.float32)
    assert clip_global_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small, np.array([0.3, 0.4], dtype=np.float32))


def test_zero_max_norm_disables_clipping():
    grads = np.array([30.0, 40.0])
    assert clip_global_norm(grads, 0.0) == pytest.approx(50.0)
    np.testing.assert_array_equal(grads, [30.0, 40.0])


def test_adam_matches_the_paper_update(kernel_set):
    rng = np.random.default_rng(0)
    params = rng.normal(size=6)
    adam = Adam(6, betas=(0.8, 0.95), eps=1e-6, dtype=np.float64)
    m = v = np.zeros(6)
    expected = params.copy()
    for t in range(1, 5):
        g = rng.normal(size=6)
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g * g
        m_hat, v_hat = m / (1 - 0.8 ** t), v / (1 - 0.95 ** t)
        expected -= 0.01 * m_hat / (np.sqrt(v_hat) + 1e-6)
        adam.step(params, g, 0.01)
    np.testing.assert_allclose(params, expected, rtol=1e-12)
    assert adam.step_count == 4


def test_weight_decay_is_decoupled_and_only_on_given_views():
    params = np.ones(4)
    adam = Adam(4, weight_decay=0.5, dtype=np.float64)
    adam.step(params, np.zeros(4), lr=0.1, decay_views=[params[:2]])
    np.testing.assert_allclose(params, [0.95, 0.95, 1.0, 1.0])


def test_schedules():
    kw = dict(base_lr=1.0, warmup_steps=10, max_steps=110, final_fraction=0.1)
    assert learning_rate(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert learning_rate(9, schedule="cosine", **kw) == pytest.approx(1.0)
    for schedule in ("cosine", "exponential"):
        assert learning_rate(10, schedule=schedule, **kw) == pytest.approx(1.0)
        assert learning_rate(109, schedule=schedule, **kw) == pytest.approx(0.1)
        rates = [learning_rate(s, schedule=schedule, **kw) for s in range(10, 110)]
        assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(60, schedule="constant", **kw) == 1.0
    assert learning_rate(59, schedule="cosine", **kw) == pytest.approx(0.55, abs=0.01)
    assert learning_rate(59, schedule="exponential", **kw) == pytest.approx(0.1 ** 0.5, rel=0.03)
