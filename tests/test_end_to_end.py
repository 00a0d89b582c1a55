"""The installed `charlstm` command on the bundled corpus, as a new user runs it (slow)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def charlstm(*args, cwd):
    exe = shutil.which("charlstm", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "charlstm.cli"]
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_small_config_on_bundled_corpus_then_sample_and_eval(tmp_path):
    run_dir = tmp_path / "run"
    result = charlstm("train", "--config", str(CONFIGS / "small.yaml"), "--out", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < 1.0  # nats/char (0.64 measured); ln(69) = 4.23 for a uniform guess
    assert "---- sample at step" in result.stderr + result.stdout

    sample = charlstm("sample", "--ckpt", str(run_dir / "best.safetensors"), "--length", "300",
                      "--temperature", "0.7", "--seed", "1", "--prime", "CAPTAIN:", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    words = sample.stdout.split()
    assert sample.stdout.startswith("CAPTAIN:") and len(words) > 20
    bundled = (Path(__file__).resolve().parents[1] / "data" / "corpus.txt").read_text()
    known = set(bundled.split())
    assert sum(w in known for w in words) / len(words) > 0.5  # mostly real words already

    evaluation = charlstm("eval", "--ckpt", str(run_dir / "best.safetensors"),
                          str(Path(__file__).resolve().parents[1] / "data" / "corpus.txt"), "--json", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["loss_nats"] < 1.0
