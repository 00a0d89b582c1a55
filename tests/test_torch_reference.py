"""The model against PyTorch: nn.LSTM + nn.Linear + F.cross_entropy, same weights.

Weights cross over through charlstm.interop, so these tests check the mapping as well
as the forward and backward math. The largest float32 differences are printed
(`pytest -s`) and recorded as junit properties.
"""

import numpy as np
import pytest

from charlstm.errors import CharlstmError
from charlstm.interop import from_torch_state_dict, to_torch_state_dict
from charlstm.model import Params, backward, forward, init_params, initial_state
from helpers import fast_layer

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

VOCAB, HIDDEN, LAYERS, STEPS, BATCH = 11, 16, 2, 7, 3
FLOAT32_TOL = dict(atol=1e-5, rtol=1e-4)
# The gradients here are mostly 1e-4 .. 1e-1 (mean loss over T*B positions), so an
# absolute 1e-5 would hide a wrong small gradient; float32 rounding leaves about 1e-8.
FLOAT32_GRAD_TOL = dict(atol=1e-7, rtol=1e-4)
FLOAT64_TOL = dict(atol=1e-10, rtol=1e-10)


class TorchCharModel(nn.Module):
    def __init__(self, vocab_size, hidden_size, num_layers):
        super().__init__()
        self.lstm = nn.LSTM(vocab_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)


def torch_model_from(params: Params) -> TorchCharModel:
    model = TorchCharModel(params.vocab_size, params.hidden_size, params.num_layers)
    model = model.to(torch.float64 if params.flat.dtype == np.float64 else torch.float32)
    state = {name: torch.from_numpy(array) for name, array in to_torch_state_dict(params).items()}
    model.load_state_dict(state, strict=True)
    return model


def random_problem(dtype, seed=0):
    """Perturbed init (so every bias is nonzero), nonzero initial state, random ids."""
    rng = np.random.default_rng(seed)
    params = init_params(VOCAB, HIDDEN, LAYERS, 1.0, rng, np.float64)
    params.flat += rng.normal(0.0, 0.2, params.flat.shape)
    params = params.astype(dtype)
    inputs = rng.integers(0, VOCAB, (STEPS, BATCH))
    targets = rng.integers(0, VOCAB, (STEPS, BATCH))
    h0 = rng.normal(0.0, 0.5, (LAYERS, BATCH, HIDDEN)).astype(dtype)
    c0 = rng.normal(0.0, 0.5, (LAYERS, BATCH, HIDDEN)).astype(dtype)
    return params, inputs, targets, h0, c0


def max_abs_diff(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs.detach().numpy().astype(np.float64))))


def report(record_property, label, diffs):
    for key, value in diffs.items():
        record_property(f"{label}.{key}", value)
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


def run_both(dtype):
    """Forward and backward in charlstm and in PyTorch on the same problem."""
    params, inputs, targets, h0, c0 = random_problem(dtype)
    loss, (h_final, c_final), cache = forward(params, inputs, targets, (h0, c0))
    grads = params.zeros_like()
    d_h0, d_c0 = backward(params, cache, grads)
    ours = dict(outputs=cache.layers[-1].h[1:].transpose(0, 2, 1), h_final=h_final, c_final=c_final, loss=loss,
                d_h0=d_h0, d_c0=d_c0, grads=to_torch_state_dict(grads))
    # PyTorch's two biases each receive the gradient of their sum, our b.
    for layer in range(LAYERS):
        ours["grads"][f"lstm.bias_hh_l{layer}"] = ours["grads"][f"lstm.bias_ih_l{layer}"]

    model = torch_model_from(params)
    torch_dtype = next(model.parameters()).dtype
    h0_t = torch.tensor(h0, requires_grad=True)
    c0_t = torch.tensor(c0, requires_grad=True)
    onehot = F.one_hot(torch.from_numpy(inputs), VOCAB).to(torch_dtype)  # (T, B, V)
    outputs, (h_final_t, c_final_t) = model.lstm(onehot, (h0_t, c0_t))
    logits = model.head(outputs)
    loss_t = F.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(targets).reshape(-1))
    loss_t.backward()
    theirs = dict(outputs=outputs, h_final=h_final_t, c_final=c_final_t, loss=loss_t,
                  d_h0=h0_t.grad, d_c0=c0_t.grad,
                  grads={name: p.grad for name, p in model.named_parameters()})
    return ours, theirs


def test_round_trip_is_exact_and_loads_strictly():
    params = random_problem(np.float32)[0]
    state = to_torch_state_dict(params)
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in state.values())
    back = from_torch_state_dict(state)
    assert back.names() == params.names()
    assert np.array_equal(back.flat, params.flat)
    model = torch_model_from(params)  # load_state_dict(strict=True) inside
    assert set(model.state_dict()) == set(state)
    assert np.array_equal(model.lstm.weight_hh_l1.detach().numpy(), params["lstm.1.W_h"].T)


def test_torch_initialised_weights_come_back_with_summed_biases():
    torch.manual_seed(0)
    model = TorchCharModel(VOCAB, HIDDEN, LAYERS)
    state = model.state_dict()
    params = from_torch_state_dict(state)
    assert (params.vocab_size, params.hidden_size, params.num_layers) == (VOCAB, HIDDEN, LAYERS)
    expected_b = (state["lstm.bias_ih_l1"] + state["lstm.bias_hh_l1"]).numpy()
    assert np.array_equal(params["lstm.1.b"], expected_b)
    assert np.array_equal(params["head.W_y"], state["head.weight"].numpy().T)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("lstm.weight_hh_l1"), "lacks lstm.weight_hh_l1"),
    (lambda s: s.pop("head.bias"), "lacks head.bias"),
    (lambda s: s.pop("head.weight"), "lacks head.weight"),
    (lambda s: s.pop("lstm.weight_ih_l1"), "lacks lstm.weight_ih_l1"),
    (lambda s: s.update({"lstm.bias_hh_l0": np.zeros(5, np.float32)}), "lstm.bias_hh_l0 has shape (5,)"),
    (lambda s: s.update({"lstm.weight_ih_l0": np.zeros((4 * HIDDEN, VOCAB + 1), np.float32)}),
     "lstm.weight_ih_l0 has shape"),
    (lambda s: s.update({"lstm.weight_ih_l0_reverse": s["lstm.weight_ih_l0"]}), "lacks: lstm.weight_ih_l0_reverse"),
])
def test_incomplete_or_inconsistent_state_dict_is_refused(edit, message):
    state = to_torch_state_dict(random_problem(np.float32)[0])
    edit(state)
    with pytest.raises(CharlstmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_torch_state_dict(state)


def test_forward_matches_torch_float32(record_property):
    ours, theirs = run_both(np.float32)
    diffs = {key: max_abs_diff(ours[key], theirs[key])
             for key in ("outputs", "h_final", "c_final", "loss")}
    report(record_property, "float32 forward", diffs)
    for key in ("outputs", "h_final", "c_final"):
        np.testing.assert_allclose(ours[key], theirs[key].detach().numpy(), **FLOAT32_TOL, err_msg=key)
    assert ours["loss"] == pytest.approx(theirs["loss"].item(), rel=1e-6)


@pytest.mark.parametrize("dtype, tol", [(np.float32, FLOAT32_GRAD_TOL), (np.float64, FLOAT64_TOL)],
                         ids=["float32", "float64"])
def test_gradients_match_torch_autograd(dtype, tol, record_property):
    ours, theirs = run_both(dtype)
    assert set(ours["grads"]) == set(theirs["grads"])
    diffs = {name: max_abs_diff(ours["grads"][name], theirs["grads"][name]) for name in theirs["grads"]}
    diffs.update(d_h0=max_abs_diff(ours["d_h0"], theirs["d_h0"]),
                 d_c0=max_abs_diff(ours["d_c0"], theirs["d_c0"]))
    report(record_property, f"{np.dtype(dtype).name} gradients", diffs)
    for name, grad in theirs["grads"].items():
        np.testing.assert_allclose(ours["grads"][name], grad.numpy(), **tol, err_msg=name)
    for key in ("d_h0", "d_c0"):
        np.testing.assert_allclose(ours[key], theirs[key].numpy(), **tol, err_msg=key)
    if dtype == np.float64:
        np.testing.assert_allclose(ours["outputs"], theirs["outputs"].detach().numpy(), **tol)
        assert ours["loss"] == pytest.approx(theirs["loss"].item(), rel=1e-12)


def test_layer_on_dense_inputs_matches_single_layer_torch_lstm(record_property):
    rng = np.random.default_rng(1)
    input_size, hidden = 5, 6
    x = rng.normal(size=(STEPS, BATCH, input_size)).astype(np.float32)
    h0, c0 = (rng.normal(0.0, 0.5, (BATCH, hidden)).astype(np.float32) for _ in range(2))
    W_x = rng.normal(0.0, 0.5, (input_size, 4 * hidden)).astype(np.float32)
    W_h = rng.normal(0.0, 0.5, (hidden, 4 * hidden)).astype(np.float32)
    b = rng.normal(0.0, 0.5, 4 * hidden).astype(np.float32)
    d_outputs = rng.normal(size=(STEPS, BATCH, hidden)).astype(np.float32)
    zeros = np.zeros_like(h0)
    outputs, (h_last, c_last), d_x, d_h0, d_c0, (dW_x, dW_h, db) = fast_layer(
        x, h0, c0, W_x, W_h, b, d_outputs, zeros, zeros)

    layer = nn.LSTM(input_size, hidden)
    layer.load_state_dict({"weight_ih_l0": torch.from_numpy(W_x.T.copy()),
                           "weight_hh_l0": torch.from_numpy(W_h.T.copy()),
                           "bias_ih_l0": torch.from_numpy(b), "bias_hh_l0": torch.zeros(4 * hidden)})
    x_t, h0_t, c0_t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    outputs_t, (h_last_t, c_last_t) = layer(x_t, (h0_t[None], c0_t[None]))
    (outputs_t * torch.from_numpy(d_outputs)).sum().backward()

    pairs = {"outputs": (outputs, outputs_t), "h_last": (h_last, h_last_t[0]), "c_last": (c_last, c_last_t[0]),
             "d_x": (d_x, x_t.grad), "d_h0": (d_h0, h0_t.grad), "d_c0": (d_c0, c0_t.grad),
             "dW_x": (dW_x.T, layer.weight_ih_l0.grad), "dW_h": (dW_h.T, layer.weight_hh_l0.grad),
             "db": (db, layer.bias_ih_l0.grad)}
    report(record_property, "float32 dense layer", {k: max_abs_diff(a, t) for k, (a, t) in pairs.items()})
    for key, (ours, theirs) in pairs.items():
        np.testing.assert_allclose(ours, theirs.detach().numpy(), **FLOAT32_TOL, err_msg=key)


def test_a_learned_initial_state_matches_torch_parameters_expanded_over_the_batch(record_property):
    """The learned (h0, c0) as nn.Parameters of shape (L, H), expanded to (L, B, H) as the
    start of nn.LSTM: the same logits and the same gradient for h0 and c0."""
    params, inputs, targets, _, _ = random_problem(np.float64)
    learned = init_params(VOCAB, HIDDEN, LAYERS, 1.0, np.random.default_rng(9), np.float64, learned_state=True)
    for name in params.names():
        learned[name][...] = params[name]
    rng = np.random.default_rng(10)
    for layer in range(LAYERS):
        learned[f"lstm.{layer}.h0"][...] = rng.normal(0.0, 0.5, HIDDEN)
        learned[f"lstm.{layer}.c0"][...] = rng.normal(0.0, 0.5, HIDDEN)
    loss, _, cache = forward(learned, inputs, targets, initial_state(learned, BATCH))
    grads = learned.zeros_like()
    backward(learned, cache, grads, started=np.ones(BATCH, dtype=bool))

    model = torch_model_from(params)
    state = to_torch_state_dict(learned)
    h0 = torch.tensor(state["initial_state.h"], requires_grad=True)
    c0 = torch.tensor(state["initial_state.c"], requires_grad=True)
    onehot = F.one_hot(torch.from_numpy(inputs), VOCAB).double()
    start = (h0[:, None].expand(-1, BATCH, -1), c0[:, None].expand(-1, BATCH, -1))
    logits = model.head(model.lstm(onehot, start)[0])
    torch_loss = F.cross_entropy(logits.reshape(-1, VOCAB), torch.from_numpy(targets).reshape(-1))
    torch_loss.backward()
    ours_h0 = np.stack([grads[f"lstm.{k}.h0"] for k in range(LAYERS)])
    ours_c0 = np.stack([grads[f"lstm.{k}.c0"] for k in range(LAYERS)])
    diffs = {"loss": abs(loss - torch_loss.item()), "d_h0": max_abs_diff(ours_h0, h0.grad),
             "d_c0": max_abs_diff(ours_c0, c0.grad)}
    report(record_property, "float64 learned initial state", diffs)
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    np.testing.assert_allclose(ours_h0, h0.grad.numpy(), **FLOAT64_TOL)
    np.testing.assert_allclose(ours_c0, c0.grad.numpy(), **FLOAT64_TOL)
