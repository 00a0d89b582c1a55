"""The `charlstm` command: Click commands that validate input and call the modules.

Every user-facing failure is one line on stderr ("error: ..."), exit status 1 (2 for
command-line usage errors, 130 for Ctrl-C); only internal bugs show a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path

import click
import numpy as np

from . import __version__, checkpoint
from .config import load_config
from .data import read_corpus_with_vocab
from .errors import CharlstmError

BUNDLED_CORPUS = "corpus.txt"


def bundled_corpus() -> Path:
    """The corpus shipped with the package (the repository's data/corpus.txt)."""
    try:
        return Path(str(resources.files("charlstm.bundled") / BUNDLED_CORPUS))
    except ModuleNotFoundError:  # an editable install does not map data/ into the package
        return Path(__file__).resolve().parent.parent / "data" / BUNDLED_CORPUS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="charlstm")
def cli():
    """Train character-level LSTM language models on your own text, in NumPy."""


@cli.command()
@click.argument("corpus", required=False, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config file (see configs/default.yaml); defaults apply to missing keys.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. --set train.lr=0.001 (repeatable).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory [default: runs/<corpus>-<time>].")
@click.option("--force", is_flag=True, help="Overwrite an existing run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(corpus, config_path, overrides, out, force, quiet):
    """Train on CORPUS (a text file; default: the bundled corpus)."""
    from .train import train as run_training

    config = load_config(config_path, list(overrides))
    corpus = corpus or bundled_corpus()
    out = out or Path("runs") / f"{Path(corpus).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    result = run_training(config, Path(corpus), out, force=force, show_progress=not quiet)
    click.echo(f"done: {result.steps} steps in {result.wall_time_s:.0f} s; best validation loss "
               f"{result.best_val_loss:.4f} nats/char ({result.best_val_loss / math.log(2):.4f} bits/char)")
    click.echo(f"sample: charlstm sample --ckpt {out / ('best' + checkpoint.EXTENSION)}")


@cli.command()
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file (best/last in a run directory).")
@click.option("--length", default=500, show_default=True, type=int, help="Characters to generate.")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Below 1 is more conservative, above 1 more surprising.")
@click.option("--top-k", type=int, help="Sample only among the k most likely characters.")
@click.option("--prime", default="", help="Text the model reads first; it is printed too.")
@click.option("--seed", type=int, help="Random seed; the same seed gives the same text.")
@click.option("--argmax", is_flag=True, help="Always take the most likely character.")
@click.option("--num-samples", default=1, show_default=True, type=int,
              help="Independent samples, generated together as one batch.")
def sample(ckpt_path, length, temperature, top_k, prime, seed, argmax, num_samples):
    """Generate text from a checkpoint, streaming it to stdout (several samples are
    printed one after another once all are done, each under a header line)."""
    from .sample import generate

    ckpt = checkpoint.load(ckpt_path)
    steps = generate(ckpt.params, ckpt.vocab, length, prime=prime, temperature=temperature,
                     top_k=top_k, argmax=argmax, rng=np.random.default_rng(seed),
                     num_samples=num_samples)
    out = sys.stdout
    if num_samples == 1:
        out.write(prime)
        for chars in steps:
            out.write(chars)
            out.flush()
        out.write("\n")
        return
    columns = list(steps)  # step k holds character k of every sample
    for n in range(num_samples):
        out.write(f"---- sample {n + 1} of {num_samples} ----\n")
        out.write(prime + "".join(step[n] for step in columns) + "\n")


@cli.command("eval")
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate_command(ckpt_path, file, as_json):
    """Mean loss of a checkpoint over every character of FILE, with state carried."""
    from .train import evaluate

    ckpt = checkpoint.load(ckpt_path)
    ids = read_corpus_with_vocab(file, ckpt.config.data.encoding, ckpt.vocab)
    if len(ids) < 2:
        raise CharlstmError(f"{file} needs at least two characters to evaluate")
    loss = evaluate(ckpt.params, ids, ckpt.config.train.batch_size, ckpt.config.train.seq_len)
    result = {"file": str(file), "chars": int(len(ids)), "loss_nats": loss,
              "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss)}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{file}: {loss:.4f} nats/char, {result['bits_per_char']:.4f} bits/char, "
                   f"perplexity {result['perplexity']:.3f} over {len(ids):,} characters")


def main(argv=None) -> int:
    """Console entry point: turns every expected failure into one line on stderr."""
    try:
        cli.main(args=argv, prog_name="charlstm", standalone_mode=False)
    except CharlstmError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            click.echo(exc.format_message())  # bare `charlstm`: show the help
            return 0
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `charlstm sample ... | head`
        sys.stderr.close()
        return 0
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
