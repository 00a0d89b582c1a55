import itertools

import numpy as np
import pytest

from charlstm.beam import beam_search
from charlstm.errors import CharlstmError
from charlstm.model import initial_state, logits
from charlstm.sample import generate
from helpers import SAMPLING_VOCAB, sampling_model

VOCAB = SAMPLING_VOCAB


@pytest.fixture
def params():
    return sampling_model(0.5)


def log_prob(params, prime, text):
    """log p(text | prime) from the whole-sequence scorer, an oracle independent of beam.py."""
    ids = VOCAB.encode(prime + text).astype(np.intp)[:, None]
    scores = logits(params, ids, initial_state(params, 1))[0][:, 0].astype(np.float64)
    log_probs = scores - np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - scores.max(1, keepdims=True)
    targets = ids[len(prime):, 0]
    return float(log_probs[np.arange(len(prime) - 1, len(prime) - 1 + len(text)), targets].sum())


def test_beam_1_is_argmax_and_reports_the_true_log_probability(params):
    greedy = "".join(generate(params, VOCAB, 30, prime="ab", argmax=True))
    result = beam_search(params, VOCAB, 30, 1, prime="ab")
    assert result.text == greedy
    assert result.log_prob == pytest.approx(log_prob(params, "ab", greedy), abs=1e-3)


@pytest.mark.parametrize("width", [2, 4, 16])
def test_wider_beams_find_text_at_least_as_likely_as_argmax(params, width):
    greedy = beam_search(params, VOCAB, 40, 1, prime="a")
    result = beam_search(params, VOCAB, 40, width, prime="a")
    assert len(result.text) == 40
    assert result.log_prob >= greedy.log_prob - 1e-9
    assert result.log_prob == pytest.approx(log_prob(params, "a", result.text), abs=1e-3)


def test_a_beam_as_wide_as_the_vocabulary_finds_the_best_two_characters(params):
    """Over two steps, V beams keep every first character: the search is exhaustive."""
    best = max(("".join(pair) for pair in itertools.product(VOCAB.chars, repeat=2)),
               key=lambda text: log_prob(params, "ba", text))
    assert beam_search(params, VOCAB, 2, VOCAB.size, prime="ba").text == best


def test_bad_beam_values_are_refused(params):
    with pytest.raises(CharlstmError, match="--beam must be 1 or more, got 0"):
        beam_search(params, VOCAB, 10, 0)
    with pytest.raises(CharlstmError, match="--length"):
        beam_search(params, VOCAB, -1, 2)
    assert beam_search(params, VOCAB, 0, 3).text == ""
