"""The floor under a training step: its matrix products alone, in NumPy's BLAS and in
PyTorch's, beside the two training loops.

    python benchmarks/product_floor.py [--pairs K] [--only REGEX] [--quick]

A charlstm step is its matrix products (the recurrent product of every time step, the
input projections, the weight gradients, the head) plus everything else (the cell, the
loss, dropout, clipping, Adam, Python). The products alone, run back to back with
nothing else, bound the loop from above: no cell or loop can make a step faster than
its products. If that bound falls short of 1.2x PyTorch's loop, the 1.2x target cannot
be met while NumPy's BLAS (OpenBLAS in the numpy wheels) computes the products; the
same products through torch.matmul (MKL in the torch wheels) show what PyTorch's loop
starts from.

A second, tighter bound keeps the cell too: the layers' time loops as charlstm.lstm
runs them (each step's product and the current kernel set's cell, on the loop's own
buffers), the weight-gradient products and the head's products, and nothing else. What
lies between it and the loop (the loss's softmax, copies, dropout, clipping, Adam,
preparing the weights, Python) is all that work outside the products and the cell can
win back.

Per row, in fresh processes, interleaved: charlstm's loop and PyTorch's loop (the
workers of throughput.py, so the same loops that table times), then the products of
one charlstm step in the shapes and layouts charlstm.lstm and charlstm.model use, timed
over the row's steps back to back after a warm-up: once with np.matmul and once with
torch.matmul on the same arrays; then the products and cells. Every column is chars/s (T*B chars per step), the
median over the pairs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the rows, the loop workers and the quiet-machine runner)

ROWS = [r for r in throughput.ROWS if r.dropout == 0 and not r.neighbour and r.vocab == 65]
TARGET = 1.2


def step_products(row: throughput.Row) -> list[tuple]:
    """(a, b, out) for every np.matmul(a, b, out=out) of one charlstm training step, in
    the loop's order and layouts (feature-major (F, T*B) columns; the backward's per-step
    dZ a strided view of its columns)."""
    import numpy as np

    from charlstm.lstm import padded_row

    rng = np.random.default_rng(0)
    H, B, T, V = row.hidden, row.batch, row.seq_len, row.vocab
    n = T * B

    def array(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)

    forward, backward = [], []
    for layer in range(row.layers):
        recurrent_T, W_h = array(4 * H, H), array(H, 4 * H)
        h = array(T + 1, H, B)
        gates_out = np.empty((4 * H, B), np.float32)
        d_z = array(4 * H, padded_row(n, np.float32))[:, :n].reshape(4 * H, T, B)  # as recurrence_backward
        d_h = np.empty((H, B), np.float32)
        # the columns of x_t over those of h_{t-1}: one product gives dW_x and dW_h
        # (lstm.weight_gradients); x_t one-hot over V for layer 0 (V <= 384)
        inputs = array((V if layer == 0 else H) + H, n)
        if layer > 0:  # the input projection of dense inputs: (4H, D) @ (D, T*B)
            W_x = array(H, 4 * H)
            forward.append((W_x.T, inputs[:H], np.empty((4 * H, n), np.float32)))
        forward += [(recurrent_T, h[t], gates_out) for t in range(T)]
        layer_backward = [(W_h, d_z[:, t], d_h) for t in range(T - 1, -1, -1)]
        d_z_columns = d_z.reshape(4 * H, n)
        layer_backward.append((d_z_columns, np.ones(n, np.float32), np.empty(4 * H, np.float32)))  # db
        layer_backward.append((inputs, d_z_columns.T, np.empty((len(inputs), 4 * H), np.float32)))  # dW_x, dW_h
        if layer > 0:
            layer_backward.append((W_x, d_z_columns, np.empty((H, n), np.float32)))  # d_x
        backward = layer_backward + backward  # the top layer's backward runs first
    head_input, W_y, d_logits = array(H, n), array(H, V), array(n, V)
    head = [(head_input.T, W_y, np.empty((n, V), np.float32))]
    head_backward = [(head_input, d_logits, np.empty((H, V), np.float32)),
                     (W_y, d_logits.T, np.empty((H, n), np.float32))]
    return forward + head + head_backward + backward


def step_products_and_cells(row: throughput.Row):
    """One charlstm step cut down to its products and its cells: the layers' time loops
    as charlstm.lstm runs them (each step's recurrent product and the kernel set's cell,
    forward and backward, on the loop's own buffers, so the cells read and write as much
    memory as in training), the weight-gradient products and the head's three products.
    What it leaves out (the loss's softmax, column copies, dropout, clipping, Adam,
    preparing the weights, Python around them) is the most that work outside the
    products and the cell can win back; what it keeps, only faster products or a faster
    cell can lower."""
    import numpy as np

    from charlstm import lstm

    rng = np.random.default_rng(0)
    H, B, T, V = row.hidden, row.batch, row.seq_len, row.vocab
    n = T * B

    def array(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)

    ids = rng.integers(0, V, (T, B)).astype(np.uint8)
    layers = []
    for layer in range(row.layers):
        depth = V if layer == 0 else H
        weights = array(depth + H, 4 * H)  # W_x over W_h, one block as model.Params keeps them
        # [x_t; h_{t-1}] columns for the weight gradients' one product (their values do
        # not change its speed; charlstm fills them with one-hot columns and states)
        layers.append((lstm.prepare_layer(weights[:depth], weights[depth:], array(4 * H), layer == 0),
                       lstm.LayerBuffers(), array(depth + H, n), np.empty_like(weights), np.empty(4 * H, np.float32)))
    zeros = np.zeros((H, B), np.float32)
    head_input, W_y, d_logits, d_top = array(H, n), array(H, V), array(n, V), array(T, H, B)
    logits, dW_y, d_head_input = np.empty((n, V), np.float32), np.empty((H, V), np.float32), np.empty((H, n), np.float32)

    def one_step():
        x, caches = ids, []
        for prepared, buffers, *_ in layers:
            caches.append(lstm.layer_forward(prepared, x, zeros, zeros, buffers))
            x = caches[-1].h[1:]
        np.matmul(head_input.T, W_y, out=logits)
        np.matmul(head_input, d_logits, out=dW_y)
        np.matmul(W_y, d_logits.T, out=d_head_input)
        d_out = d_top
        for (prepared, buffers, inputs, gradient, bias_gradient), cache in zip(layers[::-1], caches[::-1]):
            d_z, _, _ = lstm.recurrence_backward(prepared, cache, d_out, None, None, buffers)
            np.matmul(d_z, np.ones(n, np.float32), out=bias_gradient)
            np.matmul(inputs, d_z.T, out=gradient)
            if cache.inputs is not None:
                d_out = np.matmul(prepared.W_x, d_z).reshape(-1, T, B).transpose(1, 0, 2)

    return one_step


def worker_products(row: throughput.Row, library: str) -> dict:
    if library == "cells":
        from charlstm import runtime
        chosen = runtime.configure("auto", row.threads)
        one_step = step_products_and_cells(row)
        return _timed(row, one_step, f"np.matmul and the {chosen.kernels} cells, {chosen.threads} threads", 0)
    products = step_products(row)
    if library == "torch":
        import torch
        torch.set_num_threads(row.threads)
        products = [tuple(torch.from_numpy(x) for x in triple) for triple in products]
        matmul = torch.matmul
        describe = f"torch.matmul, {torch.get_num_threads()} threads"
    else:
        import numpy as np
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(row.threads, user_api="blas")
        matmul = np.matmul
        blas = next((p for p in threadpool_info() if p["user_api"] == "blas"), {})
        describe = f"np.matmul, {blas.get('internal_api', 'BLAS')}, {row.threads} threads"

    def one_step():
        for a, b, out in products:
            matmul(a, b, out=out)

    return _timed(row, one_step, describe, len(products))


def _timed(row: throughput.Row, one_step, describe: str, products: int) -> dict:
    for _ in range(throughput.WARMUP_STEPS):
        one_step()
    started = time.perf_counter()
    for _ in range(row.steps):
        one_step()
    seconds = time.perf_counter() - started
    return {"chars_per_s": row.steps * row.chars_per_step / seconds, "runtime": describe,
            "products": products}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds per row [3]")
    parser.add_argument("--only", default="", help="the rows whose label matches this regular expression")
    parser.add_argument("--quick", action="store_true", help="one round, a fifth of the steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task = json.loads(args.worker)
        print(json.dumps(worker_products(throughput.Row(**task["row"]), task["library"])))
        return 0
    if importlib.util.find_spec("torch") is None:  # the PyTorch loop and the torch.matmul column
        print("product_floor.py compares against PyTorch, which is not installed: "
              "pip install torch (or run throughput.py --no-torch)", file=sys.stderr)
        return 2
    rows = [r for r in ROWS if re.search(args.only, r.label)]
    pairs = 1 if args.quick else args.pairs
    if args.quick:
        rows = [throughput.Row(**{**asdict(r), "steps": max(3, r.steps // 5)}) for r in rows]
    print(f"{time.strftime('%Y-%m-%d')}; chars/s, median of {pairs} interleaved rounds; "
          f"'needed' is {TARGET}x PyTorch's loop", flush=True)
    header = (f"| {'row':<28} | charlstm loop | PyTorch loop | needed | products, NumPy | "
              f"products, torch | products and cells | NumPy products / needed | products and cells / needed |")
    lines = []
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            corpus = throughput.corpus_file(Path(scratch), row)
            loop_task = {"row": asdict(row), "corpus": str(corpus), "threads": row.threads}
            runs = {"charlstm": [], "torch": [], "numpy products": [], "torch products": [], "products and cells": []}
            for _ in range(pairs):
                runs["charlstm"].append(throughput.run_worker({"kind": "charlstm-train", **loop_task}))
                runs["torch"].append(throughput.run_worker({"kind": "torch-train", **loop_task}))
                for library in ("numpy", "torch", "cells"):
                    runs["products and cells" if library == "cells" else f"{library} products"].append(
                        throughput.run_worker({"row": asdict(row), "library": library}, script=__file__))
            cps = {k: statistics.median(r["chars_per_s"] for r in v) for k, v in runs.items()}
            needed = TARGET * cps["torch"]
            lines.append(f"| {row.label:<28} | {cps['charlstm']:>13,.0f} | {cps['torch']:>12,.0f} | "
                         f"{needed:>6,.0f} | {cps['numpy products']:>15,.0f} | {cps['torch products']:>15,.0f} | "
                         f"{cps['products and cells']:>18,.0f} | {cps['numpy products'] / needed:>23.2f} | "
                         f"{cps['products and cells'] / needed:>29.2f} |")
            print("  " + lines[-1], f"({runs['numpy products'][0]['runtime']}; "
                  f"{runs['numpy products'][0]['products']} products a step)", flush=True)
    print()
    print(header)
    print(f"|{'-' * 30}|--------------:|-------------:|-------:|----------------:|----------------:|"
          f"-------------------:|------------------------:|------------------------------:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
