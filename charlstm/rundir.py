"""The run directory: what a training run leaves behind, and the one reader and writer
of each file in it.

    config.yaml        the resolved config
    run.json           corpus (path, sha256), sizes, versions, every resume, and the
                       status: running, finished, interrupted, diverged, failed (or
                       imported, for a run made by `charlstm import --run-dir`)
    metrics.jsonl      one JSON object per log event (see train.train)
    last.safetensors   written every `checkpoint_every` steps, at the end and on a stop signal
    best.safetensors   the lowest validation loss so far

Every file but metrics.jsonl (appended to, one line per record) is replaced
atomically, so a run killed at any instant can be resumed from its last checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import EXTENSION
from .config import Config, config_yaml, load_run_config
from .errors import CharlstmError
from .files import strict_json, write_json, write_text

CONFIG = "config.yaml"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
RUN_FILES = (CONFIG, RUN_INFO, METRICS, "last" + EXTENSION, "best" + EXTENSION)


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """`last` or `best` in `run_dir`."""
    return Path(run_dir) / (name + EXTENSION)


def prepare_run_dir(run_dir: Path, force: bool) -> None:
    """Create the run directory; refuse to overwrite an earlier run unless forced."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlstmError(f"--out {run_dir} is a file, not a directory")
    existing = check_run_files(run_dir)
    if existing and not force:
        raise CharlstmError(f"{run_dir} already holds a run ({existing[0]}); "
                            "choose another --out or pass --force to overwrite it")
    make_run_dir(run_dir)
    for name in existing:
        try:
            (run_dir / name).unlink()
        except OSError as exc:
            raise CharlstmError(f"cannot remove {run_dir / name}: {exc.strerror or exc}") from None


def make_run_dir(run_dir: Path) -> None:
    """mkdir -p, with every OS refusal (a file in the way, no permission, a read-only
    or pseudo file system) as one line naming the directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharlstmError(f"--out {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CharlstmError(f"cannot create run directory {run_dir}: {exc.strerror or exc}; "
                            "choose another --out") from None


def check_run_files(run_dir: Path) -> list[str]:
    """The run files present in `run_dir`; a CharlstmError if one is not a regular file
    (a directory named metrics.jsonl cannot be removed, appended to or replaced), so
    that the command is refused before it changes anything."""
    existing = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.exists():
            if not path.is_file():
                raise CharlstmError(f"{path} is not a regular file; move it away or choose another run directory")
            existing.append(name)
    return existing


def remove_stale_temporary_files(run_dir: Path) -> None:
    """Half-written files left by a killed process (see files.atomic_write)."""
    for path in run_dir.glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


# ---- config.yaml ----

def write_config(run_dir: Path, config: Config) -> None:
    write_text(run_dir / CONFIG, config_yaml(config))


def read_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    return load_run_config(run_dir / CONFIG, list(overrides))


# ---- run.json ----

def read_run_info(run_dir: Path, tolerant: bool = False) -> dict:
    """run.json as a dict.

    Strict (the default, for a resume): the directory must hold config.yaml and a
    run.json naming its corpus, else a CharlstmError says what is wrong. Tolerant (for
    reports on runs that may never have started): {} for a missing or unreadable run.json.
    """
    path = run_dir / RUN_INFO
    if not tolerant:
        if not run_dir.is_dir():
            raise CharlstmError(f"--resume {run_dir}: no such run directory")
        if not path.is_file() or not (run_dir / CONFIG).is_file():
            raise CharlstmError(f"--resume {run_dir}: not a charlstm run directory (no run.json or config.yaml)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or not (tolerant or isinstance(info.get("corpus"), str)):
            raise ValueError
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        if tolerant:
            return {}
        raise CharlstmError(f"{path} is damaged; the run cannot be resumed from it") from None
    return info


def write_run_info(run_dir: Path, info: dict) -> None:
    write_json(run_dir / RUN_INFO, info)


# ---- metrics.jsonl ----

class MetricsLog:
    """Appends records to metrics.jsonl, one JSON object a line, each flushed at once
    so that a killed run loses at most the line being written."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / METRICS, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self.file.write(strict_json(record) + "\n")
            self.file.flush()
        except OSError as exc:  # e.g. the disk filled up: train's handler records the run as failed
            raise CharlstmError(f"could not write {self.file.name}: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # a write already failed and was reported


METRIC_FIELDS = ("epoch", "train_loss", "lr", "grad_norm", "chars_per_s", "elapsed_s", "val_loss", "val_bpc")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl in order. A line that is not a well-formed
    record (a line torn by a kill, a hand edit, bytes that are not UTF-8) is skipped."""
    try:
        lines = (run_dir / METRICS).read_bytes().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
            well_formed = (isinstance(record, dict) and type(record.get("step")) is int
                           and all(isinstance(record.get(k, 0.0), (int, float)) for k in METRIC_FIELDS))
        except ValueError:
            well_formed = False
        if well_formed:
            records.append(record)
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the records up to `step`: later ones belong to steps the resumed run will
    compute again."""
    if (run_dir / METRICS).exists():
        kept = [strict_json(r) + "\n" for r in read_metrics(run_dir) if r["step"] <= step]
        write_text(run_dir / METRICS, "".join(kept))
