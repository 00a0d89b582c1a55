"""A corpus made of several files: a folder (searched recursively), several files, or both.

Order: the files' sorted paths (as given, folders expanded), so the same inputs always
give the same text. The files are joined with FILE_SEPARATOR (a blank line) between
them. Validation is the tail (`data.val_fraction`) of every file, so every file is
represented in it; training is the heads, each followed by the separator. Reading is
two passes over the files, chunk by chunk, into arrays of the final sizes, so memory
is bounded as for one file of the same total size. The fingerprint a resume checks
covers every file's path and content (see `corpus_fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .data import (MAX_CODE_POINT, Corpus, Vocab, _code_points, _decoded_chunks, check_corpus_size,
                   file_sha256, load_corpus, make_streams, num_windows)
from .errors import CharlstmError

FILE_SEPARATOR = "\n\n"
# Bytes looked at for a NUL, which text files in the supported encodings do not hold
# (UTF-16/32 do, so they are not sniffed).
SNIFF_BYTES = 8192


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    sha256: str
    chars: int


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Every file named or found (recursively, hidden names skipped) under a named
    folder, sorted by path, each once."""
    files = set()
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = [p for p in item.rglob("*") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(item).parts)]
            if not found:
                raise CharlstmError(f"corpus folder {item} holds no files")
            files.update(found)
        elif item.is_file():
            files.add(item)
        else:
            raise CharlstmError(f"corpus {item} does not exist")
    return sorted(files)


def _looks_binary(path: Path, encoding: str) -> bool:
    if encoding.replace("-", "").lower().startswith(("utf16", "utf32")):
        return False
    with open(path, "rb") as f:
        return b"\0" in f.read(SNIFF_BYTES)


def _count_file(path: Path, encoding: str, counts: np.ndarray) -> int:
    """Add the file's character counts to `counts`; its number of characters."""
    total = 0
    for text in _decoded_chunks(path, encoding):
        codes = _code_points(text)
        counts += np.bincount(codes, minlength=MAX_CODE_POINT + 1)
        total += len(codes)
    return total


def read_files(paths: list[Path], encoding: str, skip_bad: bool) -> tuple[list[CorpusFile], np.ndarray, list[str]]:
    """Pass one: the text files with their sizes, the character counts of all of
    them, and what was skipped (binary or undecodable files, when `skip_bad`)."""
    counts = np.zeros(MAX_CODE_POINT + 1, dtype=np.int64)
    kept, skipped = [], []
    for path in paths:
        if _looks_binary(path, encoding):
            problem = f"{path} is not a text file (it holds NUL bytes)"
        else:
            file_counts = np.zeros_like(counts)
            try:
                chars = _count_file(path, encoding, file_counts)
            except CharlstmError as exc:
                problem = str(exc)
            else:
                if chars:
                    counts += file_counts
                    kept.append(CorpusFile(path, file_sha256(path), chars))
                continue
        if not skip_bad:
            raise CharlstmError(f"{problem}; remove it or set data.skip_bad_files=true to skip such files")
        skipped.append(str(path))
    if not kept:
        raise CharlstmError(f"the corpus ({len(paths)} files) holds no text")
    return kept, counts, skipped


def corpus_fingerprint(files: list[CorpusFile]) -> str:
    """One sha256 over every file's name and content hash, in corpus order."""
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item.path.name}\0{item.sha256}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def load_corpus_files(inputs: list[Path], config: Config) -> tuple[Corpus, list[CorpusFile], list[str]]:
    """The Corpus of several files, the files used, and the files skipped."""
    encoding = config.data.encoding
    files, counts, skipped = read_files(expand_inputs(inputs), encoding, config.data.skip_bad_files)
    separator_codes = _code_points(FILE_SEPARATOR)
    if len(files) > 1:
        np.add.at(counts, separator_codes, len(files) - 1)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise CharlstmError("the corpus has only one distinct character; a language model needs at least two")
    vocab = Vocab("".join(map(chr, present)))
    lookup = np.zeros(present[-1] + 1, dtype=vocab.id_dtype)
    lookup[present] = np.arange(len(present))
    separator = lookup[separator_codes]

    val_sizes = [int(round(f.chars * config.data.val_fraction)) for f in files]
    gaps = len(files) - 1  # separators, one between each two files in each split
    train_ids = np.empty(sum(f.chars for f in files) - sum(val_sizes) + gaps * len(separator), vocab.id_dtype)
    val_ids = np.empty(sum(val_sizes) + gaps * len(separator), vocab.id_dtype)
    train_at = val_at = 0
    for index, (item, num_val) in enumerate(zip(files, val_sizes)):
        if index:
            train_ids[train_at:train_at + len(separator)] = separator
            val_ids[val_at:val_at + len(separator)] = separator
            train_at += len(separator)
            val_at += len(separator)
        head_left = item.chars - num_val
        for text in _decoded_chunks(item.path, encoding):
            chunk = lookup[_code_points(text)]
            into_train = chunk[:head_left]
            train_ids[train_at:train_at + len(into_train)] = into_train
            train_at += len(into_train)
            head_left -= len(into_train)
            rest = chunk[len(into_train):]
            val_ids[val_at:val_at + len(rest)] = rest
            val_at += len(rest)
    assert train_at == len(train_ids) and val_at == len(val_ids)
    num_chars = len(train_ids) + len(val_ids)
    label = Path(inputs[0]) if len(inputs) == 1 else Path(f"{len(files)} files")
    check_corpus_size(label, num_chars, config)
    if len(val_ids) < 2:
        raise CharlstmError(f"the corpus's validation split has {len(val_ids)} characters; raise data.val_fraction")
    streams = make_streams(train_ids, config.train.batch_size)
    corpus = Corpus(label, vocab, num_chars, train_ids, val_ids, streams, num_windows(streams, config.train.seq_len))
    return corpus, files, skipped


def load_training_corpus(corpus: Path | Sequence[Path], config: Config, echo) -> tuple[Corpus, dict]:
    """The corpus `charlstm train` was given, and what run.json records of it. One file
    is read once (data.load_corpus: the sha256 is of the bytes trained on); a folder or
    several files as above."""
    inputs = [Path(corpus)] if isinstance(corpus, (str, Path)) else [Path(c) for c in corpus]
    if len(inputs) == 1 and not inputs[0].is_dir():
        data = load_corpus(inputs[0], config)  # one read: the sha256 is of the very bytes trained on
        return data, {"corpus": str(inputs[0].resolve()), "corpus_sha256": data.sha256}
    data, files, skipped = load_corpus_files(inputs, config)
    if skipped:
        echo(f"skipped {len(skipped)} file(s) that are not text in {config.data.encoding} (data.skip_bad_files)")
    return data, {"corpus": str(inputs[0].resolve()), "corpus_inputs": [str(i.resolve()) for i in inputs],
                  "corpus_sha256": corpus_fingerprint(files),
                  "corpus_files": [{"path": str(f.path.resolve()), "sha256": f.sha256, "chars": f.chars}
                                   for f in files],
                  "skipped_files": skipped}
