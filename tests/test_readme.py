"""The README's Python snippets run as written, on files exported from a checkpoint of
the README's model (1x256, Tiny Shakespeare's 65 characters), and say what charlstm says."""

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest

import charlstm
from charlstm import checkpoint
from charlstm.cli import main
from charlstm.config import load_config
from charlstm.data import Vocab
from charlstm.model import init_params

README = Path(__file__).resolve().parent.parent / "README.md"
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Which snippet is which: a name only that snippet uses.
SNIPPETS = {"api": "charlstm.load(", "torch": "safetensors.torch", "keras": "import keras",
            "onnx": "import onnxruntime"}
NEEDS = {"api": [], "torch": ["torch"], "keras": ["h5py", "keras"], "onnx": ["onnx", "onnxruntime"]}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def snippet(name: str) -> str:
    (block,) = [block for block in python_blocks() if SNIPPETS[name] in block]
    return block


def test_every_python_snippet_is_one_of_those_run_here():
    blocks = python_blocks()
    assert len(blocks) == len(SNIPPETS)
    assert sorted(name for name in SNIPPETS for block in blocks if SNIPPETS[name] in block) == sorted(SNIPPETS)


@pytest.fixture(scope="module")
def readme_files(tmp_path_factory):
    """runs/my/best.safetensors and its shakespeare256.* exports, in one folder."""
    root = tmp_path_factory.mktemp("readme")
    config = load_config(None, ["model.hidden_size=256", "model.num_layers=1"])
    params = init_params(len(CHARS), 256, 1, 1.0, np.random.default_rng(0), learned_state=True)
    params.flat += np.random.default_rng(1).normal(0.0, 0.05, params.flat.shape).astype(np.float32)
    ckpt = root / "runs" / "my" / "best.safetensors"
    ckpt.parent.mkdir(parents=True)
    checkpoint.save(ckpt, checkpoint.Checkpoint(config, Vocab(CHARS), params, progress={"step": 0}))
    for fmt, name, needs in (("torch", "shakespeare256.safetensors", ()),
                             ("keras", "shakespeare256.weights.h5", ("h5py",)),
                             ("onnx", "shakespeare256.onnx", ("onnx",))):
        if all(importlib.util.find_spec(module) for module in needs):  # else that snippet's test skips
            assert main(["export", "--ckpt", str(ckpt), "--to", fmt, str(root / name)]) == 0
    return root, ckpt


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's torch backend under NumPy 2
@pytest.mark.parametrize("name", list(SNIPPETS))
def test_snippet_runs_and_agrees_with_charlstm(name, readme_files, monkeypatch, capsys):
    for module in NEEDS[name]:
        if module == "keras":
            os.environ.setdefault("KERAS_BACKEND", "torch")
        pytest.importorskip(module, reason=f"{module} is not installed, so the README's {name} snippet cannot run")
    root, ckpt = readme_files
    monkeypatch.chdir(root)
    namespace = {"__name__": "readme"}
    exec(compile(snippet(name), f"README.md ({name} snippet)", "exec"), namespace)
    printed = capsys.readouterr().out
    model = charlstm.load(ckpt)
    greedy = model.sample(prime="ROMEO:", length=100, argmax=True)
    if name == "api":
        assert namespace["text"] == model.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1)
        assert namespace["loss"] == model.score("ROMEO: What light is this?")
        assert namespace["logits"].shape == (6, len(CHARS))
    elif name == "torch":
        assert namespace["text"] == greedy and printed == greedy + "\n"
    elif name == "keras":
        np.testing.assert_allclose(namespace["logits"], model.logits(namespace["text"]), atol=1e-5, rtol=1e-5)
    else:
        assert namespace["text"] == greedy
        assert float(namespace["nats_per_char"]) == pytest.approx(model.score(greedy), rel=1e-5)
        assert printed.endswith(f"{model.score(greedy):.4f} nats/char\n")
