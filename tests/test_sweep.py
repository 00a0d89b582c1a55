"""`charlstm sweep`: planning and validation, a real two-run sweep, reruns and resumes."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import one_error_line

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.data import file_sha256
from charlstm.errors import CharlstmError
from charlstm.rundir import write_config
from charlstm.sweep import blas_env, plan, read_sweep, run_name, train_command

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_SHARED = {"model.hidden_size": 12, "model.num_layers": 1, "train.batch_size": 4, "train.seq_len": 10,
               "train.max_steps": 12, "train.eval_every": 6, "train.log_every": 3, "train.sample_length": 0,
               "train.warmup_steps": 2}


def write_sweep(tmp_path, corpus_path, **fields) -> Path:
    sweep = {"corpus": str(corpus_path), "out": "sweep-out", "set": TINY_SHARED,
             "grid": {"train.lr": [0.003, 0.03]}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def test_grid_then_list_with_stable_names_and_paths_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "corpus.txt").write_text("abc" * 100, encoding="utf-8")
    path = tmp_path / "sub" / "s.yaml"
    path.write_text("base: ../base.yaml\ncorpus: ../corpus.txt\n"
                    "grid: {model.hidden_size: [8, 16], train.lr: [0.1, 0.2]}\n"
                    "runs: [{model.num_layers: 3}, {}]\n", encoding="utf-8")
    (tmp_path / "base.yaml").write_text("train: {max_steps: 7}\n", encoding="utf-8")
    sweep = read_sweep(path)
    assert sweep.base == tmp_path / "base.yaml" and sweep.out == Path("runs/s")
    names = [run.name for run in plan(sweep)]
    assert names == ["hidden_size=8,lr=0.1", "hidden_size=8,lr=0.2", "hidden_size=16,lr=0.1",
                     "hidden_size=16,lr=0.2", "num_layers=3", "base"]
    assert [run.name for run in plan(read_sweep(path))] == names  # same file, same directories
    configs = [run.config for run in plan(sweep)]
    assert configs[3].model.hidden_size == 16 and configs[3].train.lr == 0.2
    assert all(c.train.max_steps == 7 for c in configs)  # from the base
    assert configs[4].model.num_layers == 3 and configs[4].model.hidden_size == 256


def test_run_names_are_safe_and_bounded():
    assert run_name({"model.dropout": 0.1, "train.dropout": 0.2}) == "model.dropout=0.1,train.dropout=0.2"
    assert run_name({"train.betas": [0.9, 0.99], "train.lr_schedule": "cosine"}) == \
        "betas=0.9+0.99,lr_schedule=cosine"
    assert run_name({"data.encoding": "utf 8/x"}) == "encoding=utf-8-x"
    long = run_name({f"train.k{i}": i for i in range(40)})
    assert len(long) == 100 and long != run_name({f"train.k{i}": i + 1 for i in range(40)})


def test_each_job_gets_its_share_of_the_cores():
    for jobs, cores, threads in ((1, 2, "2"), (2, 2, "1"), (4, 2, "1"), (2, 16, "8")):
        env = blas_env(jobs, cores)
        assert [env[v] for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")] == [threads] * 3
        assert env["PATH"]  # the rest of the environment is passed on


@pytest.mark.parametrize("fields, fragment", [
    ({"grid": {"train.learning_rate": [0.1]}}, "did you mean 'train.lr'"),
    ({"grid": {"model.dropout": [0.1, 1.5]}}, "run dropout=1.5: config key 'model.dropout' must be in"),
    ({"grid": {"train.lr": []}}, "must have a non-empty list"),
    ({"grid": None, "runs": [{"train.lr": 0.1}, {"train.lr": 0.1}]}, "two runs have the same overrides"),
    ({"grid": None}, "no runs"),
    ({"corpus": "missing.txt"}, "missing.txt does not exist"),
    ({"epochs": 3}, "unknown sweep key 'epochs'"),
    ({"base": "nope.yaml"}, "nope.yaml does not exist"),
])
def test_bad_sweep_files_are_refused_before_anything_runs(tmp_path, tiny_corpus, capsys, fields, fragment):
    path = write_sweep(tmp_path, tiny_corpus, **fields)
    assert main(["sweep", str(path)]) == 1
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "sweep-out").exists()


def test_sweep_file_must_exist_and_be_a_mapping(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 1
    assert "does not exist" in one_error_line(capsys)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    assert main(["sweep", str(tmp_path / "list.yaml")]) == 1
    assert "must be a mapping" in one_error_line(capsys)
    assert main(["sweep", str(tmp_path / "list.yaml"), "--jobs", "0"]) == 2


def test_a_real_sweep_writes_the_table_and_a_rerun_skips_finished_runs(tmp_path, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_corpus)
    assert main(["sweep", str(path), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "sweep-out"
    names = ["lr=0.003", "lr=0.03"]
    for name in names:
        info = json.loads((sweep_dir / name / "run.json").read_text())
        assert info["status"] == "finished" and info["steps"] == 12
        assert f"{name}: starting" in out and f"{name}: finished in" in out
    with open(sweep_dir / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == names
    bits = [float(r["best_val_bpc"]) for r in rows]
    assert bits == sorted(bits)  # best first
    for row in rows:
        info = json.loads((sweep_dir / row["run"] / "run.json").read_text())
        assert float(row["best_val_bpc"]) == pytest.approx(info["best_val_loss"] / math.log(2))
        assert int(row["params"]) == info["num_params"] and float(row["wall_time_s"]) == info["wall_time_s"]
        assert float(row["chars_per_s"]) > 0 and row["train.lr"] == row["run"].partition("=")[2]
    table = (sweep_dir / "sweep.md").read_text()
    header = [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]]
    assert header == ["run", "train.lr", "params", "best val bits/char", "wall time (s)", "chars/s", "status"]
    assert table in out  # the printed table is the saved one

    checkpoints = {name: (sweep_dir / name / "last.safetensors").stat().st_mtime_ns for name in names}
    assert main(["sweep", str(path)]) == 0
    again = capsys.readouterr().out
    assert all(f"{name}: finished earlier, skipped" in again for name in names)
    assert "starting" not in again
    assert {name: (sweep_dir / name / "last.safetensors").stat().st_mtime_ns for name in names} == checkpoints
    assert (sweep_dir / "sweep.md").read_text() == table


def test_a_run_directory_from_an_edited_sweep_is_not_reused(tmp_path, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_corpus, grid={"train.lr": [0.03]})
    elsewhere = tmp_path / "elsewhere"
    assert main(["sweep", str(path), "--out", str(elsewhere)]) == 0
    assert (elsewhere / "lr=0.03" / "best.safetensors").is_file() and not (tmp_path / "sweep-out").exists()
    write_sweep(tmp_path, tiny_corpus, grid={"train.lr": [0.03]}, set={**TINY_SHARED, "train.max_steps": 13})
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(elsewhere)]) == 1
    assert "holds a run with a different config" in one_error_line(capsys)


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, tiny_corpus, capsys):
    # batch 4 x seq_len 5000 needs more text than the tiny corpus has: train refuses it.
    path = write_sweep(tmp_path, tiny_corpus, grid={"train.seq_len": [10, 5000]})
    assert main(["sweep", str(path)]) == 1
    captured = capsys.readouterr()
    assert "seq_len=5000: failed (exit 1): error: corpus" in captured.out
    assert captured.err.strip() == "error: 1 of 2 runs failed; see train.log in their run directories"
    with open(tmp_path / "sweep-out" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"]) for r in rows] == [("seq_len=10", "finished"), ("seq_len=5000", "not started")]


def test_unfinished_runs_are_resumed_and_new_ones_start_fresh(tmp_path, tiny_corpus):
    sweep = read_sweep(write_sweep(tmp_path, tiny_corpus))
    run = plan(sweep)[0]
    charlstm = [sys.executable, "-m", "charlstm.cli", "train"]
    assert train_command(run, sweep, "started") == [*charlstm, str(sweep.corpus), "--resume", str(run.run_dir),
                                                    "--quiet"]
    fresh = train_command(run, sweep, "new")
    assert fresh[:5] == [*charlstm, str(sweep.corpus)] and fresh[-3:] == ["--out", str(run.run_dir), "--quiet"]
    assert "train.lr=0.003" in fresh and "model.hidden_size=12" in fresh


def test_resume_path_a_started_run_is_resumed_through_train_resume(tmp_path, tiny_corpus, capsys):
    """A run directory with config.yaml and a running run.json but no checkpoint (a sweep
    killed just after the run began) is continued with `train --resume`, not restarted."""
    path = write_sweep(tmp_path, tiny_corpus, grid={"train.lr": [0.03]})
    run = plan(read_sweep(path))[0]
    run.run_dir.mkdir(parents=True)
    write_config(run.run_dir, run.config)
    (run.run_dir / "run.json").write_text(json.dumps({"corpus": str(tiny_corpus), "status": "running"}))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lr=0.03: resuming" in out and "lr=0.03: finished in" in out
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == TINY_SHARED["train.max_steps"]


def test_a_started_run_resumes_on_the_sweeps_corpus_after_the_corpus_moved(tmp_path, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_corpus, grid={"train.lr": [0.03]})
    run = plan(read_sweep(path))[0]
    run.run_dir.mkdir(parents=True)
    write_config(run.run_dir, run.config)
    (run.run_dir / "run.json").write_text(json.dumps({
        "corpus": str(tmp_path / "where-it-was.txt"), "corpus_sha256": file_sha256(tiny_corpus),
        "status": "running"}))
    assert main(["sweep", str(path)]) == 0
    assert "lr=0.03: resuming" in capsys.readouterr().out
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["corpus"] == str(tiny_corpus.resolve())


def test_example_sweep_file_is_valid():
    """Its configs validate even where its corpus (outside the repository) is absent."""
    planned = plan(read_sweep(CONFIGS / "sweep_example.yaml"))
    assert len(planned) >= 4 and len({run.name for run in planned}) == len(planned)


def test_library_refuses_zero_jobs(tmp_path, tiny_corpus):
    from charlstm.sweep import run_sweep
    with pytest.raises(CharlstmError, match="--jobs must be at least 1"):
        run_sweep(write_sweep(tmp_path, tiny_corpus), jobs=0)


LONG_RUNS = {**TINY_SHARED, "train.max_steps": 1500, "train.checkpoint_every": 5,
             "train.eval_every": 500, "train.log_every": 50}


def start_a_long_sweep(tmp_path, tiny_corpus):
    """Two long runs, one at a time, in a subprocess of its own session; returns once the
    first has written a checkpoint: (settings, sweep file, process, first, second)."""
    path = write_sweep(tmp_path, tiny_corpus, set=LONG_RUNS)
    process = subprocess.Popen([sys.executable, "-m", "charlstm.cli", "sweep", str(path), "--jobs", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first, second = tmp_path / "sweep-out" / "lr=0.003", tmp_path / "sweep-out" / "lr=0.03"
    deadline = time.monotonic() + 60
    while not (first / "last.safetensors").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    return LONG_RUNS, path, process, first, second


def test_ctrl_c_stops_the_sweep_and_a_rerun_resumes_it_exactly(tmp_path, tiny_corpus, capsys):
    """Ctrl-C reaches the whole foreground process group: the running child stops with
    its checkpoint intact and queued runs never start. The rerun resumes the stopped run
    through `train --resume` and ends with the weights of an uninterrupted run."""
    long_runs, path, process, first, second = start_a_long_sweep(tmp_path, tiny_corpus)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert "lr=0.003: failed (exit 130)" in out
    assert not second.exists()
    stopped_at = checkpoint.load(first / "last.safetensors").progress["step"]
    assert 0 < stopped_at < 1500
    assert json.loads((first / "run.json").read_text())["status"] != "finished"

    assert main(["sweep", str(path), "--jobs", "2"]) == 0
    again = capsys.readouterr().out
    assert "lr=0.003: resuming" in again and "lr=0.03: starting" in again
    assert f"resuming {first} from step {stopped_at}" in (first / "train.log").read_text()
    assert json.loads((first / "run.json").read_text())["steps"] == 1500

    uninterrupted = tmp_path / "uninterrupted"
    (tmp_path / "alone").mkdir()
    alone = write_sweep(tmp_path / "alone", tiny_corpus, set=long_runs, grid={"train.lr": [0.003]})
    assert main(["sweep", str(alone), "--out", str(uninterrupted)]) == 0
    assert np.array_equal(checkpoint.load(first / "last.safetensors").params.flat,
                          checkpoint.load(uninterrupted / "lr=0.003" / "last.safetensors").params.flat)


def test_a_run_stopped_by_a_signal_of_its_own_stops_the_sweep(tmp_path, tiny_corpus):
    """SIGTERM to the running child alone (not to the sweep): it stops with its checkpoint,
    and the sweep starts nothing more and says it was interrupted."""
    _, _, process, first, second = start_a_long_sweep(tmp_path, tiny_corpus)
    child = json.loads((first / "run.json").read_text())["pid"]
    os.kill(child, signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert "lr=0.003: failed (exit 143)" in out
    assert not second.exists()


def test_a_diverged_run_is_a_result_and_is_not_rerun(tmp_path, tiny_corpus, capsys):
    path = write_sweep(tmp_path, tiny_corpus, grid={"train.lr": [0.03]})
    run = plan(read_sweep(path))[0]
    run.run_dir.mkdir(parents=True)
    write_config(run.run_dir, run.config)
    (run.run_dir / "run.json").write_text(json.dumps({"status": "diverged", "num_params": 5}))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lr=0.03: diverged earlier, skipped" in out
    assert not (run.run_dir / "train.log").exists()
    assert "| diverged |" in (tmp_path / "sweep-out" / "sweep.md").read_text()
