import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from charlstm import data
from charlstm.data import (Vocab, eval_plan, eval_windows, get_window, make_streams, min_corpus_chars,
                           num_windows, read_corpus, read_corpus_with_vocab, smallest_id_dtype,
                           split_train_val)
from charlstm.errors import CharlstmError


def write(tmp_path, content, name="c.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_vocabulary_is_sorted_distinct_characters_and_round_trips_unicode(tmp_path):
    text = "héllo wörld 🙂 — ΣΩ\n日本語 hello"
    vocab, ids = read_corpus(write(tmp_path, text))
    assert vocab.chars == "".join(sorted(set(text)))
    assert vocab.decode(ids) == text
    assert ids.dtype == np.uint8
    assert np.array_equal(vocab.encode(text), ids)


def test_ids_use_the_smallest_unsigned_dtype():
    assert smallest_id_dtype(2) == np.uint8
    assert smallest_id_dtype(256) == np.uint8
    assert smallest_id_dtype(257) == np.uint16
    assert smallest_id_dtype(65537) == np.uint32


def test_large_vocabulary_gets_uint16(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    vocab, ids = read_corpus(write(tmp_path, text))
    assert vocab.size == 300 and ids.dtype == np.uint16
    assert vocab.decode(ids) == text


def test_chunked_decoding_handles_characters_split_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_BYTES", 7)  # splits multi-byte characters
    text = "aé🙂b" * 50
    vocab, ids = read_corpus(write(tmp_path, text))
    assert vocab.decode(ids) == text


@pytest.mark.parametrize("chunk_bytes", [5, 1 << 24])
def test_undecodable_byte_is_reported_at_its_offset(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk_bytes)
    content = "héllo".encode() * 3 + b"\xff" + b"tail"
    bad_offset = len("héllo".encode()) * 3
    with pytest.raises(CharlstmError, match=f"byte {bad_offset} is not valid utf-8"):
        read_corpus(write(tmp_path, content))


def test_other_encodings_are_read(tmp_path):
    path = write(tmp_path, "café".encode("latin-1"))
    vocab, ids = read_corpus(path, "latin-1")
    assert vocab.decode(ids) == "café"


def test_any_decodable_text_makes_a_vocabulary_even_one_with_a_lone_surrogate(tmp_path):
    # unicode_escape turns the six characters \ud800 into a lone surrogate, which
    # strict UTF-8 and UTF-32 cannot encode
    path = write(tmp_path, b"a\\ud800b\\ud800" * 3)
    vocab, ids = read_corpus(path, "unicode_escape")
    assert vocab.chars == "ab\ud800"
    assert vocab.decode(ids) == "a\ud800b\ud800" * 3
    assert np.array_equal(vocab.encode("\ud800ba"), [2, 1, 0])


def test_a_codec_that_fails_without_naming_a_byte_is_one_line(tmp_path):
    with pytest.raises(CharlstmError, match="cannot be decoded as undefined") as info:
        read_corpus(write(tmp_path, b"text"), "undefined")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"aaaa", "only one distinct character"),
])
def test_unusable_corpora_are_refused(tmp_path, content, fragment):
    with pytest.raises(CharlstmError, match=fragment):
        read_corpus(write(tmp_path, content))


def test_missing_and_directory_corpora_are_refused(tmp_path):
    with pytest.raises(CharlstmError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(CharlstmError, match="is a directory"):
        read_corpus(tmp_path)


def test_encoding_outside_the_vocabulary_lists_the_characters():
    vocab = Vocab("abc ")
    with pytest.raises(CharlstmError, match=r"'x' 'é'"):
        vocab.encode("abxé")


def test_read_with_existing_vocabulary(tmp_path):
    vocab = Vocab("ab\n")
    assert vocab.decode(read_corpus_with_vocab(write(tmp_path, "ab\nba"), "utf-8", vocab)) == "ab\nba"
    with pytest.raises(CharlstmError, match="'z'"):
        read_corpus_with_vocab(write(tmp_path, "abz", "d.txt"), "utf-8", vocab)


def test_validation_is_the_contiguous_tail():
    ids = np.arange(100)
    train, val = split_train_val(ids, 0.1)
    assert np.array_equal(train, ids[:90]) and np.array_equal(val, ids[90:])


def test_windows_walk_contiguous_streams_with_next_character_targets():
    ids = np.arange(1000)
    streams = make_streams(ids, batch_size=4)  # 4 streams of 250
    assert streams.shape == (4, 250)
    assert np.shares_memory(streams, ids)  # a view, not a copy
    seq_len = 10
    assert num_windows(streams, seq_len) == 24  # 249 usable positions
    for k in (0, 1, 23):
        inputs, targets = get_window(streams, k, seq_len)
        assert inputs.shape == targets.shape == (seq_len, 4)
        for b in range(4):
            start = b * 250 + k * seq_len
            assert np.array_equal(inputs[:, b], np.arange(start, start + seq_len))
            assert np.array_equal(targets[:, b], inputs[:, b] + 1)
    # window k+1 continues exactly where window k stopped, in every stream
    first, _ = get_window(streams, 0, seq_len)
    second, _ = get_window(streams, 1, seq_len)
    assert np.array_equal(second[0], first[-1] + 1)


@pytest.mark.parametrize("warmup", [0, 3, 40])
@pytest.mark.parametrize("length, streams, seq_len", [(101, 4, 7), (50, 8, 5), (3, 4, 4), (1000, 3, 64), (2, 1, 1)])
def test_eval_windows_score_every_prediction_exactly_once_after_its_warmup(length, streams, seq_len, warmup):
    ids = np.arange(length)
    read_start, scored_start, read_end = eval_plan(length, streams, warmup)
    assert len(read_start) <= streams and read_end[-1] == length - 1
    seen, read = [], [[] for _ in read_start]
    for inputs, targets, mask in eval_windows(ids, streams, seq_len, warmup):
        assert inputs.shape == targets.shape == mask.shape and inputs.shape[0] <= seq_len
        assert mask.any()  # no window is all padding or warm-up
        assert np.array_equal(targets[mask], inputs[mask] + 1)
        seen.extend(inputs[mask].tolist())
        for n in range(len(read_start)):
            read[n].extend(inputs[:, n].tolist())
    assert sorted(seen) == list(range(length - 1))
    for n, stream in enumerate(read):  # each stream reads its text contiguously from its start
        assert stream[:read_end[n] - read_start[n]] == list(range(read_start[n], read_end[n]))
        assert scored_start[n] - read_start[n] == min(warmup, scored_start[n])


def test_min_corpus_chars_is_exactly_enough():
    for batch, seq_len, val in [(4, 12, 0.1), (32, 64, 0.1), (3, 5, 0.5)]:
        needed = min_corpus_chars(batch, seq_len, val)
        train, valid = split_train_val(np.arange(needed), val)
        assert num_windows(make_streams(train, batch), seq_len) >= 1 and len(valid) >= 2
        train, valid = split_train_val(np.arange(needed - 1), val)
        assert len(make_streams(train, batch)[0]) < seq_len + 1 or len(valid) < 2


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=2).filter(lambda t: len(set(t)) >= 2))
def test_any_unicode_text_round_trips_through_a_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("rt") / "c.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):  # lone surrogates are not valid UTF-8
        with pytest.raises(CharlstmError, match="not valid utf-8"):
            read_corpus(path)
        return
    vocab, ids = read_corpus(path)
    assert vocab.decode(ids) == text
    assert vocab.chars == "".join(sorted(set(text)))
