"""`export --to html`: the page's JavaScript LSTM under node, and the page itself in
headless Chromium, against charlstm."""

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from helpers import one_error_line

import charlstm
from charlstm import api, web_export
from charlstm.cli import main
from charlstm.data import Vocab
from charlstm.model import init_params

NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (apt-get install chromium; .ci/run does)")


def run_page(page: Path, fragment: str, budget_ms: int = 60_000) -> tuple[str, str, str]:
    """Open `page` in headless Chromium with a #fragment, let it run, and return the
    body's data-status, the #output text and the #status text from the final DOM."""
    with tempfile.TemporaryDirectory(prefix="charlstm-chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--virtual-time-budget={budget_ms}", "--dump-dom", f"{page.resolve().as_uri()}#{fragment}"],
            capture_output=True, text=True, timeout=300)
    dom = done.stdout
    assert done.returncode == 0 and "<body" in dom, done.stderr[-2000:]
    status = re.search(r'<body[^>]*data-status="([^"]*)"', dom).group(1)
    output = html.unescape(re.search(r'<pre id="output">(.*?)</pre>', dom, re.DOTALL).group(1))
    message = html.unescape(re.search(r'<p id="status">(.*?)</p>', dom, re.DOTALL).group(1))
    return status, output, message


@pytest.fixture(scope="module")
def page(small_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "my.html"
    assert main(["export", "--ckpt", str(small_model), "--to", "html", str(out)]) == 0
    return out


@needs_chromium
def test_page_argmax_text_in_chromium_equals_charlstm_sample(small_model, page, capsys):
    prime, length = "the dog", 300
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(small_model), "--argmax", "--prime", prime, "--length", str(length)]) == 0
    printed = capsys.readouterr().out
    status, output, _ = run_page(page, f"prime={quote(prime)}&length={length}&argmax=1&run=1")
    assert status == "done"
    assert output + "\n" == printed
    assert len(set(output)) > 10  # real text, not one repeated character


@needs_chromium
def test_page_samples_with_a_seed_and_refuses_unknown_characters(page):
    first = run_page(page, "prime=the&length=200&temperature=0.9&seed=5&run=1")
    again = run_page(page, "prime=the&length=200&temperature=0.9&seed=5&run=1")
    other = run_page(page, "prime=the&length=200&temperature=0.9&seed=6&run=1")
    assert first[0] == "done" and len(first[1]) == 3 + 200
    assert first == again and first[1] != other[1]  # the seed decides the text
    status, output, message = run_page(page, f"prime={quote('the Zebra')}&length=10&run=1")
    assert status == "error" and output == ""
    assert message == "characters not in the model's vocabulary: \"Z\""


def test_page_is_self_contained(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|https?://", text)  # nothing fetched from anywhere
    for element in ("prime", "temperature", "length", "seed", "generate", "output"):
        assert f'id="{element}"' in text


@needs_node
@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
def test_page_script_under_node_gives_the_checkpoints_logits(small_model, float16, record_property):
    model = charlstm.load(small_model)
    text = web_export.page(model.params, model.vocab, "t", float16)
    ids = model.vocab.encode("the old hen sat on the rug.\n" * 8)
    logits = web_export.node_logits(text, ids, NODE)
    difference = float(np.abs(logits - model.logits("the old hen sat on the rug.\n" * 8)).max())
    record_property(f"node logits max abs diff ({'float16' if float16 else 'float32'})", difference)
    print(f"\npage script under node vs charlstm ({'float16' if float16 else 'float32'} weights): "
          f"max abs diff {difference:.2e}")
    assert difference < (1e-2 if float16 else 1e-5)


def test_float16_halves_the_embedded_weights(small_model, tmp_path, capsys):
    for name, options in (("f32.html", []), ("f16.html", ["--float16"])):
        assert main(["export", "--ckpt", str(small_model), "--to", "html", str(tmp_path / name), *options]) == 0
    template = len(web_export._template("page.html")) + len(web_export._template("lstm.js"))
    f32, f16 = ((tmp_path / name).stat().st_size - template for name in ("f32.html", "f16.html"))
    assert 0.45 < f16 / f32 < 0.55
    assert "float16 weights move them by up to" in capsys.readouterr().out


@needs_node
def test_vocabularies_outside_the_basic_plane_and_html_specials_survive(tmp_path):
    chars = "\n <>&\"'/\u00e9\U0001F600"  # "</script>" can be spelled, and an emoji is two UTF-16 units
    params = init_params(len(chars), 6, 2, 1.0, np.random.default_rng(0))
    text = web_export.page(params, Vocab(chars), "</script><b>", float16=False)
    assert text.count("</script>") == 3  # only the page's own three scripts end
    script = (f"{web_export._script(text, 'charlstm-lstm')}\n"
              f"const m = JSON.parse({web_export._script(text, 'charlstm-model')!r});\n"
              "process.stdout.write(JSON.stringify(createLstm(m).chars));")
    done = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60)
    assert __import__("json").loads(done.stdout) == list(chars)
    ids = np.arange(len(chars))
    np.testing.assert_allclose(web_export.node_logits(text, ids, NODE), api.run(params, ids)[0], atol=1e-5)


@needs_node
def test_a_page_whose_script_disagrees_is_never_written(small_model, tmp_path, capsys, monkeypatch):
    real = web_export._template
    broken = lambda name: real(name).replace("sigmoid(z[H + j]) * ck[j]", "sigmoid(z[j]) * ck[j]")  # noqa: E731
    monkeypatch.setattr(web_export, "_template", broken)
    capsys.readouterr()
    assert main(["export", "--ckpt", str(small_model), "--to", "html", str(tmp_path / "bad.html")]) == 1
    assert "the page's script under node gave logits that differ" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_without_node_the_page_is_written_and_the_check_is_reported_as_not_run(small_model, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setattr(web_export.shutil, "which", lambda name: None)
    capsys.readouterr()
    assert main(["export", "--ckpt", str(small_model), "--to", "html", str(tmp_path / "p.html")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("not run: node is not installed, so the page's script "
                                                        "was not checked")
    assert main(["export", "--ckpt", str(small_model), "--to", "torch", str(tmp_path / "p.safetensors"),
                 "--float16"]) == 1
    assert "--float16 applies to --to html only" in one_error_line(capsys)
