"""The small things issue 14 lists: status lines when piped, fine-tuning from best and
training longer with a fresh schedule, `--set lr=...`, the whole top-level help."""

import json

import pytest

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.config import ConfigError, load_config
from charlstm.optim import learning_rate
from charlstm.train import resume, train

from helpers import TINY_RUN, one_error_line, tiny_config


def test_a_run_without_a_progress_bar_prints_plain_status_lines(tiny_corpus, tmp_path):
    lines = []
    train(tiny_config(**{"train.sample_length": 0}), tiny_corpus, tmp_path / "run", show_progress=False,
          echo=lines.append, status_every_s=1e-9)
    status = [line for line in lines if line.startswith("step ") and "/20: train loss" in line]
    assert len(status) >= 15 and all("char/s" in line and "s elapsed" in line for line in status)
    assert not any(", 0 char/s" in line for line in status)  # not even right after a metrics record
    quiet = []
    train(tiny_config(**{"train.sample_length": 0}), tiny_corpus, tmp_path / "quiet", show_progress=False,
          echo=quiet.append)
    assert not any("/20: train loss" in line for line in quiet)


def test_new_schedule_warms_up_and_decays_again_from_the_resumed_step(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(**{"train.sample_length": 0, "train.checkpoint_every": 20})
    train(config, tiny_corpus, run, show_progress=False, echo=lambda _: None)
    resume(run, ["train.max_steps=40"], show_progress=False, echo=lambda _: None, new_schedule=True)
    ckpt = checkpoint.load(run / "last.safetensors")
    assert (ckpt.progress["schedule_start"], ckpt.progress["schedule_steps"]) == (20, 40)
    records = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    cfg = config.train
    # step 25 logs the lr of 0-based step 24, the schedule's 5th step: after warmup, early in the decay
    assert records[25] == pytest.approx(learning_rate(4, cfg.lr, cfg.lr_schedule, cfg.warmup_steps, 20,
                                                      cfg.final_lr_fraction))
    assert records[25] > 3 * records[20]  # not the final rate the old schedule ended at


def test_without_new_schedule_the_extra_steps_train_at_the_final_rate(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(**{"train.sample_length": 0, "train.checkpoint_every": 20})
    train(config, tiny_corpus, run, show_progress=False, echo=lambda _: None)
    resume(run, ["train.max_steps=40"], show_progress=False, echo=lambda _: None)
    records = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert records[40] == pytest.approx(config.train.lr * config.train.final_lr_fraction)


def test_resume_from_best_fine_tunes_from_the_best_step(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_corpus), "--out", str(run), *TINY_RUN]) == 0
    best_step = checkpoint.load(run / "best.safetensors").progress["step"]
    assert main(["train", "--resume", str(run), "--from", "best", "--new-schedule",
                 "--set", "train.max_steps=30", "--quiet"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["resumes"][-1]["from_step"] == best_step and info["resumes"][-1]["from"] == "best"
    assert f"resuming {run} from step {best_step} (best.safetensors)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--new-schedule"], "--from and --new-schedule go with --resume RUN_DIR"),
    (["--from", "best"], "--from and --new-schedule go with --resume RUN_DIR"),
])
def test_resume_options_without_resume_are_refused(tiny_corpus, tmp_path, capsys, args, message):
    assert main(["train", str(tiny_corpus), "--out", str(tmp_path / "run"), *TINY_RUN, *args]) == 1
    assert message in one_error_line(capsys)


def test_new_schedule_without_new_steps_is_refused(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_corpus), "--out", str(run), *TINY_RUN, "--set", "train.max_steps=10"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--from", "best", "--new-schedule", "--quiet"]) == 1
    assert "--new-schedule needs steps to schedule: raise train.max_steps above 10" in one_error_line(capsys)


@pytest.mark.parametrize("text, suggestion", [("lr=0.01", "train.lr=0.01"), ("hidden_size=64", "model.hidden_size=64"),
                                              ("learning_rate=0.1", "train.lr=0.1")])
def test_set_without_a_section_suggests_the_key(text, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean --set {suggestion}"):
        load_config(None, [text])


def test_set_without_a_section_and_a_multiline_value_is_one_line_without_a_hint():
    # hypothesis found '=0\n0': the hint echoed the newline into the message
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, ["lr=0\n0"])
    message = str(excinfo.value)
    assert "\n" not in message and "did you mean" not in message and "section.key=value" in message


def test_top_level_help_shows_each_command_description_whole(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    commands = out.split("Commands:")[1]
    assert "..." not in commands
    for name in ("train", "sample", "eval", "export", "import", "info", "plot", "sweep"):
        assert f"\n  {name} " in commands
    assert "Train on text files or folders, or resume a run." in commands
