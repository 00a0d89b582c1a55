import re
from pathlib import Path

import numpy as np
import pytest

from charlstm import checkpoint, files
from charlstm.checkpoint import Checkpoint
from charlstm.config import load_config
from charlstm.data import Vocab
from charlstm.errors import CharlstmError
from charlstm.model import init_params


@pytest.fixture
def saved(tmp_path):
    config = load_config(None, ["model.hidden_size=6", "model.num_layers=2", "train.batch_size=4"])
    vocab = Vocab("\n !abcé🙂")
    params = init_params(vocab.size, 6, 2, 1.0, np.random.default_rng(0), learned_state=True)
    rng = np.random.default_rng(3)
    ckpt = Checkpoint(config, vocab, params,
                      progress={"step": 7, "epoch": 1, "window": 2, "best_val_loss": 1.25},
                      optimizer_step=7,
                      optimizer_moments=(np.arange(params.flat.size, dtype=np.float32),
                                         np.ones(params.flat.size, dtype=np.float32)),
                      carried_state=(np.full((2, 4, 6), 0.5, np.float32), np.full((2, 4, 6), -0.5, np.float32)),
                      rng_states={"sample": rng.bit_generator.state},
                      training_params=np.linspace(-1, 1, params.flat.size, dtype=np.float32))
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, ckpt)
    return path, ckpt


def test_round_trip_restores_everything_exactly(saved):
    path, original = saved
    loaded = checkpoint.load(path)
    assert loaded.config == original.config
    assert loaded.vocab == original.vocab
    assert np.array_equal(loaded.params.flat, original.params.flat)
    assert loaded.params.flat.dtype == np.float32
    assert loaded.progress == original.progress
    assert loaded.optimizer_step == 7
    assert np.array_equal(loaded.training_params, original.training_params)
    for a, b in zip(loaded.optimizer_moments + loaded.carried_state,
                    original.optimizer_moments + original.carried_state):
        assert np.array_equal(a, b)
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded.rng_states["sample"]
    assert restored.random() == np.random.default_rng(3).random()


def test_a_vocabulary_with_a_lone_surrogate_round_trips(saved):
    path, ckpt = saved
    ckpt.vocab = Vocab("\n !abcé\ud800")  # text decoded with unicode_escape may hold one
    checkpoint.save(path, ckpt)
    assert checkpoint.load(path).vocab == ckpt.vocab


def test_write_leaves_no_temporary_files_and_replaces_atomically(saved):
    path, ckpt = saved
    checkpoint.save(path, ckpt)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.safetensors"]


def test_failed_write_keeps_the_previous_file(saved, monkeypatch):
    path, ckpt = saved
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(CharlstmError, match="No space left on device.*previous file is untouched"):
        checkpoint.save(path, ckpt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.safetensors"]


def test_truncated_file_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 100, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(CharlstmError, match="truncated or corrupt"):
            checkpoint.load(path)


V1_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint-v1.safetensors"  # written by charlstm 0.1


def flipped_version_bits(path):
    """The checkpoint at `path` with each bit of its format_version digit flipped in turn."""
    data = path.read_bytes()
    at = data.index(b'"format_version":"') + len(b'"format_version":"')
    for bit in range(8):
        corrupted = bytearray(data)
        corrupted[at] ^= 1 << bit
        yield bytes(corrupted)


@pytest.mark.parametrize("which", ["current", "version 1"])
def test_a_flipped_bit_in_the_format_version_reads_as_corrupt_never_as_newer(saved, tmp_path, which):
    path = saved[0] if which == "current" else V1_CHECKPOINT
    for corrupted in flipped_version_bits(path):
        (tmp_path / "flipped.safetensors").write_bytes(corrupted)
        with pytest.raises(CharlstmError, match="is truncated or corrupt") as info:
            checkpoint.load(tmp_path / "flipped.safetensors")
        assert "newer" not in str(info.value)


def test_version_1_checkpoints_still_load():
    ckpt = checkpoint.load(V1_CHECKPOINT)
    assert ckpt.vocab == Vocab("\n !abcé🙂") and ckpt.config.model.hidden_size == 3
    expected = init_params(ckpt.vocab.size, 3, 2, 1.0, np.random.default_rng(0))
    assert np.array_equal(ckpt.params.flat, expected.flat)
    assert np.array_equal(ckpt.optimizer_moments[0], np.arange(expected.flat.size, dtype=np.float32))
    assert ckpt.carried_state[0].shape == (2, 2, 3) and ckpt.progress["step"] == 7


def test_any_flipped_byte_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    # bytes in the JSON header (metadata included) and in the array data
    positions = list(rng.integers(8, 8 + header_len, 15)) + list(rng.integers(8 + header_len, len(data), 15))
    for position in positions:
        corrupted = bytearray(data)
        corrupted[position] ^= 0x01
        path.write_bytes(bytes(corrupted))
        with pytest.raises(CharlstmError) as info:
            checkpoint.load(path)
        message = str(info.value)
        assert "\n" not in message and "newer" not in message
        if position >= 8 + header_len:  # array bytes: only the digest can tell
            assert "is truncated or corrupt" in message, message
        else:  # header bytes: corrupt, or (a flip in the format's name) not ours
            assert "is truncated or corrupt" in message or "is not a charlstm checkpoint" in message, message


def test_other_files_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all")
    with pytest.raises(CharlstmError, match="not a charlstm checkpoint"):
        checkpoint.load(text)
    import safetensors.numpy
    foreign = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(CharlstmError, match="not a charlstm checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(CharlstmError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.safetensors")
    with pytest.raises(CharlstmError, match="is a directory"):
        checkpoint.load(tmp_path)


def test_newer_format_version_is_refused_with_what_to_do(saved):
    path, _ = saved
    tensors, payload = checkpoint.read_checkpoint(path)
    checkpoint.write_checkpoint(path, tensors, payload, format_version=checkpoint.FORMAT_VERSION + 1)
    with pytest.raises(CharlstmError, match="newer than this charlstm.*upgrade charlstm"):
        checkpoint.load(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # a newer file that is damaged is damaged, not newer
    path.write_bytes(bytes(data))
    with pytest.raises(CharlstmError, match="truncated or corrupt"):
        checkpoint.load(path)


@pytest.mark.parametrize("name, change, problem", [
    ("model.lstm.0.b", lambda a: a[:1].copy(), "has shape (1,), expected (24,)"),
    ("optimizer.exp_avg", lambda a: a[:1].copy(), "has shape (1,), expected"),  # would broadcast
    ("optimizer.exp_avg_sq", lambda a: a[:-1].copy(), "has shape"),
    ("state.h", lambda a: a[:, :1].copy(), "has shape (2, 1, 6), expected (2, 4, 6)"),
    ("state.c", lambda a: a.astype(np.float64), "has dtype float64, expected float32"),
    ("state.c", None, "is missing"),
    ("training.params", lambda a: a[:-1].copy(), "has shape"),  # the weights behind an average
])
def test_every_array_needs_its_exact_shape_and_dtype_even_with_a_valid_checksum(saved, name, change, problem):
    path, _ = saved
    tensors, payload = checkpoint.read_checkpoint(path)
    if change is None:
        del tensors[name]
    else:
        tensors[name] = change(tensors[name])
    checkpoint.write_checkpoint(path, tensors, payload)
    with pytest.raises(CharlstmError, match=re.escape(f"incomplete or inconsistent ({name} {problem}")):
        checkpoint.load(path)
