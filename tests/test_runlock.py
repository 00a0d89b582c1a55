"""One process per run directory: a second `train --out` or `--resume` on a run that
is training is refused in one line naming the holder, and the first run goes on intact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlstm.errors import CharlstmError
from charlstm.rundir import read_metrics
from charlstm.runlock import RunLock, default_run_dir
from test_bad_input import TINY

LONG = [*TINY, "--set", "train.max_steps=1000000", "--set", "train.log_every=1"]  # later --set wins


def charlstm(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "charlstm.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until_running(run_dir: Path, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            info = json.loads((run_dir / "run.json").read_text())
            if info.get("status") == "running" and read_metrics(run_dir):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} never started training")


def test_second_process_on_a_training_run_is_refused(tiny_corpus, tmp_path):
    first = charlstm("train", str(tiny_corpus), "--out", "run", *LONG, cwd=tmp_path)
    try:
        info = wait_until_running(tmp_path / "run")
        assert info["pid"] == first.pid
        config_before = (tmp_path / "run" / "config.yaml").read_bytes()
        for args in (["train", str(tiny_corpus), "--out", "run", "--force", *TINY, "--set", "model.hidden_size=8"],
                     ["train", "--resume", "run", "--quiet"]):
            second = charlstm(*args, cwd=tmp_path)
            _, err = second.communicate(timeout=60)
            assert second.returncode == 1
            assert err.count("\n") == 1 and err.startswith("error: "), err
            assert f"run is in use by another charlstm process (pid {first.pid})" in err
        assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before
        assert first.poll() is None  # the first run is still training
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    steps = [record["step"] for record in read_metrics(tmp_path / "run")]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, in order, once each
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"


def test_lock_is_held_and_released(tmp_path):
    with RunLock(tmp_path / "run", create=True):
        with pytest.raises(CharlstmError, match="in use by another charlstm process"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # released on exit (by the kernel too, if the process dies)
        pass
    assert os.listdir(tmp_path / "run") == []  # locking writes nothing


def test_default_run_names_differ_between_processes(tmp_path):
    names = {subprocess.run([sys.executable, "-c", "from charlstm.runlock import default_run_dir;"
                             "print(default_run_dir('c.txt'))"], capture_output=True, text=True).stdout
             for _ in range(2)}
    assert len(names) == 2 and str(default_run_dir(Path("c.txt"))).startswith("runs/c-")
