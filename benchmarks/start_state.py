"""Do sequences started from the model's initial state get stuck?

Reads the validation text of a checkpoint's corpus (its last data.val_fraction), picks
random points in it (a third of them at a newline, so that the first character read is
"\n": from a zero state that start used to get stuck), runs the model from its initial state at each point, and reports
the loss over characters 256-1024 of each stream against the loss of the same
characters when the state is carried through the whole validation text from its start.

    python benchmarks/start_state.py runs/shakespeare/best.safetensors tinyshakespeare.txt

A healthy model has no stream above 3 nats/char and a mean within 0.05 of carried.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlstm import checkpoint  # noqa: E402
from charlstm.data import read_corpus_with_vocab, split_train_val  # noqa: E402
from charlstm.model import initial_state, logits  # noqa: E402

SPAN = 1024          # characters each started stream reads
SCORED_FROM = 256    # the first characters are the start-up; the rest are compared


def losses(params, inputs: np.ndarray, targets: np.ndarray, state, window: int = 512):
    """Per-position nats of predicting targets (T, B) from inputs (T, B), state carried
    over windows of `window` steps; returns (T, B) losses and the final state."""
    out = np.empty(inputs.shape, dtype=np.float64)
    for start in range(0, len(inputs), window):
        scores, state = logits(params, inputs[start:start + window], state)
        scores = scores.astype(np.float64)
        scores -= scores.max(axis=2, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=2, keepdims=True))
        picked = np.take_along_axis(log_probs, targets[start:start + window, :, None], axis=2)[..., 0]
        out[start:start + window] = -picked
    return out, state


def pick_points(val: np.ndarray, newline_id: int | None, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` start positions (one third at a newline: the first character read is
    "\n") and a flag for those."""
    last = len(val) - SPAN - 1
    after_newline = np.flatnonzero(val[:last] == newline_id) if newline_id is not None else np.array([], int)
    num_newline = min(count // 3, len(after_newline))
    chosen_newline = rng.choice(after_newline, num_newline, replace=False) if num_newline else np.array([], int)
    chosen_random = rng.integers(0, last, count - num_newline)
    points = np.concatenate([chosen_newline, chosen_random]).astype(np.intp)
    return points, np.arange(count) < num_newline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ckpt = checkpoint.load(args.ckpt)
    params, vocab = ckpt.params, ckpt.vocab
    ids = read_corpus_with_vocab(args.corpus, ckpt.config.data.encoding, vocab).astype(np.intp)
    _, val = split_train_val(ids, ckpt.config.data.val_fraction)
    newline_id = vocab.chars.index("\n") if "\n" in vocab.chars else None
    points, after_newline = pick_points(val, newline_id, args.points, np.random.default_rng(args.seed))

    carried, _ = losses(params, val[:-1, None], val[1:, None], initial_state(params, 1))
    carried = carried[:, 0]  # the loss of predicting val[p + 1] from val[.. p], state carried from the start

    offsets = np.arange(SPAN)
    inputs = val[points[None, :] + offsets[:, None]]          # (SPAN, N)
    targets = val[points[None, :] + offsets[:, None] + 1]
    started, _ = losses(params, inputs, targets, initial_state(params, len(points)))
    scored = slice(SCORED_FROM, SPAN)
    per_stream = started[scored].mean(axis=0)                 # (N,)
    same_chars_carried = carried[points[None, :] + offsets[scored, None]].mean(axis=0)
    first_chars = started[:SCORED_FROM].mean(axis=0)
    first_chars_carried = carried[points[None, :] + offsets[:SCORED_FROM, None]].mean(axis=0)

    print(f"{args.ckpt}: model.initial_state={ckpt.config.model.initial_state}, "
          f"train.state_reset={ckpt.config.train.state_reset}, step {ckpt.progress.get('step')}; "
          f"{len(points)} points in {len(val):,} validation characters, seed {args.seed}")
    print()
    print(f"| streams (start)        |  n | chars {SCORED_FROM}-{SPAN}: mean | max stream | stuck (> 3) "
          f"| carried, same chars | difference | chars 0-{SCORED_FROM}: mean | carried |")
    print("|------------------------|---:|-----------------:|-----------:|------------:"
          "|--------------------:|-----------:|------------------:|--------:|")
    for label, group in (("reading '\\n' first", after_newline), ("random points", ~after_newline),
                         ("all", np.ones_like(after_newline))):
        if not group.any():
            continue
        mean, carried_mean = per_stream[group].mean(), same_chars_carried[group].mean()
        print(f"| {label:<22} | {group.sum():>2} | {mean:>16.4f} | {per_stream[group].max():>10.4f} "
              f"| {int((per_stream[group] > 3).sum()):>11} | {carried_mean:>19.4f} | {mean - carried_mean:>+10.4f} "
              f"| {first_chars[group].mean():>17.4f} | {first_chars_carried[group].mean():>7.4f} |")


if __name__ == "__main__":
    main()
