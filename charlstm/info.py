"""What a checkpoint holds, as readable text: config, vocabulary, parameters, gate
norms and training progress."""

from __future__ import annotations

import math

import numpy as np

from .checkpoint import Checkpoint
from .config import config_to_dict
from .model import Params

GATES = ("i", "f", "g", "o")


def gate_norms(params: Params) -> list[dict[str, dict[str, float]]]:
    """Per layer, per gate: Frobenius norms of that gate's W_x and W_h columns and of
    its bias slice. A forget gate whose bias norm dwarfs its weights, or a gate that
    has collapsed to zero, shows up here."""
    hidden = params.hidden_size
    layers = []
    for layer in range(params.num_layers):
        W_x, W_h, b = (params[f"lstm.{layer}.{n}"].astype(np.float64) for n in ("W_x", "W_h", "b"))
        norms = {}
        for index, gate in enumerate(GATES):
            block = slice(index * hidden, (index + 1) * hidden)
            norms[gate] = {"W_x": float(np.linalg.norm(W_x[:, block])),
                           "W_h": float(np.linalg.norm(W_h[:, block])),
                           "b": float(np.linalg.norm(b[block]))}
        layers.append(norms)
    return layers


def describe(ckpt: Checkpoint, source: str = "") -> str:
    lines = [f"checkpoint {source}" if source else "checkpoint"]

    lines.append("config:")
    for section, values in config_to_dict(ckpt.config).items():
        for key, value in values.items():
            lines.append(f"  {section}.{key}: {value}")

    # repr escapes newlines, tabs and anything unprintable; the quotes are repr's.
    lines.append(f"vocabulary ({ckpt.vocab.size} characters, id order):")
    lines.append(f"  {ckpt.vocab.chars!r}")

    params = ckpt.params
    width = max(len(name) for name in params.names())
    lines.append(f"parameters ({params.flat.size:,} in total, {params.flat.dtype}):")
    for name in params.names():
        shape = "x".join(str(n) for n in params.shapes[name])
        lines.append(f"  {name:<{width}}  {shape:>10}  {params[name].size:>12,}")

    lines.append("gate norms (Frobenius, per gate block):")
    lines.append(f"  {'layer':>5}  {'gate':>4}  {'|W_x|':>9}  {'|W_h|':>9}  {'|b|':>9}")
    for layer, norms in enumerate(gate_norms(params)):
        for gate, n in norms.items():
            lines.append(f"  {layer:>5}  {gate:>4}  {n['W_x']:>9.4f}  {n['W_h']:>9.4f}  {n['b']:>9.4f}")

    if params.learned_state:
        lines.append("initial state (learned, per layer; every sequence starts here):")
        lines.append(f"  {'layer':>5}  {'|h0|':>9}  {'|c0|':>9}")
        for layer in range(params.num_layers):
            h0, c0 = (float(np.linalg.norm(params[f"lstm.{layer}.{n}"].astype(np.float64))) for n in ("h0", "c0"))
            lines.append(f"  {layer:>5}  {h0:>9.4f}  {c0:>9.4f}")
    else:
        lines.append("initial state: zero")

    progress = ckpt.progress
    lines.append("training:")
    lines.append(f"  step: {progress.get('step', 0)}")
    if "epoch" in progress:
        lines.append(f"  epoch: {progress['epoch']}")
    best = progress.get("best_val_loss")
    if best is None:
        lines.append("  best validation loss: none yet")
    else:
        lines.append(f"  best validation loss: {best:.4f} nats/char ({best / math.log(2):.4f} bits/char)")
    return "\n".join(lines)
