"""The command line: one line per failure, nothing overwritten, and the real commands end to end."""

import json
import re
import subprocess

import numpy as np
import pytest

from charlstm.cli import main
from helpers import charlstm_command, tiny_args

TINY = tiny_args(**{"train.sample_length": 10})


@pytest.fixture
def trained(tiny_run):
    return tiny_run


def test_train_then_sample_then_eval(trained, tiny_corpus, capsys):
    ckpt = str(trained / "best.safetensors")
    assert main(["sample", "--ckpt", ckpt, "--length", "50", "--seed", "3", "--prime", "the "]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 50 + 1
    assert main(["sample", "--ckpt", ckpt, "--length", "50", "--seed", "3", "--prime", "the "]) == 0
    assert capsys.readouterr().out == first
    assert main(["eval", "--ckpt", ckpt, str(tiny_corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chars"] == len(tiny_corpus.read_text()) - 1  # every prediction
    assert result["bits_per_char"] == pytest.approx(result["loss_nats"] / np.log(2))
    assert result["perplexity"] == pytest.approx(np.exp(result["loss_nats"]))
    assert main(["eval", "--ckpt", ckpt, str(tiny_corpus)]) == 0
    assert "nats/char" in capsys.readouterr().out


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


def test_text_with_a_lone_surrogate_trains_samples_and_exports(tmp_path, capsys):
    """unicode_escape reads the six characters \\ud800 as a lone surrogate, which no
    output encoding can write: it is printed and exported as its escape."""
    corpus = tmp_path / "escaped.txt"
    corpus.write_text("the cat \\ud800 sat on the mat.\n" * 60, encoding="ascii")
    run_dir = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(run_dir), *TINY, "--set", "data.encoding=unicode_escape"]) == 0
    capsys.readouterr()
    ckpt = str(run_dir / "last.safetensors")
    assert main(["sample", "--ckpt", ckpt, "--length", "5", "--prime", "the \ud800"]) == 0
    assert capsys.readouterr().out.startswith("the \\ud800")
    assert main(["export", "--ckpt", ckpt, "--to", "torch", str(tmp_path / "w.safetensors")]) == 0
    assert "\ud800" in json.loads((tmp_path / "w.vocab.json").read_text(encoding="utf-8"))["chars"]


def test_installed_console_script_runs(tmp_path):
    """The `charlstm` entry point itself, as a user runs it."""
    result = subprocess.run(charlstm_command("train", tmp_path / "none.txt"),
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: corpus {tmp_path / 'none.txt'} does not exist"


def test_eval_gives_the_same_number_whatever_batch_the_model_was_trained_with(trained, tiny_corpus, tmp_path, capsys):
    import dataclasses

    from charlstm import checkpoint

    ckpt = checkpoint.load(trained / "best.safetensors")
    results = []
    for batch_size in (4, 1, 37):
        config = dataclasses.replace(ckpt.config, train=dataclasses.replace(ckpt.config.train, batch_size=batch_size))
        path = tmp_path / f"batch{batch_size}.safetensors"
        carried = tuple(np.zeros((a.shape[0], batch_size, a.shape[2]), a.dtype) for a in ckpt.carried_state)
        checkpoint.save(path, dataclasses.replace(ckpt, config=config, carried_state=carried))
        assert main(["eval", "--ckpt", str(path), str(tiny_corpus), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] == results[2]
    assert results[0]["streams"] == 64 and results[0]["warmup_chars"] > 0
    # fewer streams: other segment bounds, but every character is still scored once, with context
    assert main(["eval", "--ckpt", str(trained / "best.safetensors"), str(tiny_corpus), "--streams", "4"]) == 0
    line = capsys.readouterr().out
    assert f"over {results[0]['chars']:,} characters in 4 streams from the initial state" in line
    loss = float(line.split(": ")[1].split()[0])
    assert abs(loss - results[0]["loss_nats"]) < 0.05
