"""Big-corpus throughput and memory: encoding speed and peak RSS of a training run.

    python benchmarks/corpus.py [--size-mb 200] [--keep DIR]

Writes a UTF-8 corpus of --size-mb megabytes into a temporary directory (the bundled
corpus repeated, with a line of multi-byte characters mixed in so the decoder does
real work), then:
  1. times `data.read_corpus` (file -> vocabulary + ids) in this process: MB/s;
  2. runs `charlstm train` on it for a few steps in a subprocess and reports that
     process's peak resident memory (ru_maxrss of the child, so this script's own
     arrays do not count) against the file size.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charlstm.cli import bundled_corpus
from charlstm.data import read_corpus

MB = 1_000_000
MULTIBYTE_LINE = "naïve café — Ελληνικά, 東京, ✓ and 🙂\n"
TRAIN_STEPS = 3


def write_corpus(path: Path, size_bytes: int) -> int:
    """Repeat the bundled corpus (plus a multi-byte line per copy) up to `size_bytes`."""
    base = (bundled_corpus().read_text(encoding="utf-8") + MULTIBYTE_LINE).encode("utf-8")
    written = 0
    with open(path, "wb") as f:
        while written < size_bytes:
            piece = base[:size_bytes - written]
            # never cut a multi-byte character: back off to a character boundary
            while piece and len(piece) < len(base) and (base[len(piece)] & 0xC0) == 0x80:
                piece = piece[:-1]
            f.write(piece)
            written += len(piece)
            if len(piece) < len(base):
                break
    return written


def time_encoding(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    _, ids = read_corpus(path)
    return time.perf_counter() - started, len(ids)


def train_peak_rss(path: Path, run_dir: Path) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of a short `charlstm train` run on `path`."""
    settings = {
        "model.hidden_size": 128, "model.num_layers": 1, "train.batch_size": 32, "train.seq_len": 64,
        "train.max_steps": TRAIN_STEPS, "train.eval_every": TRAIN_STEPS, "train.checkpoint_every": TRAIN_STEPS,
        "train.sample_every": TRAIN_STEPS, "train.sample_length": 50, "train.warmup_steps": 1,
        "data.val_fraction": 0.0001,  # 20k characters of a 200 MB file: a quick evaluation
    }
    command = [sys.executable, "-m", "charlstm.cli", "train", str(path), "--out", str(run_dir), "--quiet"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib >= before, "ru_maxrss of children only grows"
    return peak_kib * 1024.0, wall  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description="Corpus encoding speed and training memory.")
    parser.add_argument("--size-mb", type=float, default=200.0, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--keep", type=Path, help="write the corpus here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "big_corpus.txt"
        size = write_corpus(path, int(args.size_mb * MB))
        seconds, num_chars = time_encoding(path)
        peak_rss, train_wall = train_peak_rss(path, folder / "run")
    print()
    print(f"{time.strftime('%Y-%m-%d')}, corpus {size / MB:.1f} MB ({num_chars:,} characters), "
          f"{os.cpu_count()} cores; training: {TRAIN_STEPS} steps of a 1x128 model, {train_wall:.1f} s")
    print()
    print("| measure                              | value       | target       |")
    print("|--------------------------------------|-------------|--------------|")
    print(f"| encode file -> ids (read_corpus)     | {size / MB / seconds:6.1f} MB/s | >= 50 MB/s   |")
    print(f"| peak RSS of `charlstm train`         | {peak_rss / MB:6.0f} MB   | < {3 * size / MB:.0f} MB     |")
    print(f"| peak RSS / file size                 | {peak_rss / size:6.2f} x    | < 3 x        |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
