"""`charlstm info`: what a checkpoint holds, readable."""

import json
import math

import numpy as np
import pytest
from helpers import one_error_line

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.config import load_config
from charlstm.data import Vocab
from charlstm.info import describe, gate_norms
from charlstm.model import init_params


def test_gate_norms_split_each_matrix_into_its_four_gate_blocks():
    hidden, forget_bias = 6, 1.5
    params = init_params(5, hidden, 2, forget_bias, np.random.default_rng(0))
    norms = gate_norms(params)
    assert len(norms) == 2 and list(norms[0]) == ["i", "f", "g", "o"]
    for layer, per_gate in enumerate(norms):
        for matrix in ("W_x", "W_h"):
            whole = np.linalg.norm(params[f"lstm.{layer}.{matrix}"].astype(np.float64))
            assert math.hypot(*(per_gate[g][matrix] for g in "ifgo")) == pytest.approx(whole, rel=1e-12)
        # Init puts forget_bias in the f block only.
        assert per_gate["f"]["b"] == pytest.approx(forget_bias * math.sqrt(hidden))
        assert per_gate["i"]["b"] == per_gate["g"]["b"] == per_gate["o"]["b"] == 0.0
    # W_h (H, 4H) has orthonormal rows at init, so its gate blocks' norms add up (in
    # squares) to H.
    assert math.hypot(*(norms[1][g]["W_h"] for g in "ifgo")) == pytest.approx(math.sqrt(hidden), rel=1e-5)


def test_vocabulary_is_one_line_with_escapes():
    params = init_params(5, 4, 1, 1.0, np.random.default_rng(0))
    ckpt = checkpoint.Checkpoint(load_config(None, ["model.hidden_size=4", "model.num_layers=1"]),
                                 Vocab("\n\t\x00a\u00e9"), params, progress={"step": 0})
    text = describe(ckpt)
    lines = text.splitlines()
    vocab_line = lines[lines.index("vocabulary (5 characters, id order):") + 1]
    assert vocab_line == "  '\\n\\t\\x00a\u00e9'"
    assert "best validation loss: none yet" in text


def test_info_command_on_a_trained_checkpoint(tiny_run, capsys):
    path = tiny_run / "best.safetensors"
    assert main(["info", "--ckpt", str(path)]) == 0
    out = capsys.readouterr().out
    ckpt = checkpoint.load(path)
    best = ckpt.progress["best_val_loss"]
    assert out.startswith(f"checkpoint {path}\nconfig:\n  model.hidden_size: 16\n")
    assert "  train.max_steps: 20\n" in out
    assert f"  {ckpt.vocab.chars!r}\n" in out
    assert f"parameters ({ckpt.params.flat.size:,} in total, float32):" in out
    w_x_line = next(line for line in out.splitlines() if line.startswith("  lstm.0.W_x "))
    assert f" {ckpt.vocab.size}x64 " in w_x_line  # one-hot input of V characters, 4H = 64 columns
    assert "initial state (learned, per layer" in out and "  lstm.1.c0 " in out
    h0_norm = float(np.linalg.norm(ckpt.params["lstm.1.h0"]))
    assert f"      1  {h0_norm:>9.4f}" in out
    assert f"  step: {ckpt.progress['step']}\n" in out
    assert f"best validation loss: {best:.4f} nats/char ({best / math.log(2):.4f} bits/char)" in out
    f_bias = gate_norms(ckpt.params)[1]["f"]["b"]
    assert "      1     f" in out and f"{f_bias:>9.4f}" in out


def test_info_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["info", "--ckpt", str(tmp_path / "none.safetensors")]) == 1
    assert "does not exist" in one_error_line(capsys)
    assert main(["info", "--ckpt", str(tmp_path)]) == 1
    assert "is a directory" in one_error_line(capsys)


def test_info_json_holds_what_info_prints(tiny_run, capsys):
    path = tiny_run / "best.safetensors"
    assert main(["info", "--ckpt", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    facts = json.loads(out)
    ckpt = checkpoint.load(path)
    assert set(facts) == {"checkpoint", "config", "vocabulary", "parameters", "gate_norms", "initial_state",
                          "training"}
    assert facts["checkpoint"] == str(path)
    assert facts["config"]["model"]["hidden_size"] == 16 and facts["config"]["train"]["max_steps"] == 20
    assert facts["vocabulary"] == {"size": ckpt.vocab.size, "chars": ckpt.vocab.chars}
    assert facts["parameters"]["total"] == ckpt.params.flat.size and facts["parameters"]["dtype"] == "float32"
    assert facts["parameters"]["tensors"][0] == {"name": "lstm.0.W_x", "shape": [ckpt.vocab.size, 64],
                                                 "count": ckpt.vocab.size * 64}
    assert facts["gate_norms"] == gate_norms(ckpt.params)
    best = ckpt.progress["best_val_loss"]
    assert facts["training"] == {"step": ckpt.progress["step"], "epoch": ckpt.progress["epoch"],
                                 "best_val_loss": best, "best_val_bpc": best / math.log(2)}
    assert main(["info", "--ckpt", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"best validation loss: {best:.4f} nats/char ({best / math.log(2):.4f} bits/char)" in text
