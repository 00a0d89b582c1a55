"""Shell completion: Click's, through the console entry point as a shell calls it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def charlstm(env_vars: dict) -> subprocess.CompletedProcess:
    exe = shutil.which("charlstm", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "charlstm.cli"]
    return subprocess.run(command, env={**os.environ, **env_vars}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _charlstm_completion charlstm"),
                                           ("zsh", "#compdef charlstm"),
                                           ("fish", "complete --no-files --command charlstm")])
def test_completion_script_is_printed(shell, marker):
    result = charlstm({"_CHARLSTM_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


@pytest.mark.parametrize("words, cword, expected", [
    ("charlstm ", 1, {"train", "sample", "eval", "export", "import", "info", "plot", "sweep"}),
    ("charlstm sw", 1, {"sweep"}),
    ("charlstm export --to ", 3, {"torch", "keras"}),
])
def test_bash_completes_commands_and_choices(words, cword, expected):
    result = charlstm({"_CHARLSTM_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert result.returncode == 0, result.stderr
    completions = {line.partition(",")[2] for line in result.stdout.splitlines()}
    assert expected <= completions
