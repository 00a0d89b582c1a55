"""Clipping and Adam on the flat buffer against torch.nn.utils.clip_grad_norm_ and
torch.optim.Adam / AdamW on the same tensors, step by step."""

import numpy as np
import pytest

from charlstm.model import Params
from charlstm.optim import Adam, clip_global_norm

torch = pytest.importorskip("torch")

SHAPES = {"lstm.0.W_x": (5, 12), "lstm.0.W_h": (3, 12), "lstm.0.b": (12,),
          "head.W_y": (3, 5), "head.b_y": (5,)}
MATRICES = [name for name, shape in SHAPES.items() if len(shape) == 2]
MAX_NORM = 1.0
# Random gradients of std `scale` over 128 numbers have norm about 11 * scale, so
# these steps alternate between clipped and untouched.
GRAD_SCALES = [0.02, 1.0, 0.05, 3.0, 0.005, 0.3, 0.01, 10.0]
BETAS, EPS = (0.9, 0.999), 1e-8
# float32 rounding, relative to each tensor's largest entry: the second moments are
# orders of magnitude below the parameters, so one absolute tolerance would hide errors.
RELATIVE_TOL = 1e-5


def run_both(weight_decay: float, learning_rates):
    """Run our optimizer and torch's on identical parameters and gradients; return the
    per-step pre-clip norms and the largest parameter/moment difference seen."""
    rng = np.random.default_rng(0)
    ours = Params(SHAPES, np.float32)
    ours.flat[...] = rng.normal(size=ours.flat.shape)
    grads = ours.zeros_like()
    adam = Adam(len(ours.flat), BETAS, EPS, weight_decay, np.float32)

    tensors = {name: torch.tensor(ours[name], requires_grad=True) for name in SHAPES}
    groups = [{"params": [tensors[n] for n in MATRICES], "weight_decay": weight_decay},
              {"params": [t for n, t in tensors.items() if n not in MATRICES], "weight_decay": 0.0}]
    optimizer_class = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    optimizer = optimizer_class(groups, lr=learning_rates[0], betas=BETAS, eps=EPS)

    our_norms, torch_norms, largest = [], [], {"params": 0.0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
    for step, (scale, lr) in enumerate(zip(GRAD_SCALES, learning_rates)):
        grads.flat[...] = rng.normal(0.0, scale, grads.flat.shape)
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        our_norms.append(clip_global_norm(grads.flat, MAX_NORM))
        adam.step(ours.flat, grads.flat, lr, decay_views=[ours[n] for n in MATRICES])

        torch_norms.append(torch.nn.utils.clip_grad_norm_(list(tensors.values()), MAX_NORM).item())
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()

        # Named views of Adam's flat moments, to compare with torch's per-tensor state.
        exp_avg, exp_avg_sq = Params(SHAPES, flat=adam.exp_avg), Params(SHAPES, flat=adam.exp_avg_sq)
        for name, tensor in tensors.items():
            state = optimizer.state[tensor]
            for key, mine, theirs in (("params", ours[name], tensor.detach()),
                                      ("exp_avg", exp_avg[name], state["exp_avg"]),
                                      ("exp_avg_sq", exp_avg_sq[name], state["exp_avg_sq"])):
                theirs = theirs.numpy()
                atol = RELATIVE_TOL * float(np.max(np.abs(theirs)))
                np.testing.assert_allclose(mine, theirs, rtol=RELATIVE_TOL, atol=atol,
                                           err_msg=f"step {step} {key} {name}")
                largest[key] = max(largest[key], float(np.max(np.abs(mine - theirs))))
    return our_norms, torch_norms, largest


def check_norms(our_norms, torch_norms):
    np.testing.assert_allclose(our_norms, torch_norms, rtol=1e-6)
    clipped = [norm > MAX_NORM for norm in our_norms]
    assert any(clipped) and not all(clipped), our_norms


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["adam", "adamw"])
def test_clip_and_adam_match_torch(weight_decay, record_property):
    our_norms, torch_norms, largest = run_both(weight_decay, [2e-3] * len(GRAD_SCALES))
    check_norms(our_norms, torch_norms)
    for key, value in largest.items():
        record_property(key, value)
    print(f"\nweight_decay {weight_decay}: largest float32 differences "
          + ", ".join(f"{k} {v:.2e}" for k, v in largest.items()))


def test_changing_learning_rate_each_step_matches_torch():
    # Linear warmup over four steps, then a decay, as the training schedule does.
    learning_rates = [0.25e-2, 0.5e-2, 0.75e-2, 1e-2, 0.8e-2, 0.5e-2, 0.2e-2, 0.1e-2]
    our_norms, torch_norms, _ = run_both(0.05, learning_rates)
    check_norms(our_norms, torch_norms)


def test_weight_decay_leaves_biases_alone():
    """With zero gradients Adam's update is zero, so only the decay moves anything."""
    params = Params(SHAPES, np.float32)
    params.flat[...] = 1.0
    adam = Adam(len(params.flat), BETAS, EPS, weight_decay=0.5, dtype=np.float32)
    adam.step(params.flat, np.zeros_like(params.flat), 0.1, decay_views=[params[n] for n in MATRICES])
    for name in SHAPES:
        expected = 1.0 - 0.1 * 0.5 if name in MATRICES else 1.0
        np.testing.assert_allclose(params[name], expected, rtol=1e-7, err_msg=name)
