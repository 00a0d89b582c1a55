"""Never lose a run: resuming is bitwise exact, stop signals save first, and kills,
failed writes and bad resumes leave the last good checkpoint whole."""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charlstm import checkpoint, files, train as train_module
from charlstm.cli import main
from charlstm.data import load_corpus
from charlstm.errors import CharlstmError
from charlstm.train import TrainingInterrupted, resume, train
from helpers import charlstm_command as charlstm, metrics, tiny_config

# 31 windows per epoch on the tiny corpus, both kinds of dropout on, a cosine schedule with warmup,
# samples drawn during training, streams reset to the learned initial state often:
# everything a resume has to restore.
EXACT = {"train.batch_size": 8, "train.seq_len": 32, "model.dropout": 0.3, "train.max_steps": 60,
         "model.recurrent_weight_dropout": 0.2, "train.state_reset": 0.2,
         "train.eval_every": 20, "train.checkpoint_every": 1000, "train.sample_every": 9,
         "train.sample_length": 5, "train.warmup_steps": 5, "train.log_every": 4}
QUIET = {"show_progress": False, "echo": lambda s: None}


def cli_args(**overrides) -> list[str]:
    sets = {**EXACT, "model.hidden_size": 16, "train.lr": 0.02, **overrides}
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")] + ["--quiet"]


def everything_resumable(path: Path) -> dict:
    """Every array and generator state a checkpoint holds, for exact comparison."""
    ckpt = checkpoint.load(path)
    return {"params": ckpt.params.flat, "exp_avg": ckpt.optimizer_moments[0],
            "exp_avg_sq": ckpt.optimizer_moments[1], "h": ckpt.carried_state[0],
            "c": ckpt.carried_state[1], "rngs": ckpt.rng_states, "step": ckpt.progress["step"],
            "adam_step": ckpt.optimizer_step, "best": ckpt.progress["best_val_loss"],
            "training": ckpt.training_params, "averaged_steps": ckpt.progress.get("averaged_steps")}


def assert_same_run(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture
def one_go(tiny_corpus, tmp_path) -> dict:
    """The uninterrupted run that every stopped-and-resumed run must reproduce."""
    train(tiny_config(**EXACT), tiny_corpus, tmp_path / "one-go", **QUIET)
    return everything_resumable(tmp_path / "one-go" / "last.safetensors")


def stop_at_steps(monkeypatch, steps: set[int]) -> None:
    """Send this process SIGINT while it computes each of `steps` (1-based)."""
    real_step = train_module.train_step

    def train_step(ts, *args):
        if ts.step + 1 in steps:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(ts, *args)

    monkeypatch.setattr(train_module, "train_step", train_step)


def records_but_timing(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the fields that time the run, which no two runs share."""
    return [{key: value for key, value in record.items() if key not in ("chars_per_s", "elapsed_s")}
            for record in metrics(run_dir)]


def test_stopped_and_resumed_three_times_equals_one_go_weights_and_metrics(one_go, tiny_corpus, tmp_path,
                                                                           monkeypatch):
    # Step 7 is mid-epoch and mid-warmup, 31 ends the first epoch, 41 is after an evaluation;
    # all three fall between two records (log_every 4), whose losses a resume must carry.
    assert load_corpus(tiny_corpus, tiny_config(**EXACT)).windows_per_epoch == 31
    stop_at_steps(monkeypatch, {7, 31, 41})
    run_dir = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGINT at step 7; saved .*last"
                                                  r".*resume with: charlstm train --resume "):
        train(tiny_config(**EXACT), tiny_corpus, run_dir, **QUIET)
    for stopped_at in (31, 41):
        with pytest.raises(TrainingInterrupted, match=f"at step {stopped_at};"):
            resume(run_dir, **QUIET)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    result = resume(run_dir, **QUIET)
    assert result.steps == 60
    assert_same_run(one_go, everything_resumable(run_dir / "last.safetensors"))
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["status"] == "finished"
    assert [r["from_step"] for r in run_info["resumes"]] == [7, 31, 41]
    assert records_but_timing(run_dir) == records_but_timing(tmp_path / "one-go")


def test_a_run_keeping_a_weight_average_resumes_exactly(tiny_corpus, tmp_path, monkeypatch):
    averaged = tiny_config(**EXACT, **{"train.ema_decay": 0.95})  # a mean for 20 steps, then moving
    train(averaged, tiny_corpus, tmp_path / "one-go", **QUIET)
    stop_at_steps(monkeypatch, {7, 41})
    run_dir = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match="at step 7;"):
        train(averaged, tiny_corpus, run_dir, **QUIET)
    with pytest.raises(TrainingInterrupted, match="at step 41;"):
        resume(run_dir, **QUIET)
    resume(run_dir, **QUIET)
    for name in ("last", "best"):
        one_go = everything_resumable(tmp_path / "one-go" / f"{name}.safetensors")
        assert one_go["training"] is not None and not np.array_equal(one_go["training"], one_go["params"])
        assert_same_run(one_go, everything_resumable(run_dir / f"{name}.safetensors"))
    assert records_but_timing(run_dir) == records_but_timing(tmp_path / "one-go")


def strict_json(text: str):
    """json.loads refusing NaN and Infinity, which Python writes but JSON has not."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_run_json_is_strict_json_at_every_moment(tiny_corpus, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    texts = []
    real_step = train_module.train_step

    def train_step(ts, *args):  # read run.json while training; stop at steps 3 and 20
        texts.append((run_dir / "run.json").read_text())
        if ts.step + 1 in (3, 20):
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(ts, *args)

    monkeypatch.setattr(train_module, "train_step", train_step)
    config = tiny_config(**{"train.max_steps": 20, "train.eval_every": 10})
    with pytest.raises(TrainingInterrupted, match="at step 3;"):  # before any evaluation
        train(config, tiny_corpus, run_dir, **QUIET)
    texts.append((run_dir / "run.json").read_text())
    resume(run_dir, **QUIET)  # a stop at the last step: the run is complete, so it finishes
    texts.append((run_dir / "run.json").read_text())
    infos = [strict_json(text) for text in texts]
    assert infos[0]["status"] == "running" and infos[0]["best_val_loss"] is None
    assert infos[-1]["status"] == "finished" and infos[-1]["steps"] == 20
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        strict_json(line)


def test_resume_may_raise_max_steps_and_records_it(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(**EXACT), tiny_corpus, run_dir, **QUIET)
    with pytest.raises(CharlstmError, match=r"already trained 60 steps.*--set train.max_steps=120"):
        resume(run_dir, **QUIET)
    result = resume(run_dir, ["train.max_steps=70"], **QUIET)
    assert result.steps == 70 and checkpoint.load(run_dir / "last.safetensors").progress["step"] == 70
    assert "max_steps: 70" in (run_dir / "config.yaml").read_text()


def test_raising_max_steps_keeps_the_planned_schedule_then_trains_on_at_its_final_rate(
        tiny_corpus, tmp_path, monkeypatch):
    planned = {**EXACT, "train.warmup_steps": 0, "train.log_every": 1}
    train(tiny_config(**planned), tiny_corpus, tmp_path / "one-go", **QUIET)
    stop_at_steps(monkeypatch, {30})
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(**planned), tiny_corpus, tmp_path / "longer", **QUIET)
    monkeypatch.undo()
    resume(tmp_path / "longer", ["train.max_steps=75"], **QUIET)

    one_go, longer = metrics(tmp_path / "one-go"), metrics(tmp_path / "longer")
    fields = ("step", "train_loss", "lr", "grad_norm")
    assert [[r[k] for k in fields] for r in longer[:60]] == [[r[k] for k in fields] for r in one_go]
    final_lr = one_go[-1]["lr"]  # cosine down to lr * final_lr_fraction
    assert final_lr == pytest.approx(0.02 * 0.1)
    assert [r["lr"] for r in longer[60:]] == [final_lr] * 15


def test_a_run_killed_before_its_first_checkpoint_starts_over(one_go, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(**EXACT), tiny_corpus, run_dir, **QUIET)
    (run_dir / "last.safetensors").unlink()
    (run_dir / "best.safetensors").unlink()
    resume(run_dir, **QUIET)
    assert_same_run(one_go, everything_resumable(run_dir / "last.safetensors"))


@pytest.mark.parametrize("args, fragment", [
    (["--set", "model.hidden_size=32"], "cannot change model.hidden_size (it would change the model"),
    (["--set", "train.lr=0.1", "--set", "data.val_fraction=0.2"], "cannot change train.lr, data.val_fraction"),
    (["--config", "configs/small.yaml"], "drop --config"),
    (["--force"], "drop --force"),
    (["--set", "train.max_steps=3"], "already trained 20 steps"),
])
def test_a_resume_that_would_change_the_run_is_refused(args, fragment, tiny_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_corpus), "--out", str(run_dir),
                 *cli_args(**{"train.max_steps": 20, "train.checkpoint_every": 10})]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_refuses_other_text_and_non_runs(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(**{**EXACT, "train.max_steps": 10}), tiny_corpus, run_dir, **QUIET)
    other = tmp_path / "other.txt"
    other.write_text(tiny_corpus.read_text().replace("cat", "bat"))
    with pytest.raises(CharlstmError, match="is not the text .* was trained on"):
        resume(run_dir, ["train.max_steps=20"], other, **QUIET)
    with pytest.raises(CharlstmError, match="not a charlstm run directory"):
        resume(tmp_path, **QUIET)
    with pytest.raises(CharlstmError, match="no such run directory"):
        resume(tmp_path / "nowhere", **QUIET)
    run_json = run_dir / "run.json"
    good_json = run_json.read_text()
    run_json.write_text(json.dumps({**json.loads(good_json), "corpus": 5}))
    with pytest.raises(CharlstmError, match="run.json is damaged"):
        resume(run_dir, ["train.max_steps=20"], **QUIET)
    run_json.write_text(good_json)
    moved = tmp_path / "moved.txt"
    tiny_corpus.rename(moved)
    with pytest.raises(CharlstmError, match="the run's corpus .* does not exist; pass the same text"):
        resume(run_dir, ["train.max_steps=20"], **QUIET)
    assert resume(run_dir, ["train.max_steps=20"], moved, **QUIET).steps == 20


def test_a_resume_on_a_moved_corpus_records_it_so_the_printed_command_works(tiny_corpus, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny_config(**{**EXACT, "train.max_steps": 10}), tiny_corpus, run_dir, **QUIET)
    moved = tmp_path / "moved" / "tiny.txt"
    moved.parent.mkdir()
    tiny_corpus.rename(moved)
    stop_at_steps(monkeypatch, {15})
    with pytest.raises(TrainingInterrupted, match=f"resume with: charlstm train --resume {run_dir}$"):
        resume(run_dir, ["train.max_steps=20"], moved, **QUIET)
    assert json.loads((run_dir / "run.json").read_text())["corpus"] == str(moved.resolve())
    assert resume(run_dir, **QUIET).steps == 20  # the printed command, without the corpus


# ---- real processes: signals, kills and a file-size limit ----

def wait_for(condition, process, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_finishes_the_step_saves_and_the_printed_command_resumes_exactly(
        signum, exit_code, one_go, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(charlstm("train", str(tiny_corpus), "--out", str(run_dir),
                                        *cli_args(**{"train.log_every": 1})),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_steps(run_dir) >= 3, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: stopped by {signum.name} at step "), err
    stopped_at = int(lines[0].split("at step ")[1].split(";")[0])
    assert checkpoint.load(run_dir / "last.safetensors").progress["step"] == stopped_at
    command = lines[0].split("resume with: ")[1].split()
    assert command[:3] == ["charlstm", "train", "--resume"]
    finished = subprocess.run(charlstm(*command[1:], "--quiet"), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert_same_run(one_go, everything_resumable(run_dir / "last.safetensors"))


# `charlstm train ARGS` whose fourth step blocks on purpose: it creates the file BLOCKED
# and then waits, so that signals sent after the file appears land inside that step.
# Once the first stop signal has been handled it creates BLOCKED.stopping (two signals
# sent at once would reach Python's handler as one).
BLOCKING_STEP = '''
import sys, time
from charlstm import cli, signals, train
real_step, real_handle = train.train_step, signals.StopSignals._handle
def train_step(ts, *args):
    if ts.step == 3:
        open(sys.argv[1], "w").close()
        time.sleep(120)  # a signal handler runs; only one that raises ends the wait
    return real_step(ts, *args)
def handle(self, signum, frame):
    real_handle(self, signum, frame)
    open(sys.argv[1] + ".stopping", "w").close()
train.train_step, signals.StopSignals._handle = train_step, handle
sys.exit(cli.main(sys.argv[2:]))
'''


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_checkpoint(tiny_corpus, tmp_path):
    run_dir, blocked = tmp_path / "run", tmp_path / "blocked"
    assert main(["train", str(tiny_corpus), "--out", str(run_dir), *cli_args(**{"train.max_steps": 2})]) == 0
    before = (run_dir / "last.safetensors").read_bytes()
    process = subprocess.Popen([sys.executable, "-c", BLOCKING_STEP, str(blocked), "train", "--resume",
                                str(run_dir), "--set", "train.max_steps=1000", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(blocked.exists, process)
    process.send_signal(signal.SIGINT)  # the first asks for a stop after the step ...
    wait_for(Path(f"{blocked}.stopping").exists, process)
    process.send_signal(signal.SIGINT)  # ... the second, inside the same step, stops at once
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped at once by a second SIGINT" in lines[0], err
    assert "is untouched" in lines[0] and "resume with: charlstm train --resume" in lines[0]
    assert (run_dir / "last.safetensors").read_bytes() == before


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_run(tiny_corpus, tmp_path):
    """Kill -9 at least 10 times, at least 3 of them inside a checkpoint write (seen as
    a left-over temporary file); after every kill `last` loads, and resuming after each
    one ends exactly where the uninterrupted run ends."""
    long_run = {"train.checkpoint_every": 1, "train.max_steps": 400}
    train(tiny_config(**{**EXACT, **long_run}), tiny_corpus, tmp_path / "one-go", **QUIET)
    run_dir, last = tmp_path / "run", tmp_path / "run" / "last.safetensors"
    start = charlstm("train", str(tiny_corpus), "--out", str(run_dir), *cli_args(**long_run))
    again = charlstm("train", "--resume", str(run_dir), "--quiet")
    rng = random.Random(0)
    kills = kills_mid_write = 0
    while kills < 10 or kills_mid_write < 3:
        assert kills < 40, f"only {kills_mid_write} of {kills} kills landed inside a write"
        process = subprocess.Popen(start if kills == 0 else again,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait until training is under way (a new checkpoint), then kill: every other time
        # at a random instant, otherwise as soon as a checkpoint write is seen under way
        # (that one may still finish before the kill lands; the left-over file tells).
        seen = last.stat().st_mtime_ns if last.exists() else None
        wait_for(lambda seen=seen: last.exists() and last.stat().st_mtime_ns != seen, process)
        if kills % 2:
            wait_for(lambda: any(name.startswith(".last") for name in os.listdir(run_dir)), process)
        else:
            time.sleep(rng.uniform(0, 0.01))
        assert process.poll() is None, "the run finished before the kill; make it longer"
        process.kill()
        process.wait()
        kills += 1
        kills_mid_write += any(run_dir.glob(".last.safetensors.tmp-*"))
        checkpoint.load(last)  # must never raise
    finished = subprocess.run(again, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    print(f"{kills} kills, {kills_mid_write} of them inside a checkpoint write, {kills} resumes")
    assert not any(run_dir.glob(".*.tmp-*"))  # resuming cleared what the kills left
    assert_same_run(everything_resumable(tmp_path / "one-go" / "last.safetensors"),
                    everything_resumable(last))


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_says_so(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_corpus), "--out", str(run_dir),
                 *cli_args(**{"train.max_steps": 10, "train.checkpoint_every": 10})]) == 0
    before = (run_dir / "last.safetensors").read_bytes()
    limit = len(before) // 2  # metrics.jsonl and run.json stay far below this

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(charlstm("train", "--resume", str(run_dir), "--set", "train.max_steps=20",
                                     "--quiet"),
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not write {run_dir}"), result.stderr
    assert "File too large; the previous file is untouched" in lines[0]
    assert "once that is fixed, resume with: charlstm train --resume" in lines[0]
    assert (run_dir / "last.safetensors").read_bytes() == before
    assert not any(run_dir.glob(".*.tmp-*"))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_a_full_disk_during_a_write_keeps_the_previous_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny_config(**{"train.max_steps": 10}), tiny_corpus, run_dir, **QUIET)
    before = (run_dir / "last.safetensors").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(CharlstmError, match="No space left on device; the previous file is untouched"):
        resume(run_dir, ["train.max_steps=20"], **QUIET)
    assert (run_dir / "last.safetensors").read_bytes() == before
