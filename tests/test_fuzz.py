"""The fuzz suite: hostile checkpoints, YAML, JSON and paths, each handed to every
command that reads it. A shared checkpoint is untrusted input: its sha256 proves it is
whole, not that its writer was friendly, so every hostile checkpoint here is written
with a valid digest. Each case must end as test_bad_input promises: a non-zero exit,
exactly one `error:` line, no traceback, within seconds, nothing on disk changed.

Commands run in-process (main), so several hundred cases take seconds; the few
that need a real process (stdin, a lock held by another process) run one.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from charlstm import checkpoint
from charlstm.cli import main
from charlstm.config import Config, config_to_dict
from charlstm.model import param_shapes
from charlstm.state import RNG_NAMES
from charlstm.parsing import MAX_DEPTH
from helpers import write_tiny_corpus
from test_bad_input import TINY, assert_refused

DEEP = 5000  # far past Python's recursion limit
DEEP_JSON = "[" * DEEP + "]" * DEEP
PLACEHOLDER = "__HOSTILE__"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A corpus and a finished tiny run; its `last` is what the hostile checkpoints
    are made from."""
    root = tmp_path_factory.mktemp("fuzz")
    write_tiny_corpus(root)
    assert main(["train", str(root / "tiny.txt"), "--out", str(root / "good"), *TINY]) == 0
    return root


def hostile_checkpoint(path: Path, tensors: dict, payload: dict | str, *, version: str = "2",
                       metadata: dict | None = None) -> None:
    """A checkpoint of any payload text and metadata, its sha256 recomputed so that it
    passes the integrity check. `payload` as a dict may hold PLACEHOLDER as a value,
    replaced by DEEP_JSON in the text (json.dumps itself cannot nest that deep)."""
    text = payload if isinstance(payload, str) else json.dumps(payload).replace(f'"{PLACEHOLDER}"', DEEP_JSON)
    tensors = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    fields = {"format": checkpoint.FORMAT_NAME, "format_version": version, "payload": text,
              "sha256": checkpoint._digest(version, text, tensors)}
    data = safetensors.numpy.save(tensors, metadata=fields)
    if metadata:  # values safetensors would not write (non-strings): edit the header itself
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        header["__metadata__"].update(metadata)
        raw = json.dumps(header).replace(f'"{PLACEHOLDER}"', DEEP_JSON).encode()
        raw += b" " * (-len(raw) % 8)
        data = len(raw).to_bytes(8, "little") + raw + data[8 + size:]
    path.write_bytes(data)


def commands(ckpt: str, run_copy: str) -> dict[str, list[str]]:
    """Every command that reads a checkpoint; `--resume` with room to train, so that a
    hostile checkpoint accepted by mistake would change the run and fail the test."""
    return {
        "sample": ["sample", "--ckpt", ckpt, "--length", "5"],
        "info": ["info", "--ckpt", ckpt, "--json"],
        "eval": ["eval", "--ckpt", ckpt, "tiny.txt"],
        "export": ["export", "--ckpt", ckpt, "--to", "torch", "out.safetensors"],
        "resume": ["train", "--resume", run_copy, "--set", "train.max_steps=20", "--quiet"],
    }


# ---- the mutations: (name, change(tensors, payload) -> payload or None) ----

WRONG_TYPES = [None, True, "x", [1], {"a": 1}, PLACEHOLDER]


def _set(path: tuple, value):
    def change(tensors, payload):
        target = payload
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path: tuple):
    def change(tensors, payload):
        target = payload
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def _vocab(make):
    def change(tensors, payload):
        payload["vocab"] = make(payload["vocab"])
    return change


def payload_mutations() -> dict:
    out = {}
    for section, values in config_to_dict(Config()).items():
        for key, default in values.items():
            for value in WRONG_TYPES:
                if type(value) is type(default):
                    continue  # e.g. True for a flag: the right type
                out[f"config.{section}.{key}={value!r:.12}"] = _set(("config", section, key), value)
        out[f"config.{section}=7"] = _set(("config", section), 7)
    out["config.unknown section"] = _set(("config", "optimizer"), {"lr": 1})
    out["config.model.hidden_size=8 (arrays of 16)"] = _set(("config", "model", "hidden_size"), 8)
    out["config.model.num_layers=3"] = _set(("config", "model", "num_layers"), 3)
    out["config.train.dtype=float64 (arrays float32)"] = _set(("config", "train", "dtype"), "float64")
    out["config.data.encoding=rot13"] = _set(("config", "data", "encoding"), "rot13")
    for value in (None, 7, [], ["a", "b"], "", "a", PLACEHOLDER):
        out[f"vocab={value!r:.12}"] = _set(("vocab",), value)
    out["vocab repeats a character"] = _vocab(lambda chars: chars[0] + chars[:-1])
    out["vocab one short"] = _vocab(lambda chars: chars[:-1])
    out["vocab one more"] = _vocab(lambda chars: chars + "\u00e9")
    out["vocab as a list"] = _vocab(list)
    for key in ("step", "epoch", "window", "schedule_steps"):
        for value in (None, -1, 1.5, True, "3", 2**60, [], PLACEHOLDER):
            out[f"progress.{key}={value!r:.12}"] = _set(("progress", key), value)
    for key in ("best_val_loss", "elapsed_s"):
        for value in (-1.0, "x", [], {}, "inf", PLACEHOLDER):
            out[f"progress.{key}={value!r:.12}"] = _set(("progress", key), value)
    for value in ([], 7, {"steps": -1, "loss_sum": 0.0, "seconds": 0.0},
                  {"steps": 1, "loss_sum": "x", "seconds": 0.0}, {"steps": 1}, PLACEHOLDER):
        out[f"progress.since_log={value!r:.12}"] = _set(("progress", "since_log"), value)
    for value in WRONG_TYPES + [-1, 1.5, 2**60]:
        if not isinstance(value, dict):  # progress is a mapping whose keys are all optional
            out[f"progress={value!r:.12}"] = _set(("progress",), value)
        out[f"optimizer_step={value!r:.12}"] = _set(("optimizer_step",), value)
        out[f"rng_states={value!r:.12}"] = _set(("rng_states",), value)
        if not isinstance(value, str) or value == PLACEHOLDER:
            out[f"charlstm_version={value!r:.12}"] = _set(("charlstm_version",), value)
    for name in RNG_NAMES:
        for value in (None, 7, {}, {"bit_generator": "MT19937", "state": {}},
                      {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}, "has_uint32": 0, "uinteger": 0},
                      {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0, "uinteger": 0},
                      PLACEHOLDER):
            out[f"rng_states.{name}={value!r:.12}"] = _set(("rng_states", name), value)
    for key in ("config", "vocab"):
        out[f"no {key}"] = _delete((key,))
    return out


def array_mutations() -> dict:
    """Every array of the good run's checkpoint (its names: a 2-layer model with a
    learned initial state, Adam's moments, the carried state) replaced or removed."""
    names = [f"model.{name}" for name in param_shapes(2, 16, 2, True)]
    names += ["optimizer.exp_avg", "optimizer.exp_avg_sq", "state.h", "state.c"]
    variants = {
        "float64": lambda a: a.astype(np.float64), "float16": lambda a: a.astype(np.float16),
        "int32": lambda a: a.astype(np.int32), "bool": lambda a: a != 0,
        "one more axis": lambda a: a[None], "one row short": lambda a: a[:-1],
        "empty": lambda a: np.zeros((0,), a.dtype), "NaN": lambda a: np.full_like(a, np.nan),
        "one infinity": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.inf, a).astype(a.dtype),
    }
    out = {}
    for name in names:
        out[f"{name} missing"] = lambda t, p, name=name: t.pop(name)
        for variant, make in variants.items():
            out[f"{name} {variant}"] = lambda t, p, name=name, make=make: t.__setitem__(name, make(t[name]))
    out["an array no checkpoint holds"] = lambda t, p: t.__setitem__("extra", np.zeros(3, np.float32))
    out["negative second moments"] = lambda t, p: t.__setitem__("optimizer.exp_avg_sq",
                                                                 -np.ones_like(t["optimizer.exp_avg_sq"]))
    return out


MUTATIONS = {**payload_mutations(), **array_mutations()}
METADATA = {
    "format_version=x": {"format_version": "x"},
    "format_version=-1": {"format_version": "-1"},
    "format_version=0": {"format_version": "0"},
    "format_version huge": {"format_version": "9" * 5000},
    "format_version list": {"format_version": [2]},
    "format_version null": {"format_version": None},
    "format_version deep": {"format_version": PLACEHOLDER},
    "payload not text": {"payload": {"config": {}}},
    "payload deep": {"payload": PLACEHOLDER},
    "sha256 list": {"sha256": []},
    "metadata deep": {"extra": PLACEHOLDER},
}


def run_all_commands(ckpt_bytes: bytes, good: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Each command on the hostile checkpoint (and a run whose `last` it is)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(good / "tiny.txt", ws / "tiny.txt")
    shutil.copytree(good / "good", ws / "run")
    (ws / "hostile.safetensors").write_bytes(ckpt_bytes)
    (ws / "run" / "last.safetensors").write_bytes(ckpt_bytes)
    monkeypatch.chdir(ws)
    for args in commands("hostile.safetensors", "run").values():
        assert_refused(args, ws, capsys)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_hostile_checkpoint_fields(mutation, good, tmp_path, monkeypatch, capsys):
    tensors, payload = checkpoint.read_checkpoint(good / "good" / "last.safetensors")
    MUTATIONS[mutation](tensors, payload)
    hostile_checkpoint(tmp_path / "h.safetensors", tensors, payload)
    run_all_commands((tmp_path / "h.safetensors").read_bytes(), good, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("case", METADATA)
def test_hostile_checkpoint_metadata(case, good, tmp_path, monkeypatch, capsys):
    tensors, payload = checkpoint.read_checkpoint(good / "good" / "last.safetensors")
    hostile_checkpoint(tmp_path / "h.safetensors", tensors, payload, metadata=METADATA[case])
    run_all_commands((tmp_path / "h.safetensors").read_bytes(), good, tmp_path, monkeypatch, capsys)


# ---- hostile YAML and JSON: configs, --set values, sweep files, vocabulary files ----

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
HOSTILE_YAML = {
    "deep flow list": "train:\n  lr: " + DEEP_JSON + "\n",
    "deep flow mapping": "{a: " * DEEP + "1" + "}" * DEEP + "\n",
    "deep block nesting": "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 10)),
    "billion laughs": BILLION_LAUGHS,
    "alias in a value": "model: &m {hidden_size: 8}\ntrain: *m\n",
    "recursive alias": "train: &t\n  lr: *t\n",
    "duplicate section": "model:\n  hidden_size: 8\nmodel:\n  hidden_size: 16\n",
    "duplicate key": "train:\n  lr: 0.1\n  lr: 0.2\n",
    "date": "train:\n  lr: 2024-01-01\n",
    "binary": "train:\n  lr: !!binary aGVsbG8=\n",
    "set": "train:\n  betas: !!set {0.9, 0.99}\n",
    "python object": "train:\n  lr: !!python/object/apply:os.system ['touch pwned']\n",
    "integer of 5000 digits": "train:\n  batch_size: 1" + "0" * 5000 + "\n",
    "NaN": "train:\n  lr: .nan\n",
    "infinity": "train:\n  lr: .inf\n",
    "1e400": "train:\n  lr: 1e400\n",
    "tab indentation": "train:\n\tlr: 0.1\n",
    "list document": "[1, 2, 3]\n",
    "NUL byte": "train:\n  lr: 0.1\x00\n",
    "lone surrogate escape": 'train:\n  lr: "\\ud800"\n',
}
HOSTILE_BYTES = {
    "UTF-16 without BOM": "train:\n  lr: 0.1\n".encode("utf-16-le"),
    "not UTF-8": b"train:\n  lr: \xff\xfe\n",
}


def _write_case(ws: Path, name: str, text) -> Path:
    path = ws / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


@pytest.fixture
def workspace(good, tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(good / "tiny.txt", ws / "tiny.txt")
    shutil.copytree(good / "good", ws / "run")
    monkeypatch.chdir(ws)
    return ws


@pytest.mark.parametrize("case", [*HOSTILE_YAML, *HOSTILE_BYTES])
def test_hostile_yaml_everywhere(case, workspace, capsys):
    text = HOSTILE_YAML.get(case, HOSTILE_BYTES.get(case))
    config = _write_case(workspace, "c.yaml", text)
    assert_refused(["train", "tiny.txt", "--config", str(config), "--out", "new", *TINY], workspace, capsys)
    sweep = _write_case(workspace, "s.yaml", text)
    assert_refused(["sweep", str(sweep)], workspace, capsys)
    if isinstance(text, str) and "\n" in text.strip():  # a document: as the value of one key
        value = text.replace("\n", " ") if text.startswith("{") else text.split("\n", 1)[1].strip()
    else:
        value = text if isinstance(text, str) else text.decode("latin-1")
    if case not in ("tab indentation", "list document"):  # these are plain strings as a value
        assert_refused(["train", "tiny.txt", "--out", "new", *TINY, "--set", f"train.lr={value}"], workspace, capsys)


SWEEPS = {
    "grid value a date": "corpus: tiny.txt\ngrid:\n  train.lr: [2024-01-01]\n",
    "grid value bytes": "corpus: tiny.txt\ngrid:\n  train.lr: [!!binary aGVsbG8=]\n",
    "grid deep": "corpus: tiny.txt\ngrid:\n  train.lr: " + DEEP_JSON + "\n",
    "grid aliases": "corpus: tiny.txt\ngrid:\n  train.lr: &l [0.1]\n  train.eps: *l\n",
    "out is a file": "corpus: tiny.txt\nout: tiny.txt\ngrid:\n  train.lr: [0.1]\n",
    "out under a file": "corpus: tiny.txt\nout: tiny.txt/runs\ngrid:\n  train.lr: [0.1]\n",
}


@pytest.mark.parametrize("case", SWEEPS)
def test_hostile_sweep_files(case, workspace, capsys):
    sweep = _write_case(workspace, "s.yaml", SWEEPS[case])
    assert_refused(["sweep", str(sweep)], workspace, capsys)


VOCABS = {
    "deep": DEEP_JSON,
    "deep object": '{"chars": ' * DEEP + "1" + "}" * DEEP,
    "NaN": '{"chars": NaN}',
    "number of 5000 digits": "1" * 5000,
    "not UTF-8": b'{"chars": "\xff\xfe"}',
    "int": "7",
    "repeated characters": '{"chars": "aab"}',
    "not JSON": "chars: ab",
}


@pytest.mark.parametrize("case", VOCABS)
def test_hostile_vocabulary_files(case, workspace, capsys):
    assert main(["export", "--ckpt", "run/last.safetensors", "--to", "torch", "w.safetensors"]) == 0
    vocab = _write_case(workspace, "v.json", VOCABS[case])
    assert_refused(["import", "--from", "torch", "w.safetensors", "--vocab", str(vocab), "--out", "new.safetensors"],
                   workspace, capsys)


# ---- hostile paths: FIFOs, devices, places no directory can be made ----

@pytest.fixture
def fifo(workspace) -> str:
    os.mkfifo(workspace / "fifo")  # nobody ever writes to it: reading it would block forever
    return "fifo"


def fifo_cases(fifo: str) -> dict[str, list[str]]:
    return {
        "corpus": ["train", fifo, "--out", "new", *TINY],
        "config": ["train", "tiny.txt", "--config", fifo, "--out", "new", *TINY],
        "checkpoint": ["sample", "--ckpt", fifo],
        "eval text": ["eval", "--ckpt", "run/last.safetensors", fifo],
        "sweep file": ["sweep", fifo],
        "vocabulary": ["import", "--from", "torch", "run/last.safetensors", "--vocab", fifo, "--out", "n.safetensors"],
        "resume corpus": ["train", fifo, "--resume", "run", "--set", "train.max_steps=20", "--quiet"],
    }


@pytest.mark.parametrize("case", list(fifo_cases("fifo")))
def test_fifo_inputs_are_refused_not_waited_on(case, fifo, workspace, capsys):
    line = assert_refused(fifo_cases(fifo)[case], workspace, capsys)
    assert "not a regular file" in line


DEVICE_CASES = {
    "/dev/zero as corpus": ["train", "/dev/zero", "--out", "new", *TINY],
    "/dev/null as checkpoint": ["sample", "--ckpt", "/dev/null"],
    "/dev/zero as config": ["train", "tiny.txt", "--config", "/dev/zero", "--out", "new", *TINY],
    "/dev/urandom as eval text": ["eval", "--ckpt", "run/last.safetensors", "/dev/urandom"],
    "--out under a file": ["train", "tiny.txt", "--out", "tiny.txt/run", *TINY],
    "--out under /proc": ["train", "tiny.txt", "--out", "/proc/charlstm-run", *TINY],
    "--out under /sys": ["train", "tiny.txt", "--out", "/sys/charlstm-run", *TINY],
}


@pytest.mark.parametrize("case", DEVICE_CASES)
def test_devices_and_impossible_places(case, workspace, capsys):
    assert_refused(DEVICE_CASES[case], workspace, capsys)


@pytest.mark.parametrize("force", [False, True])
def test_run_file_that_is_a_directory(force, workspace, capsys):
    (workspace / "run" / "metrics.jsonl").unlink()
    (workspace / "run" / "metrics.jsonl").mkdir()
    args = ["train", "tiny.txt", "--out", "run", "--force", *TINY] if force else \
        ["train", "--resume", "run", "--set", "train.max_steps=20", "--quiet"]
    assert "metrics.jsonl is not a regular file" in assert_refused(args, workspace, capsys)


def test_stdin_pipe_as_corpus_is_one_line(workspace):
    done = subprocess.run([sys.executable, "-m", "charlstm.cli", "train", "/dev/stdin", "--out", "new", *TINY],
                          input=b"some text\n" * 1000, capture_output=True, timeout=60, cwd=workspace)
    err = done.stderr.decode()
    assert done.returncode != 0 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (workspace / "new").exists()


def test_case_count():
    """The size of the suite, as the README reports it: each checkpoint case runs five
    commands."""
    per_checkpoint = len(commands("c", "r"))
    total = ((len(MUTATIONS) + len(METADATA)) * per_checkpoint
             + len({**HOSTILE_YAML, **HOSTILE_BYTES}) * 3 + len(SWEEPS) + len(VOCABS)
             + len(fifo_cases("f")) + len(DEVICE_CASES) + 2 + 1 + len(EXTREME_NUMBERS) + 4 + 1 + 3)
    print(f"fuzz cases: {total}")
    assert total >= 500


# ---- numbers at the edge: refused, or one line (training stops as diverged), never a NumPy warning ----

EXTREME_NUMBERS = {
    "lr 1e300": (["--set", "train.lr=1e300"], "diverged"),
    "eps 1e-50": (["--set", "train.eps=1e-50", "--set", "train.lr=1e30"], "diverged"),
    "forget_bias 1e308": (["--set", "model.forget_bias=1e308"], "'model.forget_bias' must be in [-100.0, 100.0]"),
    "weight_decay 1e300": (["--set", "train.weight_decay=1e300"], "diverged"),
    "val_fraction 1e-300": (["--set", "data.val_fraction=1e-300"], "raise data.val_fraction"),
    "val_fraction 1e-7": (["--set", "data.val_fraction=1e-7"], "raise data.val_fraction"),
}


@pytest.mark.parametrize("case", EXTREME_NUMBERS)
def test_extreme_numbers_give_one_line_and_no_warning(case, workspace, capsys):
    import time
    import warnings

    sets, fragment = EXTREME_NUMBERS[case]
    capsys.readouterr()
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(["train", "tiny.txt", "--out", "new", *TINY, *sets])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert time.perf_counter() - started < 10
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("args", [["--temperature", "1e-310"], ["--temperature", "nan"], ["--temperature", "1e308"],
                                  ["--seed", "-1"]])
def test_sampling_numbers_out_of_range(args, workspace, capsys):
    assert_refused(["sample", "--ckpt", "run/last.safetensors", *args], workspace, capsys)


def test_output_to_a_full_device_is_one_line(workspace):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "charlstm.cli", "info", "--ckpt", "run/last.safetensors"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, cwd=workspace)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2"])
def test_import_of_dtypes_numpy_lacks(dtype, workspace, capsys):
    header = json.dumps({"lstm.weight_ih_l0": {"dtype": dtype, "shape": [2], "data_offsets": [0, 4 if dtype == "BF16" else 2]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    (workspace / "w.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    (workspace / "v.json").write_text('{"chars": "ab"}')
    line = assert_refused(["import", "--from", "torch", "w.safetensors", "--vocab", "v.json", "--out", "n.safetensors"],
                          workspace, capsys)
    assert "convert them to float32" in line or "not a readable safetensors" in line
