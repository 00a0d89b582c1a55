"""`charlstm plot`: curves from metrics.jsonl, rendered to a real image."""

import json
import math
import sys

import numpy as np
import pytest
from helpers import TINY_RUN, one_error_line

from charlstm.cli import main
from charlstm.errors import CharlstmError
from charlstm.plot import curves_from_records, expand_sweeps, read_records, run_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_curves_are_in_bits_per_char_against_step_and_training_time():
    records = [
        {"step": 10, "train_loss": math.log(2) * 3, "elapsed_s": 5.0},
        {"step": 20, "train_loss": math.log(2) * 2, "elapsed_s": 10.0, "val_loss": math.log(2) * 2.5},
        {"step": 30, "train_loss": math.log(2) * 1.5, "elapsed_s": 19.0},
    ]
    curves = curves_from_records(records, "run")
    assert curves.train_step == [10, 20, 30]
    assert curves.train_bpc == pytest.approx([3.0, 2.0, 1.5])
    assert curves.train_time == [5.0, 10.0, 19.0]
    assert (curves.val_step, curves.val_bpc, curves.val_time) == ([20], pytest.approx([2.5]), [10.0])


def test_lines_that_are_not_records_are_skipped_and_no_records_is_one_line(tmp_path):
    good = json.dumps({"step": 1, "train_loss": 1.0, "elapsed_s": 0.1})
    bad_lines = ["not json", '{"step": "x"}', '{"step": 3, "train_loss": "abc"}', "[1, 2]", '{"step": 2, "tr']
    (tmp_path / "metrics.jsonl").write_bytes(
        "\n".join([good, *bad_lines[:4], good, bad_lines[4]]).encode() + b"\n\xff\xfe\n")
    assert len(read_records(tmp_path)) == 2
    (tmp_path / "metrics.jsonl").write_text("\n".join(bad_lines), encoding="utf-8")
    with pytest.raises(CharlstmError, match="has no records yet"):
        read_records(tmp_path)


def test_labels_are_directory_names_made_unique(tmp_path):
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]


@pytest.fixture
def two_runs(tiny_corpus, tmp_path, capsys):
    runs = []
    for name, lr in (("slow-lr", 0.002), ("fast-lr", 0.02)):
        run_dir = tmp_path / name
        assert main(["train", str(tiny_corpus), "--out", str(run_dir), *TINY_RUN, "--set", f"train.lr={lr}"]) == 0
        runs.append(run_dir)
    capsys.readouterr()
    return runs


def test_plot_renders_a_png_with_both_runs(two_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, two_runs), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(out)  # (height, width, RGBA) floats
    assert image.shape[0] > 200 and image.shape[1] > 600
    colours = np.unique(image[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50  # lines, text and antialiasing, not a blank canvas
    # Both default line colours (C0 blue #1f77b4, C1 orange #ff7f0e) are drawn.
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        distance = np.abs(image[..., :3] - np.array(rgb) / 255.0).max(axis=-1)
        assert (distance < 0.02).sum() > 100, rgb


def test_a_sweep_directory_stands_for_its_runs(two_runs, tmp_path):
    (tmp_path / "sweep.csv").write_text("run\n", encoding="utf-8")
    assert expand_sweeps([tmp_path]) == sorted(two_runs)
    assert expand_sweeps([two_runs[0], tmp_path / "x"]) == [two_runs[0], tmp_path / "x"]


def test_missing_matplotlib_says_how_to_install_it(two_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    out = tmp_path / "curves.png"
    assert main(["plot", str(two_runs[0]), "-o", str(out)]) == 1
    assert one_error_line(capsys) == "error: plotting needs matplotlib: pip install 'charlstm[plot]'"
    assert not out.exists()


def test_plot_refuses_what_is_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "metrics.jsonl").write_text("", encoding="utf-8")
    for target, fragment in ((tmp_path / "empty", "is not a run directory: it has no metrics.jsonl"),
                             (tmp_path / "file.txt", "is not a directory"),
                             (tmp_path / "missing", "is not a directory"),
                             (tmp_path / "new", "has no records yet")):
        assert main(["plot", str(target), "-o", str(tmp_path / "c.png")]) == 1
        assert fragment in one_error_line(capsys)
    assert main(["plot"]) == 2
    assert "Missing argument" in one_error_line(capsys)
