"""Experiments from one YAML file: a grid or list of config overrides, each trained in
its own run directory by a `charlstm train` subprocess, then one table.

Sweep file (relative paths are relative to the sweep file's own directory):

    base: small.yaml                 # config every run starts from (optional)
    corpus: ../data/corpus.txt       # the text every run trains on
    out: ../runs/my-sweep            # where run directories go [default: runs/<file stem>;
                                     # `--out` overrides both]
    set: {train.max_steps: 400}      # overrides shared by every run (optional)
    grid:                            # every combination of these values ...
      model.hidden_size: [128, 256]
      train.lr: [0.002, 0.005]
    runs:                            # ... followed by these runs, one override mapping each
      - {model.num_layers: 2}

A run directory is named after the run's own overrides, e.g. `hidden_size=128,lr=0.002`,
so a rerun finds it again: finished and diverged runs (run.json status) are skipped,
started ones are resumed with `charlstm train --resume`, the rest start fresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path


from .config import Config, config_to_dict, flatten, load_config, read_yaml
from .errors import CharlstmError
from .files import existing_file
from .rundir import make_run_dir, read_config, read_run_info
from .sweep_table import markdown_table, table_rows, write_tables

SWEEP_KEYS = ("base", "corpus", "out", "set", "grid", "runs")
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Sweep:
    source: Path
    base: Path | None
    corpus: Path
    out: Path
    shared: dict      # overrides every run gets
    runs: list[dict]  # each run's own overrides (grid combinations, then the list)


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: dict   # the run's own overrides
    sets: list[str]   # every --set KEY=VALUE argument it trains with
    config: Config
    run_dir: Path


# ---- reading the sweep file ----

def _mapping_of_keys(value, what: str, path: Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise CharlstmError(f"{path}: '{what}' must map config keys (e.g. train.lr) to values")
    return value


def _resolve(path_text, key: str, source: Path) -> Path:
    if not isinstance(path_text, str) or not path_text:
        raise CharlstmError(f"{source}: '{key}' must be a path")
    path = Path(path_text).expanduser()
    # normpath: configs/../runs/x reads better as runs/x (lexical; sweeps rarely sit behind symlinks)
    return path if path.is_absolute() else Path(os.path.normpath(source.parent / path))


def read_sweep(path: Path) -> Sweep:
    path = Path(path)
    raw = read_yaml(path, "sweep file")
    if not isinstance(raw, dict):
        raise CharlstmError(f"sweep file {path} must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise CharlstmError(f"{path}: unknown sweep key '{unknown[0]}' (known: {', '.join(SWEEP_KEYS)})")
    if "corpus" not in raw:
        raise CharlstmError(f"{path}: 'corpus' is missing; name the text file every run trains on")

    grid = _mapping_of_keys(raw.get("grid"), "grid", path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CharlstmError(f"{path}: grid key '{key}' must have a non-empty list of values")
    listed = raw.get("runs") or []
    if not isinstance(listed, list):
        raise CharlstmError(f"{path}: 'runs' must be a list of override mappings")
    runs = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    runs += [_mapping_of_keys(run, "runs entries", path) for run in listed]
    if not runs:
        raise CharlstmError(f"{path}: no runs; give a 'grid' of values or a list of 'runs'")

    base = _resolve(raw["base"], "base", path) if raw.get("base") is not None else None
    out = _resolve(raw["out"], "out", path) if raw.get("out") is not None else Path("runs") / path.stem
    return Sweep(path, base, _resolve(raw["corpus"], "corpus", path), out,
                 _mapping_of_keys(raw.get("set"), "set", path), runs)


# ---- planning: names, overrides, validated configs ----

def format_value(value) -> str:
    """A value as `--set` reads it back (JSON is YAML)."""
    return json.dumps(value)


def _name_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "+".join(_name_value(v) for v in value)
    return format_value(value)


def run_name(overrides: dict) -> str:
    """`hidden_size=128,lr=0.002`: each key's last part unless two keys share it.
    Stable for the same overrides, safe as a directory name."""
    if not overrides:
        return "base"
    short = [key.rpartition(".")[2] for key in overrides]
    parts = [f"{name if short.count(name) == 1 else key}={_name_value(value)}"
             for key, name, value in zip(overrides, short, overrides.values())]
    name = re.sub(r"[^A-Za-z0-9._=+,-]", "-", ",".join(parts))
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_CHARS - 9]}-{digest}"
    return name


def plan(sweep: Sweep) -> list[PlannedRun]:
    """Every run's name, arguments and config, all validated before anything starts."""
    planned, seen = [], set()
    for overrides in sweep.runs:
        merged = {**sweep.shared, **overrides}
        sets = [f"{key}={format_value(value)}" for key, value in merged.items()]
        try:
            config = load_config(sweep.base, sets)
        except CharlstmError as exc:
            raise CharlstmError(f"{sweep.source}: run {run_name(overrides)}: {exc}") from None
        name = run_name(overrides)
        if name in seen:
            raise CharlstmError(f"{sweep.source}: two runs have the same overrides ({name})")
        seen.add(name)
        planned.append(PlannedRun(name, overrides, sets, config, sweep.out / name))
    return planned


# ---- running ----

# A diverged run is a result (that learning rate is too high), and resuming it would
# only diverge again; like a finished one it is reported, not rerun.
DONE_STATUSES = ("finished", "diverged")


def run_status(run_dir: Path) -> str:
    """run.json's "finished" or "diverged"; else "started" (a config.yaml is there:
    resume it) or "new"."""
    info = read_run_info(run_dir, tolerant=True)
    if info.get("status") in DONE_STATUSES:
        return info["status"]
    return "started" if (run_dir / "config.yaml").is_file() else "new"


def check_same_config(run: PlannedRun) -> None:
    """A run directory from an edited sweep file must not pass for this run."""
    existing = read_config(run.run_dir)
    if config_to_dict(existing) != config_to_dict(run.config):
        raise CharlstmError(f"{run.run_dir} holds a run with a different config than the sweep "
                            "file now gives it; move it away or change the sweep's 'out'")


def train_command(run: PlannedRun, sweep: Sweep, status: str) -> list[str]:
    charlstm = [sys.executable, "-m", "charlstm.cli", "train"]
    if status == "started":  # the sweep's corpus, which may have moved since the run began
        return charlstm + [str(sweep.corpus), "--resume", str(run.run_dir), "--quiet"]
    base = ["--config", str(sweep.base)] if sweep.base else []
    sets = [arg for text in run.sets for arg in ("--set", text)]
    return charlstm + [str(sweep.corpus), *base, *sets, "--out", str(run.run_dir), "--quiet"]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blas_env(jobs: int, cores: int | None = None) -> dict[str, str]:
    """The environment for one of `jobs` concurrent runs: the cores shared out, so
    N BLAS thread pools do not oversubscribe the machine."""
    threads = str(max(1, (cores or cpu_count()) // jobs))
    return {**os.environ, **{name: threads for name in BLAS_THREAD_VARIABLES}}


# The exit codes of a run stopped by SIGINT, SIGTERM or SIGHUP (train.TrainingInterrupted).
STOPPED_EXIT_CODES = (130, 143, 129)


def execute(run: PlannedRun, sweep: Sweep, env: dict[str, str], say: Callable[[str], None],
            stopping: threading.Event) -> bool:
    """Train, resume or skip one run; its output goes to RUN_DIR/train.log. True if it
    finished or diverged, False if it failed or was stopped. A run that was stopped by a
    signal sets `stopping`, and no run starts after that."""
    if stopping.is_set():
        return False
    status = run_status(run.run_dir)
    if status in DONE_STATUSES:
        say(f"{run.name}: {status} earlier, skipped")
        return True
    say(f"{run.name}: {'resuming' if status == 'started' else 'starting'}")
    run.run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run.run_dir / "train.log", "a", encoding="utf-8") as log:
        result = subprocess.run(train_command(run, sweep, status), stdout=log, stderr=subprocess.STDOUT,
                                env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode in STOPPED_EXIT_CODES:
        stopping.set()
    if result.returncode != 0:
        outcome = "diverged" if run_status(run.run_dir) == "diverged" else f"failed (exit {result.returncode})"
        say(f"{run.name}: {outcome}: {last_error(run.run_dir / 'train.log')}")
        return outcome == "diverged"
    say(f"{run.name}: finished in {time.perf_counter() - started:.0f} s")
    return True


def last_error(log_path: Path) -> str:
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def table_runs(planned: list[PlannedRun]) -> list[tuple[str, Path, dict]]:
    """Each run's name, directory and its values of every key any run overrides."""
    keys = list(dict.fromkeys(key for run in planned for key in run.overrides))
    runs = []
    for run in planned:
        resolved = flatten(config_to_dict(run.config))
        runs.append((run.name, run.run_dir, {key: resolved[key] for key in keys}))
    return runs


def run_sweep(sweep_path: Path, jobs: int = 1, say: Callable[[str], None] = print,
              out: Path | None = None) -> list[dict]:
    """Plan, run (`jobs` at once), print and write the table; returns its rows, best
    first. Raises CharlstmError after the table if any run failed."""
    if jobs < 1:
        raise CharlstmError("--jobs must be at least 1")
    sweep = read_sweep(sweep_path)
    if out is not None:
        sweep = dataclasses.replace(sweep, out=Path(out))
    planned = plan(sweep)
    existing_file(sweep.corpus, f"{sweep.source}: corpus")
    try:
        make_run_dir(sweep.out)
    except CharlstmError as exc:
        raise CharlstmError(f"{sweep.source}: sweep directory: {exc}") from None
    env = blas_env(jobs)
    started = time.perf_counter()
    threads = env["OPENBLAS_NUM_THREADS"]
    say(f"sweep {sweep.source}: {len(planned)} runs in {sweep.out}, {jobs} at a time "
        f"({threads} BLAS thread{'' if threads == '1' else 's'} each)")
    lock = threading.Lock()

    def say_locked(text: str) -> None:
        with lock:
            say(text)

    for run in planned:
        if run_status(run.run_dir) != "new":
            check_same_config(run)

    stopping = threading.Event()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(execute, run, sweep, env, say_locked, stopping) for run in planned]
        # Waiting in short slices: Ctrl-C may be delivered to a worker thread (blocked in
        # waitpid), and the main thread runs Python's handler only once it wakes up.
        while wait(futures, timeout=0.2).not_done:
            pass
        finished = [future.result() for future in futures]
        if stopping.is_set():  # a run was stopped by a signal, which reached this process too
            raise KeyboardInterrupt
    finally:
        # After Ctrl-C, start nothing new; the running children got the signal too and
        # stop with their checkpoints intact, so a rerun resumes them.
        pool.shutdown(wait=True, cancel_futures=True)
    rows = table_rows(table_runs(planned))
    write_tables(rows, sweep.out)
    say(markdown_table(rows))
    say(f"sweep took {time.perf_counter() - started:.0f} s; table written to {sweep.out / 'sweep.csv'} "
        f"and {sweep.out / 'sweep.md'}")
    failed = finished.count(False)
    if failed:
        raise CharlstmError(f"{failed} of {len(planned)} runs failed; see train.log in their run directories")
    return rows
