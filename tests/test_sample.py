import numpy as np
import pytest

from charlstm.errors import CharlstmError
from charlstm.model import initial_state, logits
from charlstm.sample import draw, generate, next_char_probs
from helpers import SAMPLING_VOCAB, sampling_model

VOCAB = SAMPLING_VOCAB


@pytest.fixture
def params():
    return sampling_model(0.3)


def text(params, length=60, seed=0, **kw):
    return "".join(generate(params, VOCAB, length, rng=np.random.default_rng(seed), **kw))


def test_same_seed_same_text_and_other_seeds_differ(params):
    assert text(params, seed=5) == text(params, seed=5)
    assert text(params, seed=5) != text(params, seed=6)
    assert len(text(params, length=37)) == 37 and set(text(params)) <= set(VOCAB.chars)


def test_argmax_and_top_1_are_greedy_and_ignore_the_seed(params):
    greedy = text(params, argmax=True, seed=1)
    assert greedy == text(params, argmax=True, seed=2)
    assert greedy == text(params, top_k=1, seed=3)


def test_generation_follows_the_model_step_by_step(params):
    """Each generated character was the argmax of the model given the prime and the text so far."""
    prime = "ab c"
    out = text(params, length=15, prime=prime, argmax=True)
    ids = VOCAB.encode(prime + out).astype(np.intp)[:, None]
    scores = logits(params, ids, initial_state(params, 1))[0][:, 0]  # sampling starts there too
    predicted = VOCAB.decode(scores.argmax(axis=1)[len(prime) - 1:-1])
    assert predicted == out


def test_batched_samples_are_independent_rows(params):
    steps = list(generate(params, VOCAB, 40, rng=np.random.default_rng(0), num_samples=8))
    rows = ["".join(step[n] for step in steps) for n in range(8)]
    assert len(set(rows)) > 1


def test_each_sample_of_a_greedy_batch_equals_the_single_greedy_sample(params):
    single = text(params, length=40, prime="ab", argmax=True)
    steps = list(generate(params, VOCAB, 40, prime="ab", argmax=True, rng=np.random.default_rng(0),
                          num_samples=5))
    assert all(len(step) == 5 for step in steps)
    assert ["".join(step[n] for step in steps) for n in range(5)] == [single] * 5


def test_batched_sampling_follows_the_model_for_every_sample(params):
    """Sample n of a temperature batch: each character is a likely next character for
    sample n's own history, checked against a fresh run of the whole stack."""
    steps = list(generate(params, VOCAB, 25, prime="a", temperature=0.5, rng=np.random.default_rng(9),
                          num_samples=4))
    samples = ["a" + "".join(step[n] for step in steps) for n in range(4)]
    ids = np.stack([VOCAB.encode(s).astype(np.intp) for s in samples], axis=1)  # (T, N)
    scores = logits(params, ids, initial_state(params, 4))[0]  # (T, N, V)
    probs = np.exp(scores / 0.5 - (scores / 0.5).max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    chosen = np.take_along_axis(probs[:-1], ids[1:, :, None], axis=2)
    assert chosen.min() > 1e-4  # never a character the model all but rules out
    assert len(set(samples)) > 1


def test_num_samples_below_one_is_refused(params):
    with pytest.raises(CharlstmError, match="--num-samples must be 1 or more, got 0"):
        text(params, num_samples=0)


def test_draw_follows_the_distribution():
    probs = np.array([[0.1, 0.0, 0.6, 0.3]] * 20000)
    counts = np.bincount(draw(probs, np.random.default_rng(0)), minlength=4) / 20000
    np.testing.assert_allclose(counts, probs[0], atol=0.015)
    assert counts[1] == 0


def test_temperature_and_top_k_shape_the_distribution():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_allclose(next_char_probs(logits, 1.0, None), [[0.1, 0.2, 0.3, 0.4]])
    sharp = next_char_probs(logits, 0.5, None)
    assert sharp[0, 3] > 0.4 and sharp[0, 0] < 0.1
    np.testing.assert_allclose(next_char_probs(logits, 1.0, 2), [[0, 0, 3 / 7, 4 / 7]])


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(prime="abz?"), r"not in the model's vocabulary: '\?' 'z'"),
    (dict(temperature=0.0), "use --argmax"),
    (dict(temperature=-1.0), "use --argmax"),
    (dict(top_k=0), "--top-k must be between 1 and the vocabulary size 10"),
    (dict(top_k=11), "--top-k must be between 1"),
])
def test_bad_arguments_are_refused(params, kwargs, fragment):
    with pytest.raises(CharlstmError, match=fragment):
        text(params, **kwargs)


def test_negative_length_is_refused(params):
    with pytest.raises(CharlstmError, match="--length must be 0 or more"):
        text(params, length=-1)


def test_bad_arguments_fail_on_the_call_before_any_step(params):
    with pytest.raises(CharlstmError, match="'z'"):
        generate(params, VOCAB, 10, prime="z", rng=np.random.default_rng(0))  # never iterated


def test_top_p_1_is_plain_sampling_for_the_same_seed(params):
    assert text(params, seed=9, top_p=1.0) == text(params, seed=9)
    assert text(params, seed=9, top_p=1.0, temperature=0.7, top_k=4) == text(params, seed=9, temperature=0.7, top_k=4)


def test_top_p_keeps_the_smallest_set_reaching_p_and_always_the_most_likely():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    probs = next_char_probs(logits, 1.0, None, top_p=0.75)
    assert np.allclose(probs[0], [0.5 / 0.8, 0.3 / 0.8, 0, 0]) and np.allclose(probs[1], [1, 0, 0, 0])
    tiny = next_char_probs(logits, 1.0, None, top_p=1e-9)
    assert np.allclose(tiny, [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_top_p_samples_only_from_the_nucleus(params):
    """With a small p every drawn character is the model's most likely one: top-p 1e-6 is greedy."""
    assert text(params, seed=3, top_p=1e-6) == text(params, argmax=True)


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5])
def test_top_p_outside_0_1_is_refused(params, top_p):
    with pytest.raises(CharlstmError, match=r"--top-p must be in \(0, 1\]"):
        generate(params, VOCAB, 5, top_p=top_p, rng=np.random.default_rng(0))


def test_a_long_prime_is_read_in_windows_with_the_state_carried(params, monkeypatch):
    """A prime longer than PRIME_WINDOW gives the same text as one read in one window."""
    from charlstm import sample
    prime = ("abc defg\n" * 300)[:2500]
    whole = text(params, length=30, prime=prime, argmax=True)
    monkeypatch.setattr(sample, "PRIME_WINDOW", 64)
    calls = []
    real = sample.run_layers
    monkeypatch.setattr(sample, "run_layers", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    assert text(params, length=30, prime=prime, argmax=True) == whole
    assert len(calls) == -(-(len(prime) - 1) // 64) and max(shape[0] for shape in calls) == 64


def test_scored_generation_reports_the_model_log_probability_of_each_character(params):
    from charlstm.sample import generate_scored
    steps = list(generate_scored(params, VOCAB, 20, prime="ab", temperature=1.3, rng=np.random.default_rng(4)))
    out = "".join(chars for chars, _ in steps)
    ids = VOCAB.encode("ab" + out).astype(np.intp)[:, None]
    scores = logits(params, ids, initial_state(params, 1))[0][1:-1, 0].astype(np.float64)
    expected = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    targets = ids[2:, 0]
    assert np.allclose([lp[0] for _, lp in steps], expected[np.arange(20), targets], atol=1e-4)
