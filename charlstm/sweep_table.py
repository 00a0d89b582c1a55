"""The table of a sweep: one row per run from its run directory (run.json,
metrics.jsonl), sorted best first, printed as Markdown and saved as sweep.md and
sweep.csv. It takes plain data (names, run directories, settings), not sweep.py's
plans, so that the two modules do not import each other."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from .files import atomic_write
from .rundir import read_metrics, read_run_info


def median_chars_per_s(run_dir: Path) -> float | None:
    """Training throughput: the median over metrics.jsonl records (evaluation excluded)."""
    speeds = [r["chars_per_s"] for r in read_metrics(run_dir) if "chars_per_s" in r]
    return statistics.median(speeds) if speeds else None


def summarise(name: str, run_dir: Path, settings: dict) -> dict:
    """One table row: the run's name and settings (dotted key -> value), then its
    outcome from run.json and metrics.jsonl."""
    info = read_run_info(run_dir, tolerant=True)
    row = {"run": name, **settings}
    best = info.get("best_val_loss")
    row.update({
        "params": info.get("num_params"),
        "best_val_bpc": best / math.log(2) if isinstance(best, (int, float)) and math.isfinite(best) else None,
        "wall_time_s": info.get("wall_time_s"),
        "chars_per_s": median_chars_per_s(run_dir),
        "status": info.get("status", "not started"),
    })
    return row


def table_rows(runs: list[tuple[str, Path, dict]]) -> list[dict]:
    """Rows for (name, run directory, settings) triples, sorted by best validation
    bits/char, unfinished runs last. Every run's settings should have the same keys:
    they are the table's first columns."""
    rows = [summarise(name, run_dir, settings) for name, run_dir, settings in runs]
    return sorted(rows, key=lambda r: (r["best_val_bpc"] is None, r["best_val_bpc"] or 0.0))


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "best_val_bpc":
        return f"{value:.4f}"
    if column == "wall_time_s":
        return f"{value:.1f}"
    if column == "chars_per_s":
        return f"{value:,.0f}"
    if column == "params":
        return f"{value:,}"
    return str(value)


HEADINGS = {"params": "params", "best_val_bpc": "best val bits/char", "wall_time_s": "wall time (s)",
            "chars_per_s": "chars/s"}


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[HEADINGS.get(c, c) for c in columns]] + [[_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [c in HEADINGS for c in columns]

    def line(values):
        padded = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if right else "-" * (w + 2)
                          for w, right in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(c) for c in cells[1:]])


def write_tables(rows: list[dict], out: Path) -> None:
    """sweep.csv (raw numbers) and sweep.md (the printed table) in the sweep's out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write(out / "sweep.csv", buffer.getvalue().encode("utf-8"))
    atomic_write(out / "sweep.md", (markdown_table(rows) + "\n").encode("utf-8"))
