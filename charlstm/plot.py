"""Loss curves of one or more runs, in bits/char, against step and wall time.

Reads each run directory's metrics.jsonl (train_loss and val_loss are nats/char).
matplotlib is an optional extra (`pip install 'charlstm[plot]'`), imported only here
and only when plotting; the figure is drawn on a bare Agg canvas, so no GUI backend
or global pyplot state is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CharlstmError
from .rundir import METRICS, read_metrics

INSTALL_HINT = "plotting needs matplotlib: pip install 'charlstm[plot]'"


@dataclass
class Curves:
    label: str
    train_step: list[float] = field(default_factory=list)
    train_time: list[float] = field(default_factory=list)
    train_bpc: list[float] = field(default_factory=list)
    val_step: list[float] = field(default_factory=list)
    val_time: list[float] = field(default_factory=list)
    val_bpc: list[float] = field(default_factory=list)


def read_records(run_dir: Path) -> list[dict]:
    """The well-formed records of RUN_DIR/metrics.jsonl (see rundir.read_metrics)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not run_dir.is_dir():
        raise CharlstmError(f"{run_dir} is not a directory; pass run directories (they hold metrics.jsonl)")
    if not path.is_file():
        raise CharlstmError(f"{run_dir} is not a run directory: it has no metrics.jsonl")
    records = read_metrics(run_dir)
    if not records:
        raise CharlstmError(f"{path} has no records yet")
    return records


def curves_from_records(records: list[dict], label: str) -> Curves:
    """Bits/char against step and against wall time (elapsed_s counts training time
    across resumes, and a resume drops the records it computes again)."""
    curves = Curves(label)
    for record in records:
        step, wall_s = record["step"], record.get("elapsed_s", 0.0)
        if "train_loss" in record:
            curves.train_step.append(step)
            curves.train_time.append(wall_s)
            curves.train_bpc.append(record["train_loss"] / math.log(2))
        if record.get("val_loss") is not None:
            curves.val_step.append(step)
            curves.val_time.append(wall_s)
            curves.val_bpc.append(record["val_loss"] / math.log(2))
    return curves


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or parent/name where two names collide."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [f"{Path(d).resolve().parent.name}/{name}" if names.count(name) > 1 else name
            for d, name in zip(run_dirs, names)]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharlstmError(INSTALL_HINT) from None
    return Figure, FigureCanvasAgg


def expand_sweeps(paths: list[Path]) -> list[Path]:
    """Run directories as given, except that a sweep directory (no metrics.jsonl of its
    own, run directories inside) stands for its runs."""
    run_dirs = []
    for path in map(Path, paths):
        runs = sorted(p.parent for p in path.glob(f"*/{METRICS}"))
        is_sweep = path.is_dir() and not (path / METRICS).exists() and runs
        run_dirs.extend(runs if is_sweep else [path])
    return run_dirs


def plot_runs(paths: list[Path], out: Path) -> None:
    """Two panels, loss vs step and vs wall time; per run a solid training curve and
    a dashed validation curve with markers in the same colour. `paths` are run
    directories or sweep directories."""
    if not paths:
        raise CharlstmError("pass at least one run directory")
    run_dirs = expand_sweeps(paths)
    all_curves = [curves_from_records(read_records(d), label) for d, label in zip(run_dirs, run_labels(run_dirs))]
    out = Path(out)
    if not out.parent.is_dir():
        raise CharlstmError(f"directory {out.parent} does not exist")
    Figure, FigureCanvasAgg = _matplotlib()

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    for index, curves in enumerate(all_curves):
        colour = f"C{index % 10}"
        for axes, train_x, val_x in ((by_step, curves.train_step, curves.val_step),
                                     (by_time, curves.train_time, curves.val_time)):
            axes.plot(train_x, curves.train_bpc, color=colour, linewidth=1.2, alpha=0.8,
                      label=f"{curves.label} train")
            if curves.val_bpc:
                axes.plot(val_x, curves.val_bpc, color=colour, linestyle="--", marker="o", markersize=4,
                          label=f"{curves.label} val")
    by_step.set_xlabel("step")
    by_time.set_xlabel("wall time (s)")
    by_step.set_ylabel("loss (bits/char)")
    for axes in (by_step, by_time):
        axes.grid(True, alpha=0.3)
    by_time.legend(fontsize="small", loc="upper right")
    figure.suptitle("training (solid) and validation (dashed) loss")
    try:
        figure.savefig(out, dpi=100)
    except (OSError, ValueError) as exc:
        raise CharlstmError(f"could not write {out}: {exc}") from None
