"""charlstm.load: the public Python API, against the training code's forward and
the CLI's sampler."""

import numpy as np
import pytest

import charlstm
from charlstm import api
from charlstm.cli import main
from charlstm.errors import CharlstmError
from charlstm.model import forward, init_params, initial_state, logits

TEXT = "the red cat sat on the mat.\nthe old hen sat on the log.\n" * 3


def test_logits_and_final_state_equal_the_training_forward(small_model):
    model = charlstm.load(small_model)
    ids = model.vocab.encode(TEXT).astype(np.intp)
    scores, (h, c) = logits(model.params, ids[:, None], initial_state(model.params, 1))
    expected = scores[:, 0]
    ours = model.logits(TEXT)
    assert ours.shape == (len(TEXT), model.vocab.size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)
    _, (final_h, final_c) = api.run(model.params, ids)
    np.testing.assert_allclose(final_h, h[:, 0], atol=1e-6)
    np.testing.assert_allclose(final_c, c[:, 0], atol=1e-6)


def test_score_is_the_training_loss_on_one_stream(small_model):
    model = charlstm.load(small_model)
    ids = model.vocab.encode(TEXT).astype(np.intp)
    loss, _, _ = forward(model.params, ids[:-1, None], ids[1:, None], initial_state(model.params, 1))
    assert model.score(TEXT) == pytest.approx(loss, rel=1e-5)
    assert model.score(TEXT) < 1.0  # trained: well below a uniform guess's log(19) = 2.9


def test_running_in_two_pieces_with_the_state_carried_equals_one_run():
    rng = np.random.default_rng(0)
    params = init_params(7, 5, 3, 1.0, rng, np.float64)
    params.flat += rng.normal(0.0, 0.5, params.flat.shape)
    ids = rng.integers(0, 7, 40)
    whole, whole_state = api.run(params, ids)
    first, state = api.run(params, ids[:17])
    second, second_state = api.run(params, ids[17:], state)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-13, atol=1e-13)
    for a, b in zip(second_state, whole_state):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    h0, c0 = api.initial_state(params)
    assert h0.shape == c0.shape == (3, 5) and not h0.any() and not c0.any()


@pytest.mark.parametrize("options", [["--argmax"], ["--seed", "7", "--temperature", "0.7"]])
def test_sample_is_the_text_charlstm_sample_prints(small_model, capsys, options):
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(small_model), "--prime", "the old", "--length", "150", *options]) == 0
    printed = capsys.readouterr().out
    model = charlstm.load(small_model)
    kwargs = {"argmax": True} if "--argmax" in options else {"seed": 7, "temperature": 0.7}
    assert model.sample(prime="the old", length=150, **kwargs) + "\n" == printed


def test_bad_text_is_refused_with_the_cli_message(small_model):
    model = charlstm.load(small_model)
    with pytest.raises(CharlstmError, match="characters not in the model's vocabulary: 'Z'"):
        model.logits("the Zebra")
    with pytest.raises(CharlstmError, match="at least two characters"):
        model.score("t")
    assert repr(model) == "CharModel(2x32 LSTM, vocabulary 19)"
