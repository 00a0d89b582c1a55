"""What a checkpoint holds, as readable text or as one JSON object (`summary`): config,
vocabulary, parameters, gate norms and training progress."""

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


def initial_state_norms(params: Params) -> list[dict[str, float]] | None:
    """Per layer, the norms of the learned initial (h0, c0); None for a zero start."""
    if not params.learned_state:
        return None
    return [{part: float(np.linalg.norm(params[f"lstm.{layer}.{part}"].astype(np.float64)))
             for part in ("h0", "c0")} for layer in range(params.num_layers)]


def summary(ckpt: Checkpoint, source: str = "") -> dict:
    """What `info` shows, as plain data (`info --json` prints it): checkpoint, config
    (by section), vocabulary, parameters, gate_norms (per layer, per gate), initial_state
    (per layer norms of a learned one, or None) and training.
    Losses are in nats/char, with bits/char beside them."""
    params = ckpt.params
    progress = ckpt.progress
    best = progress.get("best_val_loss")
    training = {"step": progress.get("step", 0)}
    if "epoch" in progress:
        training["epoch"] = progress["epoch"]
    training["best_val_loss"] = best
    training["best_val_bpc"] = None if best is None else best / math.log(2)
    return {
        "checkpoint": source,
        "config": config_to_dict(ckpt.config),
        "vocabulary": {"size": ckpt.vocab.size, "chars": ckpt.vocab.chars},
        "parameters": {"total": int(params.flat.size), "dtype": str(params.flat.dtype),
                       "tensors": [{"name": name, "shape": list(params.shapes[name]),
                                    "count": int(params[name].size)} for name in params.names()]},
        "gate_norms": gate_norms(params),
        "initial_state": initial_state_norms(params),
        "training": training,
    }


def describe(ckpt: Checkpoint, source: str = "") -> str:
    facts = summary(ckpt, source)
    lines = [f"checkpoint {source}" if source else "checkpoint"]

    lines.append("config:")
    for section, values in facts["config"].items():
        for key, value in values.items():
            lines.append(f"  {section}.{key}: {value}")

    vocabulary = facts["vocabulary"]
    # repr escapes newlines, tabs and anything unprintable; the quotes are repr's.
    lines.append(f"vocabulary ({vocabulary['size']} characters, id order):")
    lines.append(f"  {vocabulary['chars']!r}")

    parameters = facts["parameters"]
    width = max(len(tensor["name"]) for tensor in parameters["tensors"])
    lines.append(f"parameters ({parameters['total']:,} in total, {parameters['dtype']}):")
    for tensor in parameters["tensors"]:
        shape = "x".join(str(n) for n in tensor["shape"])
        lines.append(f"  {tensor['name']:<{width}}  {shape:>10}  {tensor['count']:>12,}")

    lines.append("gate norms (Frobenius, per gate block):")
    lines.append(f"  {'layer':>5}  {'gate':>4}  {'|W_x|':>9}  {'|W_h|':>9}  {'|b|':>9}")
    for layer, norms in enumerate(facts["gate_norms"]):
        for gate, n in norms.items():
            lines.append(f"  {layer:>5}  {gate:>4}  {n['W_x']:>9.4f}  {n['W_h']:>9.4f}  {n['b']:>9.4f}")

    if facts["initial_state"] is None:
        lines.append("initial state: zero")
    else:
        lines.append("initial state (learned, per layer; every sequence starts here):")
        lines.append(f"  {'layer':>5}  {'|h0|':>9}  {'|c0|':>9}")
        for layer, norms in enumerate(facts["initial_state"]):
            lines.append(f"  {layer:>5}  {norms['h0']:>9.4f}  {norms['c0']:>9.4f}")

    training = facts["training"]
    lines.append("training:")
    lines.append(f"  step: {training['step']}")
    if "epoch" in training:
        lines.append(f"  epoch: {training['epoch']}")
    if training["best_val_loss"] is None:
        lines.append("  best validation loss: none yet")
    else:
        lines.append(f"  best validation loss: {training['best_val_loss']:.4f} nats/char "
                     f"({training['best_val_bpc']:.4f} bits/char)")
    return "\n".join(lines)
