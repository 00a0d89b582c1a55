"""A folder or several files as the corpus (issue 14): order, separator, per-file
validation tails, bad files, the fingerprint a resume checks, run.json's list."""

import json

import numpy as np
import pytest

from charlstm.cli import main
from charlstm.corpus_files import FILE_SEPARATOR, expand_inputs, load_corpus_files
from charlstm.errors import CharlstmError

from helpers import TINY_RUN, one_error_line, tiny_config

LINE = "the red cat sat on the mat.\n"


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(LINE.replace("cat", "dog") * 60, encoding="utf-8")
    (root / "a.txt").write_text(LINE * 60, encoding="utf-8")
    (root / "sub" / "c.txt").write_text(LINE.replace("mat", "log") * 60, encoding="utf-8")
    (root / ".hidden").write_text("zzz", encoding="utf-8")
    return root


def decode(corpus, ids):
    return corpus.vocab.decode(ids)


def test_files_come_in_sorted_path_order_joined_by_the_separator_with_every_tail_in_validation(folder):
    assert [p.relative_to(folder).as_posix() for p in expand_inputs([folder])] == ["a.txt", "b.txt", "sub/c.txt"]
    corpus, files, skipped = load_corpus_files([folder], tiny_config(**{"data.val_fraction": 0.1}))
    texts = [f.path.read_text(encoding="utf-8") for f in files]
    tails = [t[len(t) - round(len(t) * 0.1):] for t in texts]
    heads = [t[:len(t) - round(len(t) * 0.1)] for t in texts]
    assert decode(corpus, corpus.train_ids) == FILE_SEPARATOR.join(heads)
    assert decode(corpus, corpus.val_ids) == FILE_SEPARATOR.join(tails)
    assert "z" not in corpus.vocab.chars and skipped == []
    assert corpus.num_chars == len(corpus.train_ids) + len(corpus.val_ids)


def test_files_given_in_any_order_give_the_same_corpus(folder):
    config = tiny_config()
    one, _, _ = load_corpus_files([folder / "b.txt", folder / "a.txt"], config)
    two, _, _ = load_corpus_files([folder / "a.txt", folder / "b.txt", folder / "a.txt"], config)
    assert np.array_equal(one.train_ids, two.train_ids) and np.array_equal(one.val_ids, two.val_ids)


def test_a_binary_or_undecodable_file_is_named_in_one_line_or_skipped_and_counted(folder, capsys):
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (folder / "latin.txt").write_bytes(b"caf\xe9\n" * 10)
    with pytest.raises(CharlstmError, match=r"image.png is not a text file .*data.skip_bad_files"):
        load_corpus_files([folder], tiny_config())
    corpus, files, skipped = load_corpus_files([folder], tiny_config(**{"data.skip_bad_files": "true"}))
    assert sorted(p.rsplit("/", 1)[1] for p in skipped) == ["image.png", "latin.txt"] and len(files) == 3
    assert main(["train", str(folder), "--out", str(folder.parent / "run"), *TINY_RUN]) == 1
    assert "image.png is not a text file" in one_error_line(capsys)


@pytest.mark.parametrize("value", ["maybe", "1", "0.5"])
def test_skip_bad_files_must_be_true_or_false(value):
    with pytest.raises(CharlstmError, match="data.skip_bad_files' must be true or false"):
        tiny_config(**{"data.skip_bad_files": value})


def test_an_empty_folder_or_a_missing_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlstmError, match="holds no files"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(CharlstmError, match="missing.txt does not exist"):
        expand_inputs([tmp_path / "missing.txt"])


def test_train_on_a_folder_lists_the_files_and_resume_checks_every_one(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(folder), "--out", str(run), *TINY_RUN, "--set", "train.max_steps=10"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert [f["path"].rsplit("/", 1)[1] for f in info["corpus_files"]] == ["a.txt", "b.txt", "c.txt"]
    assert all(len(f["sha256"]) == 64 and f["chars"] > 0 for f in info["corpus_files"])
    (folder / "sub" / "c.txt").write_text(LINE.replace("mat", "rug") * 60, encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=20", "--quiet"]) == 1
    assert "is not the text" in one_error_line(capsys)
    (folder / "sub" / "c.txt").write_text(LINE.replace("mat", "log") * 60, encoding="utf-8")
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=20", "--quiet"]) == 0


def test_several_files_on_the_command_line_train(folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(folder / "a.txt"), str(folder / "b.txt"), "--out", str(run), *TINY_RUN]) == 0
    info = json.loads((run / "run.json").read_text())
    assert len(info["corpus_files"]) == 2 and info["status"] == "finished"
