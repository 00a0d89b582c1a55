"""`charlstm sample`'s options from issue 14: --top-p, --beam, --stop, --prime-file,
--json, --ckpt RUN_DIR, and the combinations refused rather than ignored."""

import json

import pytest

from charlstm.cli import main
from charlstm.sample_command import StopCollector, read_stop

from helpers import one_error_line


def sample_json(capsys, ckpt, *args):
    assert main(["sample", "--ckpt", str(ckpt), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_gives_each_sample_with_its_length_log_probability_and_settings(small_model, capsys):
    report = sample_json(capsys, small_model, "--length", "40", "--seed", "2", "--num-samples", "3",
                         "--top-p", "0.9", "--prime", "the ")
    assert report["settings"]["top_p"] == 0.9 and report["settings"]["num_samples"] == 3
    assert report["settings"]["prime"] == "the " and report["settings"]["seed"] == 2
    assert len(report["samples"]) == 3
    for item in report["samples"]:
        assert item["length"] == len(item["text"]) == 40 and item["log_prob"] < 0 and item["stopped_by"] is None


def test_beam_prints_a_text_at_least_as_likely_as_argmax(small_model, capsys):
    greedy = sample_json(capsys, small_model, "--length", "60", "--argmax", "--prime", "the ")["samples"][0]
    beam1 = sample_json(capsys, small_model, "--length", "60", "--beam", "1", "--prime", "the ")["samples"][0]
    beam5 = sample_json(capsys, small_model, "--length", "60", "--beam", "5", "--prime", "the ")["samples"][0]
    assert beam1["text"] == greedy["text"] and beam1["log_prob"] == pytest.approx(greedy["log_prob"], abs=1e-3)
    assert beam5["log_prob"] >= greedy["log_prob"] - 1e-6
    assert main(["sample", "--ckpt", str(small_model), "--length", "60", "--beam", "5", "--prime", "the "]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("---- beam 5: log-probability ") and beam5["text"].split("\n")[0] in lines[0]


def test_a_stop_string_ends_generation_exactly_after_it(small_model, capsys):
    free = sample_json(capsys, small_model, "--length", "200", "--seed", "1")["samples"][0]["text"]
    assert "." in free
    report = sample_json(capsys, small_model, "--length", "200", "--seed", "1", "--stop", ".")
    stopped = report["samples"][0]
    assert stopped["text"] == free[:free.index(".") + 1] and stopped["stopped_by"] == "."
    assert main(["sample", "--ckpt", str(small_model), "--length", "200", "--seed", "1", "--stop", "."]) == 0
    assert capsys.readouterr().out == free[:free.index(".") + 1] + "\n"


def test_stop_escapes_and_the_earliest_of_several_stops():
    assert read_stop("\\n\\n") == "\n\n" and read_stop("a\\tb\\\\") == "a\tb\\"
    collector = StopCollector(2, ("cd", "b"))
    for chars in ("aa", "bc", "cd", "dd"):
        done = collector.add(chars, [-1.0, -2.0])
    first, second = collector.samples()
    assert (first.text, first.stopped_by, first.log_prob) == ("ab", "b", -2.0)
    assert (second.text, second.stopped_by, second.log_prob) == ("acd", "cd", -6.0) and done


def test_prime_file_of_any_length_equals_the_same_prime_given_inline(small_model, tmp_path, capsys):
    prime = "the red cat sat on the mat.\n" * 100
    (tmp_path / "prime.txt").write_text(prime, encoding="utf-8")
    from_file = sample_json(capsys, small_model, "--length", "30", "--argmax", "--prime-file",
                            str(tmp_path / "prime.txt"))
    inline = sample_json(capsys, small_model, "--length", "30", "--argmax", "--prime", prime)
    assert from_file["samples"] == inline["samples"] and from_file["settings"]["prime_chars"] == len(prime)


def test_ckpt_may_be_a_run_directory_standing_for_its_best(small_model, capsys):
    by_dir = sample_json(capsys, small_model.parent, "--length", "20", "--argmax")
    by_file = sample_json(capsys, small_model, "--length", "20", "--argmax")
    assert by_dir["samples"] == by_file["samples"]
    assert by_dir["settings"]["ckpt"] == str(small_model.parent / "best.safetensors")


@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], r"--top-p must be in \(0, 1\], got 0.0"),
    (["--top-p", "1.01"], r"--top-p must be in \(0, 1\]"),
    (["--beam", "0"], "--beam must be 1 or more, got 0"),
    (["--stop", ""], "--stop must not be empty"),
    (["--prime-file", "/nonexistent/prime.txt"], "prime file /nonexistent/prime.txt does not exist"),
    (["--argmax", "--temperature", "0.5"], "--argmax always takes the most likely character, so --temperature"),
    (["--argmax", "--top-p", "0.5"], "--top-p would do nothing"),
    (["--beam", "3", "--num-samples", "2"], "--beam .* does not combine with --num-samples"),
    (["--beam", "3", "--temperature", "0.7"], "does not combine with --temperature"),
    (["--prime", "x", "--prime-file", "p.txt"], "pass --prime or --prime-file, not both"),
])
def test_bad_values_are_refused_in_one_line(small_model, capsys, args, message):
    import re
    assert main(["sample", "--ckpt", str(small_model), "--length", "5", *args]) == 1
    assert re.search(message, one_error_line(capsys))
    assert capsys.readouterr().out == ""


def test_a_prime_file_with_characters_outside_the_vocabulary_or_bad_bytes_is_refused(small_model, tmp_path, capsys):
    (tmp_path / "odd.txt").write_text("the Zebra", encoding="utf-8")
    assert main(["sample", "--ckpt", str(small_model), "--prime-file", str(tmp_path / "odd.txt")]) == 1
    assert "'Z'" in one_error_line(capsys)
    (tmp_path / "bad.txt").write_bytes(b"the \xff")
    assert main(["sample", "--ckpt", str(small_model), "--prime-file", str(tmp_path / "bad.txt")]) == 1
    assert "byte 4 is not valid utf-8" in one_error_line(capsys)


def test_a_run_directory_without_best_is_refused(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path)]) == 1
    assert "has no best checkpoint yet" in one_error_line(capsys)
