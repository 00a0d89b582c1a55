"""The command line: one line per failure, nothing overwritten, and the real commands end to end."""

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from charlstm import checkpoint
from charlstm.cli import main

TINY = ["--set", "model.hidden_size=16", "--set", "train.batch_size=4", "--set", "train.seq_len=12",
        "--set", "train.max_steps=20", "--set", "train.eval_every=10", "--set", "train.sample_every=10",
        "--set", "train.sample_length=10", "--quiet"]


@pytest.fixture
def trained(tiny_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_corpus), "--out", str(run_dir), *TINY]) == 0
    capsys.readouterr()
    return run_dir


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_train_then_sample_then_eval(trained, tiny_corpus, capsys):
    ckpt = str(trained / "best.safetensors")
    assert main(["sample", "--ckpt", ckpt, "--length", "50", "--seed", "3", "--prime", "the "]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 50 + 1
    assert main(["sample", "--ckpt", ckpt, "--length", "50", "--seed", "3", "--prime", "the "]) == 0
    assert capsys.readouterr().out == first
    assert main(["eval", "--ckpt", ckpt, str(tiny_corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chars"] == len(tiny_corpus.read_text())
    assert result["bits_per_char"] == pytest.approx(result["loss_nats"] / np.log(2))
    assert result["perplexity"] == pytest.approx(np.exp(result["loss_nats"]))
    assert main(["eval", "--ckpt", ckpt, str(tiny_corpus)]) == 0
    assert "nats/char" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["train", "missing.txt"], "missing.txt does not exist"),
    (["train", "--set", "train.learning_rate=1"], "did you mean 'train.lr'"),
    (["train", "--set", "model.dropout=1.5"], "'model.dropout' must be in [0.0, 1.0)"),
    (["train", "--set", "nonsense"], "--set expects section.key=value"),
    (["train", "--config", "nope.yaml"], "nope.yaml does not exist"),
    (["sample", "--ckpt", "nope.safetensors"], "does not exist"),
    (["train", "--bogus-flag"], "No such option"),
    (["sample"], "Missing option '--ckpt'"),
])
def test_failures_print_one_line(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) != 0
    assert fragment in one_error_line(capsys)


@pytest.mark.parametrize("args, fragment", [
    (["--length", "-5"], "--length must be 0 or more"),
    (["--temperature", "0"], "use --argmax"),
    (["--top-k", "0"], "--top-k must be between 1"),
    (["--prime", "xyz"], "not in the model's vocabulary"),
    (["--num-samples", "0"], "--num-samples must be 1 or more, got 0"),
])
def test_bad_sampling_arguments_print_one_line_and_no_text(trained, args, fragment, capsys):
    assert main(["sample", "--ckpt", str(trained / "best.safetensors"), *args]) == 1
    assert fragment in one_error_line(capsys)


def split_samples(out: str) -> tuple[list[str], list[str]]:
    """(sample numbers, texts) from the output of `sample --num-samples N`."""
    parts = re.split(r"^---- sample (\d+) of \d+ ----\n", out, flags=re.MULTILINE)
    assert parts[0] == ""
    return parts[1::2], parts[2::2]


def test_several_samples_are_printed_one_after_another_under_headers(trained, capsys):
    ckpt = str(trained / "best.safetensors")
    args = ["sample", "--ckpt", ckpt, "--length", "30", "--seed", "4", "--prime", "the "]
    assert main([*args, "--num-samples", "3"]) == 0
    numbers, texts = split_samples(capsys.readouterr().out)
    assert numbers == ["1", "2", "3"]
    assert all(text.startswith("the ") and len(text) == len("the ") + 30 + 1 for text in texts)
    assert len(set(texts)) > 1
    assert main([*args, "--num-samples", "3", "--argmax"]) == 0
    _, greedy = split_samples(capsys.readouterr().out)
    assert main([*args, "--argmax"]) == 0  # one sample streams as before, no header
    assert greedy == [capsys.readouterr().out] * 3


def test_corrupt_checkpoint_is_one_line(trained, capsys):
    path = trained / "last.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["sample", "--ckpt", str(path)]) == 1
    assert "truncated or corrupt" in one_error_line(capsys)


def test_existing_run_directory_is_refused(trained, tiny_corpus, capsys):
    before = (trained / "best.safetensors").read_bytes()
    assert main(["train", str(tiny_corpus), "--out", str(trained), *TINY]) == 1
    assert "--force" in one_error_line(capsys)
    assert (trained / "best.safetensors").read_bytes() == before


def test_installed_console_script_runs(tmp_path):
    """The `charlstm` entry point itself, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "charlstm.cli", "train", str(tmp_path / "none.txt")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'none.txt'} does not exist"


def test_ctrl_c_during_training_exits_130_with_one_line_and_keeps_the_checkpoint(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "charlstm.cli", "train", str(tiny_corpus), "--out", str(run_dir),
            *TINY, "--set", "train.max_steps=1000000", "--set", "train.checkpoint_every=5",
            "--set", "train.eval_every=1000000", "--set", "train.sample_length=0"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run_dir / "last.safetensors"
    deadline = time.monotonic() + 60
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at step "), err
    assert "last.safetensors) is untouched" in lines[0]
    assert checkpoint.load(last).progress["step"] % 5 == 0
