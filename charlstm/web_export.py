"""The model as one self-contained web page that samples offline (also from file://).

The page (web/page.html) embeds web/lstm.js, the LSTM step in JavaScript, and the
model as JSON in a <script type="application/json" id="charlstm-model"> element:

    chars        the vocabulary; character id i is the i-th code point
    vocab_size, hidden_size, num_layers
    dtype        "float32", or "float16" (half the size; logits move by a few 1e-3)
    tensors      name -> [offset in elements, shape]: every parameter (model.py's
                 names and layouts) and init.h, init.c (L, H), the initial state
    data         base64 of all tensors, little-endian, one after another

No external script, font or request: the file is the whole program.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from .api import initial_state, run
from .data import Vocab
from .errors import CharlstmError
from .export_check import probe_ids, require_close
from .model import Params

NODE_TIMEOUT_S = 120


def _template(name: str) -> str:
    return (resources.files("charlstm") / "web" / name).read_text(encoding="utf-8")


def stored_tensors(params: Params, dtype) -> dict[str, np.ndarray]:
    """What the page holds, as the page will read it back: the parameters and the
    initial state rounded to `dtype`, as float32 arrays."""
    h0, c0 = initial_state(params)
    named = {name: params[name] for name in params.names()}
    named["init.h"], named["init.c"] = h0, c0
    stored = {name: np.asarray(array).astype(dtype) for name, array in named.items()}
    if not all(np.isfinite(array).all() for array in stored.values()):
        raise CharlstmError("some weights are too large for float16; export without --float16")
    return {name: array.astype(np.float32) for name, array in stored.items()}


def model_json(params: Params, vocab: Vocab, float16: bool) -> str:
    """The page's model, as JSON safe to place inside a <script> element."""
    dtype = np.dtype("<f2" if float16 else "<f4")
    tensors, chunks, offset = {}, [], 0
    for name, array in stored_tensors(params, dtype).items():
        tensors[name] = [offset, list(array.shape)]
        chunks.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
        offset += array.size
    model = {"format": "charlstm-web", "version": 1, "chars": vocab.chars, "vocab_size": vocab.size,
             "hidden_size": params.hidden_size, "num_layers": params.num_layers,
             "dtype": "float16" if float16 else "float32", "tensors": tensors,
             "data": base64.b64encode(b"".join(chunks)).decode("ascii")}
    # ensure_ascii and an escaped "<" keep any vocabulary (even "</script>") inert in HTML.
    return json.dumps(model, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def page(params: Params, vocab: Vocab, title: str, float16: bool = False) -> str:
    return (_template("page.html")
            .replace("%%TITLE%%", html.escape(title))
            .replace("%%CHARLSTM_LSTM%%", _template("lstm.js"))
            .replace("%%CHARLSTM_MODEL%%", model_json(params, vocab, float16)))


def _script(page_text: str, element_id: str) -> str:
    match = re.search(rf'<script id="{element_id}"[^>]*>(.*?)</script>', page_text, re.DOTALL)
    if match is None:
        raise AssertionError(f"the page has no script {element_id}")
    return match.group(1)


NODE_DRIVER = """
const fs = require("fs");
const { createLstm } = require(process.argv[2]);
const lstm = createLstm(JSON.parse(fs.readFileSync(process.argv[3], "utf8")));
const ids = JSON.parse(fs.readFileSync(process.argv[4], "utf8"));
process.stdout.write(JSON.stringify(ids.map((id) => Array.from(lstm.step(id)))));
"""


def node_logits(page_text: str, ids: np.ndarray, node: str) -> np.ndarray:
    """Run the page's own LSTM script and model under node, one id at a time."""
    with tempfile.TemporaryDirectory(prefix="charlstm-web-") as tmp:
        folder = Path(tmp)
        (folder / "lstm.js").write_text(_script(page_text, "charlstm-lstm"), encoding="utf-8")
        (folder / "model.json").write_text(_script(page_text, "charlstm-model"), encoding="utf-8")
        (folder / "ids.json").write_text(json.dumps([int(i) for i in ids]), encoding="utf-8")
        (folder / "driver.js").write_text(NODE_DRIVER, encoding="utf-8")
        try:
            done = subprocess.run([node, str(folder / "driver.js"), str(folder / "lstm.js"),
                                   str(folder / "model.json"), str(folder / "ids.json")],
                                  capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CharlstmError(f"checking the page under node took over {NODE_TIMEOUT_S} s; "
                                "nothing was written") from None
        if done.returncode != 0:
            raise CharlstmError(f"the page's script failed under node ({done.stderr.strip().splitlines()[-1:]}); "
                                "nothing was written (a bug in charlstm's exporter: please report it)")
        return np.array(json.loads(done.stdout), dtype=np.float64)


def export_page(params: Params, vocab: Vocab, out: Path, float16: bool = False) -> tuple[dict[Path, bytes], list[str]]:
    """The page's bytes, checked under node when node is on PATH, and what was checked."""
    text = page(params, vocab, f"charlstm: {out.stem}", float16)
    node = shutil.which("node")
    if node is None:
        return {out: text.encode("utf-8")}, ["not run: node is not installed, so the page's script was not checked"]
    ids = probe_ids(vocab.size)
    # The reference is the checkpoint with its weights rounded as the page stores them.
    stored = stored_tensors(params, np.float16 if float16 else np.float32)
    rounded = Params(params.shapes, np.float32)
    for name in params.names():
        rounded[name][...] = stored[name]
    expected = run(rounded, ids, (stored["init.h"], stored["init.c"]))[0]
    difference = require_close(expected, node_logits(text, ids, node), "the page's script under node")
    line = (f"checked: the page's script under node gives the checkpoint's logits on {len(ids)} characters "
            f"(max abs difference {difference:.1e})")
    if float16:
        drift = float(np.max(np.abs(expected - run(params, ids)[0])))
        line += f"; float16 weights move them by up to {drift:.1e}"
    return {out: text.encode("utf-8")}, [line]
