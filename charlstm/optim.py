"""Global-norm gradient clipping, Adam with bias correction, learning-rate schedules,
and a moving average of the weights.

All of it works on the flat parameter and gradient buffers (see model.Params), so each
update is a handful of whole-buffer operations rather than a loop over tensors.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels


def clip_global_norm(grads: np.ndarray, max_norm: float) -> float:
    """Scale the flat gradient in place so its L2 norm is at most `max_norm`
    (0 disables clipping). Returns the norm before clipping.

    Same rule as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6)
    when that is below 1.
    """
    norm = math.sqrt(float(np.dot(grads, grads)))
    if max_norm > 0 and math.isfinite(norm):
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            grads *= grads.dtype.type(scale)
    return norm


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, in PyTorch's arithmetic order.

    weight_decay is decoupled (AdamW, Loshchilov & Hutter 2019) and applies only to the
    views named in `decay_views` (the weight matrices, not the biases).
    """

    def __init__(self, num_params: int, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, dtype=np.float32):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step_count = 0
        self.exp_avg = np.zeros(num_params, dtype=dtype)     # m: first moment
        self.exp_avg_sq = np.zeros(num_params, dtype=dtype)  # v: second moment
        self._scratch = np.empty(num_params, dtype=dtype)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float, decay_views=()) -> None:
        """Update the flat `params` in place from the flat `grads`."""
        self.step_count += 1
        if self.weight_decay > 0:
            for view in decay_views:
                view *= view.dtype.type(1.0 - lr * self.weight_decay)
        bias_correction1 = 1.0 - self.beta1 ** self.step_count
        bias_correction2 = 1.0 - self.beta2 ** self.step_count
        as_dtype = params.dtype.type
        update = kernels.current().adam_update or adam_update
        update(params, grads, self.exp_avg, self.exp_avg_sq, as_dtype(1.0 - self.beta1), as_dtype(self.beta2),
               as_dtype(1.0 - self.beta2), as_dtype(1.0 / math.sqrt(bias_correction2)), as_dtype(self.eps),
               as_dtype(lr / bias_correction1), self._scratch)


def adam_update(params, grads, m, v, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_correction2, eps,
                step_size, scratch=None) -> None:
    """Adam's update of flat buffers in place, one NumPy operation per line; a kernel
    set may fuse it (kernels.KernelSet.adam_update) in this order of operations."""
    tmp = np.empty_like(params) if scratch is None else scratch
    # m += (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g^2
    np.subtract(grads, m, out=tmp)
    tmp *= one_minus_beta1
    m += tmp
    np.multiply(grads, grads, out=tmp)
    tmp *= one_minus_beta2
    v *= beta2
    v += tmp
    # p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    np.sqrt(v, out=tmp)
    tmp *= inv_sqrt_correction2
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= step_size
    params -= tmp


class WeightAverage:
    """An exponential moving average of the flat weights, updated after every step
    (Polyak & Juditsky 1992 average the iterates; the moving average forgets the
    early ones). With `train.ema_decay` set, the average is the model: evaluated,
    kept as `best`, sampled and exported, while Adam goes on updating the weights.

    Over the first 1 / (1 - decay) steps it is the plain mean of the weights seen so
    far, so a short run does not keep the initial weights in its average.
    """

    def __init__(self, decay: float, weights: np.ndarray, steps: int = 0):
        self.decay = decay
        self.weights = weights.copy()  # (P,) flat, in the parameters' order
        self.steps = steps             # updates so far (checkpointed: it sets the next rate)
        self._scratch = np.empty_like(weights)

    def update(self, weights: np.ndarray) -> None:
        """average += rate * (weights - average), rate = max(1 - decay, 1 / steps)."""
        self.steps += 1
        rate = max(1.0 - self.decay, 1.0 / self.steps)
        np.subtract(weights, self.weights, out=self._scratch)
        self._scratch *= self._scratch.dtype.type(rate)
        self.weights += self._scratch


def learning_rate(step: int, base_lr: float, schedule: str, warmup_steps: int,
                  max_steps: int, final_fraction: float) -> float:
    """Learning rate for 0-based `step`: linear warmup over `warmup_steps`, then
    constant, cosine (Loshchilov & Hutter 2017) or exponential decay from base_lr
    down to base_lr * final_fraction at the last step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule == "exponential":
        # Exponential to exactly zero is impossible; a zero fraction means 1e-3.
        return base_lr * max(final_fraction, 1e-3) ** progress
    raise ValueError(f"unknown schedule {schedule!r}")
