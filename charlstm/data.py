"""Corpus -> vocabulary -> ids -> parallel streams -> windows for truncated BPTT.

The text is never held as one-hot: ids are stored in the smallest unsigned dtype
that fits the vocabulary, and the model gathers weight rows by id. Encoding is
vectorised per chunk (code points via UTF-32, a lookup table, no Python loop over
characters), so a large file costs about its own size in ids.
"""

from __future__ import annotations

import codecs
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import CharlstmError
from .files import existing_file

MAX_CODE_POINT = 0x10FFFF
# File bytes per decoding step. A chunk's temporaries are several times its size (the
# decoded str, its UTF-32 code points, bincount's intp copy); measured on a 200 MB
# file: 1 MiB chunks read at 140 MB/s with a 260 MB peak, 16 MiB at 74 MB/s and 400 MB.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Vocab:
    """Sorted distinct characters; a character's id is its index in `chars`."""

    chars: str

    def __post_init__(self):
        codes = _code_points(self.chars)
        lookup = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int64)
        lookup[codes] = np.arange(len(codes))
        object.__setattr__(self, "_lookup", lookup)

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def id_dtype(self) -> np.dtype:
        return smallest_id_dtype(self.size)

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`; raises CharlstmError listing characters outside the vocabulary."""
        codes = _code_points(text)
        ids = self._lookup[np.minimum(codes, len(self._lookup) - 1)]
        unknown = (ids < 0) | (codes >= len(self._lookup))
        if unknown.any():
            missing = sorted(set(chr(c) for c in codes[unknown]))
            raise CharlstmError(
                "characters not in the model's vocabulary: "
                + " ".join(repr(ch) for ch in missing))
        return ids.astype(self.id_dtype)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).ravel())


def smallest_id_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("vocabulary larger than Unicode")


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _file_chunks(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_once(path: Path) -> tuple[list[bytes], str]:
    """The file's bytes (in chunks) and their sha256, from one read: a file that
    changes while it is read is then read as one consistent text, and the digest is
    of exactly the bytes trained on."""
    digest = hashlib.sha256()
    chunks = []
    for chunk in _file_chunks(path):
        digest.update(chunk)
        chunks.append(chunk)
    return chunks, digest.hexdigest()


def _decoded_chunks(path: Path, encoding: str, chunks=None) -> Iterator[str]:
    """Decode the file (or its `chunks`, already read) chunk by chunk; a bad byte
    raises naming its file offset."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    source = iter(_file_chunks(path) if chunks is None else chunks)
    while True:
        chunk = next(source, b"")
        final = not chunk
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            at = offset - pending + exc.start
            raise CharlstmError(
                f"{path}: byte {at} is not valid {encoding} ({exc.reason}); "
                "fix the file or set data.encoding") from None
        except UnicodeError as exc:  # some codecs (e.g. undefined, idna) name no byte
            raise CharlstmError(f"{path} cannot be decoded as {encoding} ({exc}); "
                                "fix the file or set data.encoding") from None
        offset += len(chunk)
        if text:
            yield text
        if final:
            return


def read_corpus(path: str | Path, encoding: str = "utf-8") -> tuple[Vocab, np.ndarray]:
    """Read a text file into (vocabulary, ids)."""
    vocab, ids, _ = read_corpus_once(path, encoding)
    return vocab, ids


def read_corpus_once(path: str | Path, encoding: str = "utf-8") -> tuple[Vocab, np.ndarray, str]:
    """(vocabulary, ids, sha256 of the bytes) from one read of the file; two passes
    over the bytes in memory: count characters, then map."""
    path = existing_file(path, "corpus")
    chunks, sha256 = read_once(path)
    counts = np.zeros(MAX_CODE_POINT + 1, dtype=np.int64)
    for text in _decoded_chunks(path, encoding, chunks):
        counts += np.bincount(_code_points(text), minlength=MAX_CODE_POINT + 1)
    total = int(counts.sum())
    if total == 0:
        raise CharlstmError(f"corpus {path} is empty")
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise CharlstmError(
            f"corpus {path} has only one distinct character; a language model needs at least two")
    vocab = Vocab("".join(map(chr, present)))
    lookup = np.zeros(present[-1] + 1, dtype=vocab.id_dtype)
    lookup[present] = np.arange(len(present))
    ids = np.empty(total, dtype=vocab.id_dtype)
    start = 0
    for text in _decoded_chunks(path, encoding, chunks):
        chunk_ids = lookup[_code_points(text)]
        ids[start:start + len(chunk_ids)] = chunk_ids
        start += len(chunk_ids)
    return vocab, ids, sha256


def read_corpus_with_vocab(path: str | Path, encoding: str, vocab: Vocab) -> np.ndarray:
    """Ids of a text file under an existing vocabulary (e.g. a checkpoint's)."""
    path = existing_file(path, "text file")
    try:
        parts = [vocab.encode(text) for text in _decoded_chunks(path, encoding)]
    except CharlstmError as exc:
        raise CharlstmError(f"{path}: {exc}") from None
    return np.concatenate(parts) if parts else np.empty(0, dtype=vocab.id_dtype)


def file_sha256(path: Path) -> str:
    """Fingerprint of the corpus, so a resume can tell it is training on the same text."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def split_train_val(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The contiguous tail (`val_fraction` of the ids) is held out for validation."""
    num_val = int(round(len(ids) * val_fraction))
    return ids[:len(ids) - num_val], ids[len(ids) - num_val:]


def min_corpus_chars(batch_size: int, seq_len: int, val_fraction: float) -> int:
    """Smallest corpus giving one training window and at least two validation characters."""
    train_needed = batch_size * (seq_len + 1)

    def enough(total: int) -> bool:
        num_val = int(round(total * val_fraction))
        return total - num_val >= train_needed and num_val >= 2

    # round(total * val_fraction) >= 2 needs total >= 1.5 / val_fraction: start there,
    # so that a tiny val_fraction (1e-300) costs no loop of 1e300 steps.
    total = max(train_needed, int(train_needed / (1.0 - val_fraction)) - 2, math.ceil(1.5 / val_fraction) - 2)
    while not enough(total):  # both parts grow by at most one per character
        total += 1
    return total


def make_streams(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """(B, L) view: B contiguous streams of equal length; the ragged end is dropped."""
    length = len(ids) // batch_size
    return ids[:batch_size * length].reshape(batch_size, length)


def num_windows(streams: np.ndarray, seq_len: int) -> int:
    """Windows per epoch: each needs seq_len inputs plus one more id as the last target."""
    return (streams.shape[1] - 1) // seq_len


def get_window(streams: np.ndarray, index: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character targets of window `index`, time-major (T, B) intp arrays."""
    start = index * seq_len
    block = streams[:, start:start + seq_len + 1].T.astype(np.intp)
    return block[:-1], block[1:]


def eval_windows(ids: np.ndarray, num_streams: int, seq_len: int, warmup: int = 0
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Windows that score every next-character prediction in `ids` exactly once.

    The predictions are cut into `num_streams` contiguous segments (fewer if there are
    fewer predictions), read side by side with state carried. Stream n starts reading
    up to `warmup` characters before its segment, so that each segment is scored with
    context; those warm-up predictions, and the padding (id 0) after a stream's end,
    are masked out. Yields (inputs, targets, mask), each (T', N) with T' <= seq_len.
    Only one window is materialised at a time (as intp), so a large text costs no
    padded copy of itself. See `eval_plan` for the segment bounds.
    """
    read_start, scored_start, read_end = eval_plan(len(ids), num_streams, warmup)
    lengths = read_end - read_start
    for start in range(0, int(lengths.max()), seq_len):
        width = min(seq_len, int(lengths.max()) - start)
        offsets = start + np.arange(width + 1)
        positions = read_start[:, None] + offsets  # (N, width + 1)
        block = np.zeros(positions.shape, dtype=np.intp)
        inside = positions < len(ids)
        block[inside] = ids[positions[inside]]
        scored = (offsets[None, :-1] < lengths[:, None]) & (positions[:, :-1] >= scored_start[:, None])
        yield block[:, :-1].T, block[:, 1:].T, scored.T


def eval_plan(num_ids: int, num_streams: int, warmup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluation stream: where it starts reading, where its scored segment starts,
    and where it ends (exclusive), as positions of predictions in a text of `num_ids`
    ids. The segments tile all num_ids - 1 predictions; `warmup` bounds the reading
    before each segment (the first segment has none: it starts at the text's start)."""
    num_predictions = num_ids - 1
    segment = -(-num_predictions // num_streams)
    scored_start = np.arange(0, num_predictions, segment)
    read_end = np.minimum(scored_start + segment, num_predictions)
    return np.maximum(scored_start - warmup, 0), scored_start, read_end


@dataclass
class Corpus:
    """The corpus as the training loop sees it: vocabulary, split ids and training streams."""

    path: Path
    vocab: Vocab
    num_chars: int
    train_ids: np.ndarray
    val_ids: np.ndarray
    streams: np.ndarray  # (B, chars per stream)
    windows_per_epoch: int
    sha256: str = ""  # of the bytes read (read_once)


def load_corpus(path: Path, config: Config) -> Corpus:
    vocab, ids, sha256 = read_corpus_once(path, config.data.encoding)
    check_corpus_size(path, len(ids), config)
    train_ids, val_ids = split_train_val(ids, config.data.val_fraction)
    streams = make_streams(train_ids, config.train.batch_size)
    return Corpus(path, vocab, len(ids), train_ids, val_ids, streams,
                  num_windows(streams, config.train.seq_len), sha256)


def check_corpus_size(corpus: Path, num_chars: int, config: Config) -> None:
    train_cfg = config.train
    needed = min_corpus_chars(train_cfg.batch_size, train_cfg.seq_len, config.data.val_fraction)
    if num_chars < needed:
        for_training = min_corpus_chars(train_cfg.batch_size, train_cfg.seq_len, 0.5)
        if needed > for_training:  # validation, not training, is what the text is too short for
            raise CharlstmError(
                f"corpus {corpus} has {num_chars} characters; data.val_fraction={config.data.val_fraction:g} "
                f"needs at least {needed:.3g} for two validation characters (raise data.val_fraction)")
        raise CharlstmError(
            f"corpus {corpus} has {num_chars} characters; batch_size={train_cfg.batch_size} and "
            f"seq_len={train_cfg.seq_len} need at least {needed} (lower train.batch_size or train.seq_len)")
