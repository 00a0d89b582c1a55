"""Every bad input a user can hand the command line: a non-zero exit, exactly one
`error:` line on stderr naming the problem (no traceback), and every file that was
there before, the good run included, byte for byte unchanged."""

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.interop import to_keras_weights
from helpers import tiny_args, write_tiny_corpus

TINY = tiny_args(**{"train.max_steps": 10, "train.eval_every": 5})
GOOD_CKPT = "good/last.safetensors"


class WritesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def write_dir(path: str) -> str:
    Path(path).mkdir()
    return path


def write(path: str, data: str | bytes) -> str:
    (Path(path).write_bytes if isinstance(data, bytes) else Path(path).write_text)(data)
    return path


def flipped_byte(path: str) -> str:
    data = bytearray(Path(GOOD_CKPT).read_bytes())
    data[len(data) // 2] ^= 0x01
    return write(path, bytes(data))


def newer_format(path: str) -> str:
    tensors, payload = checkpoint.read_checkpoint(Path(GOOD_CKPT))
    checkpoint.write_checkpoint(Path(path), tensors, payload, format_version=99)
    return path


def npz_with_object_arrays(path: str) -> str:
    np.savez(path, weights=np.array([WritesAFileWhenUnpickled(Path("unpickled"))], dtype=object))
    return path


def run_with_corrupt_last(run_dir: str) -> str:
    shutil.copytree("good", run_dir)
    flipped_byte(f"{run_dir}/last.safetensors")
    write(f"{run_dir}/.last.safetensors.tmp-123", b"half of a checkpoint a killed run left")
    return run_dir


def run_whose_last(run_dir: str, change) -> str:
    """A copy of the good run whose `last` is checksum-valid but changed by `change(tensors,
    payload)`, beside the temporary file of a killed write."""
    shutil.copytree("good", run_dir)
    last = Path(run_dir, "last.safetensors")
    tensors, payload = checkpoint.read_checkpoint(last)
    change(tensors, payload)
    checkpoint.write_checkpoint(last, tensors, payload)
    write(f"{run_dir}/.last.safetensors.tmp-123", b"half of a checkpoint a killed run left")
    return run_dir


def exported(path: str) -> str:
    assert main(["export", "--ckpt", GOOD_CKPT, "--to", "torch", path]) == 0
    return path


def keras_with_strings(path: str) -> str:
    """Keras weights (the .npz that earlier versions exported) whose dense kernel is text."""
    assert main(["export", "--ckpt", GOOD_CKPT, "--to", "torch", "k.safetensors"]) == 0
    weights = to_keras_weights(checkpoint.load(GOOD_CKPT).params)
    weights["dense/kernel"] = weights["dense/kernel"].astype(str)
    np.savez(path, **weights)
    Path("k.vocab.json").rename(Path(path).with_suffix(".vocab.json"))
    return path


def sample(ckpt: str, *args: str) -> list[str]:
    return ["sample", "--ckpt", ckpt, "--length", "5", *args]


def train(corpus: str, *args: str) -> list[str]:
    return ["train", corpus, "--out", "new-run", *args]


# (case, arguments given the workspace, words the error line must contain)
CASES = {
    # corpus
    "corpus missing": (lambda: train("missing.txt"), "missing.txt does not exist"),
    # a folder is a corpus of its files (issue 14); this one holds a run's binary checkpoints
    "corpus folder with a binary file": (lambda: train(str(Path("good").resolve())),
                                         "best.safetensors is not a text file (it holds NUL bytes)"),
    "corpus empty": (lambda: train(write("empty.txt", ""), *TINY), "corpus empty.txt is empty"),
    "corpus undecodable": (lambda: train(write("bad.txt", b"caf\xc3\xa9 ok \xff then more"), *TINY),
                           "bad.txt: byte 9 is not valid utf-8"),
    "corpus in a codec that is no text encoding": (lambda: train("tiny.txt", *TINY, "--set", "data.encoding=hex"),
                                                   "'data.encoding' must be a text encoding"),
    "corpus in a codec that cannot decode": (lambda: train("tiny.txt", *TINY, "--set", "data.encoding=undefined"),
                                             "tiny.txt cannot be decoded as undefined"),
    "corpus one character": (lambda: train(write("aaa.txt", "a" * 5000), *TINY), "only one distinct character"),
    "corpus too short": (lambda: train(write("short.txt", "abcdefghij" * 5)),
                         "has 50 characters; batch_size=32 and seq_len=64 need at least 2311"),
    # config
    "yaml syntax error": (lambda: train("tiny.txt", "--config", write("c.yaml", "train:\n  lr: 0.1\n  betas: [0.9\n")),
                          "c.yaml line 4: YAML syntax error"),
    "unknown key in --set": (lambda: train("tiny.txt", "--set", "train.learning_rate=1"), "did you mean 'train.lr'"),
    "unknown key in file": (lambda: train("tiny.txt", "--config", write("k.yaml", "model:\n  hiden_size: 8\n")),
                            "unknown config key 'model.hiden_size' (did you mean 'model.hidden_size'?)"),
    "wrong type": (lambda: train("tiny.txt", "--set", "train.batch_size=abc"),
                   "'train.batch_size' must be an integer, got 'abc'"),
    "zero size": (lambda: train("tiny.txt", "--set", "model.hidden_size=0"), "'model.hidden_size' must be at least 1"),
    "negative size": (lambda: train("tiny.txt", "--set", "train.seq_len=-5"), "'train.seq_len' must be at least 1"),
    "dropout 1": (lambda: train("tiny.txt", "--set", "model.dropout=1"), "'model.dropout' must be in [0.0, 1.0)"),
    "dropout negative": (lambda: train("tiny.txt", "--set", "model.dropout=-0.1"), "'model.dropout' must be in"),
    "weight dropout 1": (lambda: train("tiny.txt", "--set", "model.recurrent_weight_dropout=1"),
                         "'model.recurrent_weight_dropout' must be in [0.0, 1.0)"),
    "lr zero": (lambda: train("tiny.txt", "--set", "train.lr=0"), "'train.lr' must be greater than 0"),
    "lr negative": (lambda: train("tiny.txt", "--set", "train.lr=-0.01"), "'train.lr' must be greater than 0"),
    "malformed --set": (lambda: train("tiny.txt", "--set", "nonsense"), "--set expects section.key=value"),
    "--set without value": (lambda: train("tiny.txt", "--set", "train.lr="), "--set expects section.key=value"),
    "config missing": (lambda: train("tiny.txt", "--config", "nope.yaml"), "config file nope.yaml does not exist"),
    # checkpoint
    "checkpoint missing": (lambda: sample("nope.safetensors"), "checkpoint nope.safetensors does not exist"),
    "checkpoint truncated": (lambda: sample(write("cut.safetensors", Path(GOOD_CKPT).read_bytes()[:3000])),
                             "is truncated or corrupt"),
    "checkpoint byte flipped": (lambda: sample(flipped_byte("flip.safetensors")), "is truncated or corrupt"),
    "not a checkpoint": (lambda: sample(write("notes.safetensors", "just some text, long enough to look")),
                         "notes.safetensors is not a charlstm checkpoint"),
    "newer format": (lambda: sample(newer_format("new.safetensors")), "format version 99, newer than"),
    "npz with object arrays": (lambda: sample(npz_with_object_arrays("pickles.npz")),
                               "pickles.npz is a zip or .npz archive, not a charlstm checkpoint"),
    "resume from a corrupt checkpoint": (lambda: ["train", "--resume", run_with_corrupt_last("copy")],
                                         "checkpoint copy/last.safetensors is truncated or corrupt"),
    "resume from a checkpoint without generator states": (
        lambda: ["train", "--resume", run_whose_last("copy", lambda t, p: p.pop("rng_states")),
                 "--set", "train.max_steps=20"],
        "the checkpoint lacks the optimizer, state or generator data a resume needs"),
    "resume from a checkpoint whose Adam moments would broadcast": (
        lambda: ["train", "--resume", run_whose_last("copy", lambda t, p: t.update({"optimizer.exp_avg": np.zeros(1, np.float32)})),
                 "--set", "train.max_steps=20"],
        "copy/last.safetensors is incomplete or inconsistent (optimizer.exp_avg has shape (1,), expected"),
    "resume of a directory that is no run": (lambda: ["train", "--resume", write_dir("plain")],
                                             "--resume plain: not a charlstm run directory"),
    # run directory
    "--out is an existing run": (lambda: ["train", "tiny.txt", "--out", "good", *TINY],
                                 "good already holds a run (config.yaml); choose another --out or pass --force"),
    "--resume of no run": (lambda: ["train", "--resume", "nowhere"], "--resume nowhere: no such run directory"),
    # export and import never write over an input or, without --force, an existing file
    "export over its own checkpoint": (lambda: ["export", "--ckpt", GOOD_CKPT, "--to", "torch", GOOD_CKPT, "--force"],
                                       "good/last.safetensors is also an input"),
    "export over a file": (lambda: ["export", "--ckpt", GOOD_CKPT, "--to", "keras", write("taken.weights.h5", "mine")],
                           "taken.weights.h5 already exists; choose another name or pass --force"),
    "import over a checkpoint": (lambda: ["import", "--from", "torch", exported("w.safetensors"), "--vocab",
                                          "w.vocab.json", "--out", "good/best.safetensors"],
                                 "good/best.safetensors already exists"),
    "import weights of strings": (lambda: ["import", "--from", "keras", keras_with_strings("s.npz"), "--vocab",
                                           "s.vocab.json", "--out", "new.safetensors"],
                                  "Keras weights entry dense/kernel is <U"),
    "import a vocabulary with a lone surrogate": (
        lambda: ["import", "--from", "torch", exported("w.safetensors"), "--vocab",
                 write("v.json", '{"chars": "ab\\ud800"}'), "--out", "new.safetensors"],
        "vocabulary file v.json holds a lone surrogate"),
    # sampling
    "negative length": (lambda: sample(GOOD_CKPT, "--length", "-5"), "--length must be 0 or more, got -5"),
    "temperature zero": (lambda: sample(GOOD_CKPT, "--temperature", "0"), "use --argmax"),
    "temperature negative": (lambda: sample(GOOD_CKPT, "--temperature", "-1"), "use --argmax"),
    "top-k zero": (lambda: sample(GOOD_CKPT, "--top-k", "0"), "--top-k must be between 1 and the vocabulary size 19"),
    "top-k above vocabulary": (lambda: sample(GOOD_CKPT, "--top-k", "20"), "--top-k must be between 1 and"),
    "zero samples": (lambda: sample(GOOD_CKPT, "--num-samples", "0"), "--num-samples must be 1 or more, got 0"),
    "absurdly many samples": (lambda: sample(GOOD_CKPT, "--num-samples", str(10**18)), "error: out of memory; try"),
    "absurdly large model": (lambda: train("tiny.txt", *TINY, "--set", "model.hidden_size=10000000000"),
                             "error: out of memory; try smaller sizes"),
    "prime outside vocabulary": (lambda: sample(GOOD_CKPT, "--prime", "the Zebra, quoth X"),
                                 "characters not in the model's vocabulary: ',' 'X' 'Z' 'q'"),
    # command line
    "unknown option": (lambda: ["train", "--bogus-flag"], "No such option '--bogus-flag'"),
    "missing --ckpt": (lambda: ["sample"], "Missing option '--ckpt'"),
}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A corpus and a finished run that failing commands must leave alone (made once)."""
    root = tmp_path_factory.mktemp("good")
    corpus = write_tiny_corpus(root)
    assert main(["train", str(corpus), "--out", str(root / "good"), *TINY]) == 0
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(args: list[str], root: Path, capsys, seconds: float = 5.0) -> str:
    """Run `charlstm args` in-process and check the promise every bad input gets: a
    non-zero exit, exactly one `error:` line, no traceback, done within `seconds`
    (a hang is cut off by SIGALRM), and every file under `root` byte for byte as it
    was. Returns the error line."""
    before = snapshot(root)
    capsys.readouterr()

    def hung(signum, frame):
        raise AssertionError(f"charlstm {' '.join(args)} still running after {2 * seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(int(2 * seconds) + 1)
    started = time.perf_counter()
    try:
        status = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status != 0, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert took < seconds, f"took {took:.1f} s"
    assert snapshot(root) == before
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_one_line_and_overwrites_nothing(case, good_run, tmp_path, monkeypatch, capsys):
    workspace = tmp_path / "ws"
    shutil.copytree(good_run, workspace)
    monkeypatch.chdir(workspace)
    make_args, fragment = CASES[case]
    line = assert_refused(make_args(), workspace, capsys, seconds=30)
    assert fragment in line
    assert not (workspace / "unpickled").exists()
