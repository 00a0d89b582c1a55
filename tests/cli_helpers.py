"""Helpers shared by the tests of the commands added for issue 5 (export, import,
info, plot, sweep)."""

TINY_RUN = ["--set", "model.hidden_size=16", "--set", "train.batch_size=4", "--set", "train.seq_len=12",
            "--set", "train.max_steps=20", "--set", "train.eval_every=10", "--set", "train.log_every=5",
            "--set", "train.sample_length=0", "--quiet"]


def one_error_line(capsys) -> str:
    """The single `error:` line a failed command printed, with no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
