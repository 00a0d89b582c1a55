"""Stop signals during a long evaluation are honoured within about a second, and
SIGHUP (a closed terminal) stops a run like SIGTERM: saved, one line, resumable."""

import json
import signal
import subprocess
import sys
import time

import pytest

from charlstm.rundir import read_metrics
from test_bad_input import TINY


@pytest.mark.parametrize("signum, code", [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_stop_during_a_long_evaluation(signum, code, tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text("the cat sat on the mat. " * 40_000)  # 960,000 characters, half for validation
    # One evaluation stream of 4-character windows over 480,000 characters: minutes of work.
    run = subprocess.Popen([sys.executable, "-m", "charlstm.cli", "train", str(corpus), "--out", "run", *TINY,
                            "--set", "data.val_fraction=0.5", "--set", "train.eval_streams=1",
                            "--set", "train.seq_len=4", "--set", "train.eval_every=2", "--set", "train.log_every=1",
                            "--set", "train.max_steps=100"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not read_metrics(tmp_path / "run") and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # step 2 is done by now, and its evaluation under way
        assert run.poll() is None
        run.send_signal(signum)
        sent = time.monotonic()
        _, err = run.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        run.kill()
    assert run.returncode == code, err
    assert took < 2.0, f"{took:.1f} s after {signal.Signals(signum).name}"
    assert err.count("\n") == 1 and f"error: stopped by {signal.Signals(signum).name} at step 2" in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "run" / "last.safetensors").is_file()
