"""Files in and out: every file charlstm writes is replaced atomically, every JSON file
is strict JSON, and every input file is checked the same way before it is read."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from .errors import CharlstmError


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a CharlstmError if it does not exist, is a directory or is
    not a regular file; `what` names the file for the user ("corpus", "checkpoint", ...).

    A FIFO with no writer blocks a reader forever and /dev/zero never ends, and every
    reader here may need the file twice or its size: only regular files are read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise CharlstmError(f"{what} {path} does not exist") from None
        raise CharlstmError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise CharlstmError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise CharlstmError(f"{what} {path} is not a regular file (a pipe, socket or device); "
                            "save its contents to a file and pass that")
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers only ever see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CharlstmError(
            f"could not write {path}: {exc.strerror or exc}; the previous file is untouched") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def strict_json(obj, indent: int | None = None) -> str:
    """JSON that any parser reads. Python writes NaN and Infinity, which are not JSON,
    so a non-finite number is written as null (no value, e.g. no validation loss yet)."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def write_json(path: Path, obj) -> None:
    write_text(path, strict_json(obj, indent=2) + "\n")
