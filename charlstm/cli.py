"""The `charlstm` command: Click commands that validate input and call the modules.

Every user-facing failure is one line on stderr ("error: ..."), exit status 1 (2 for
command-line usage errors, 130 for SIGINT/Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); only internal bugs
show a traceback.
"""

from __future__ import annotations

import io
import math
import os
import sys
import traceback
from importlib import resources
from pathlib import Path

import click
import numpy as np

from . import __version__, checkpoint
from .config import load_config
from .data import read_corpus_with_vocab
from .errors import CharlstmError
from .files import strict_json
from .parallel import communicator, launcher_rank, started
from .rundir import checkpoint_path

BUNDLED_CORPUS = "corpus.txt"
# How NumPy refuses an array larger than any machine's memory (it raises ValueError,
# not MemoryError); both mean the sizes asked for are too large.
NUMPY_SIZE_ERRORS = ("array is too big", "Maximum allowed dimension exceeded")


def bundled_corpus() -> Path:
    """The corpus shipped with the package (the repository's data/corpus.txt)."""
    try:
        return Path(str(resources.files("charlstm.bundled") / BUNDLED_CORPUS))
    except ModuleNotFoundError:  # an editable install does not map data/ into the package
        return Path(__file__).resolve().parent.parent / "data" / BUNDLED_CORPUS


class WholeHelpGroup(click.Group):
    """Lists every command with its whole one-line description: click's own listing
    cuts each at the terminal width with "...", mid-sentence."""

    def format_commands(self, ctx, formatter):
        rows = [(name, command.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def threads_option(function):
    return click.option("--threads", type=click.IntRange(min=1),
                        help="CPU threads for the matrix products [default: train.threads; "
                             "0 there means the usable cores].")(function)


@click.group(cls=WholeHelpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="charlstm")
def cli():
    """Train character-level LSTM language models on your own text, in NumPy."""


# Seconds between the plain status lines of a run whose output is piped (no progress bar).
STATUS_EVERY_S = 30.0


@cli.command(short_help="Train on text files or folders, or resume a run.")
@click.argument("corpus", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config file (see configs/default.yaml); defaults apply to missing keys.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. --set train.lr=0.001 (repeatable).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory [default: runs/<corpus>-<time>-<pid>].")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Continue RUN_DIR from its last checkpoint with its own config "
                   "(--set may raise train.max_steps).")
@click.option("--from", "from_checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="With --resume: the checkpoint to continue from (best: fine-tune from the best).")
@click.option("--new-schedule", is_flag=True,
              help="With --resume: warm up and decay the learning rate again over the steps up to "
                   "train.max_steps (else steps past the planned ones train at the final rate).")
@click.option("--force", is_flag=True, help="Overwrite an existing run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or status lines (a bar shows only when stderr "
                                            "is a terminal, else a status line every 30 s).")
@threads_option
def train(corpus, config_path, overrides, out, resume_dir, from_checkpoint, new_schedule, force, quiet,
          threads):
    """Train on CORPUS (text files or folders; default: the bundled corpus), or resume a run."""
    from .runlock import default_run_dir
    from .train import resume, train as run_training

    if threads is not None:  # the same as --set train.threads=N
        overrides = (*overrides, f"train.threads={threads}")

    # A bar redrawn with carriage returns only makes sense on a terminal; piped to a
    # log file, the evaluation lines are the progress.
    show_progress = not quiet and sys.stderr.isatty()
    status_every_s = STATUS_EVERY_S if not quiet and not show_progress else 0.0
    corpus = list(corpus)
    if resume_dir is not None:
        clashes = [flag for flag, given in (("--config", config_path), ("--out", out), ("--force", force)) if given]
        if clashes:
            raise CharlstmError(f"--resume uses the run's own config and directory; drop {', '.join(clashes)}")
        out = resume_dir
        result = resume(resume_dir, list(overrides), corpus or None, show_progress=show_progress,
                        status_every_s=status_every_s, from_checkpoint=from_checkpoint, new_schedule=new_schedule)
    else:
        if new_schedule or from_checkpoint != "last":
            raise CharlstmError("--from and --new-schedule go with --resume RUN_DIR")
        with communicator().together():  # under mpiexec: one line for a config every rank refuses
            config = load_config(config_path, list(overrides))
        corpus = corpus or [bundled_corpus()]
        out = out or default_run_dir(Path(corpus[0]))
        result = run_training(config, corpus[0] if len(corpus) == 1 else corpus, out, force=force,
                              show_progress=show_progress, status_every_s=status_every_s)
    if not communicator().is_root:
        return  # under mpiexec rank 0 alone prints
    reason = f" ({result.stop_reason})" if result.stop_reason else ""
    click.echo(f"done: {result.steps} steps{reason} in {result.wall_time_s:.0f} s; best validation loss "
               f"{result.best_val_loss:.4f} nats/char ({result.best_val_loss / math.log(2):.4f} bits/char)")
    click.echo(f"sample: charlstm sample --ckpt {checkpoint_path(out, 'best')}")


@cli.command(short_help="Generate text from a checkpoint: sampling or beam search.")
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file (best/last in a run directory), or a run directory for its best.")
@click.option("--length", default=500, show_default=True, type=int, help="Characters to generate.")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Below 1 is more conservative, above 1 more surprising.")
@click.option("--top-k", type=int, help="Sample only among the k most likely characters.")
@click.option("--top-p", type=float,
              help="Sample only among the most likely characters holding mass P, in (0, 1] (nucleus sampling).")
@click.option("--beam", type=int, help="Beam search with N beams for the most likely text; prints its "
                                        "log-probability (--beam 1 is --argmax).")
@click.option("--stop", multiple=True, metavar="TEXT",
              help='End a sample right after TEXT, e.g. --stop "\\n\\n" (repeatable; \\n and \\t are read).')
@click.option("--prime", default="", help="Text the model reads first; it is printed too.")
@click.option("--prime-file", type=click.Path(path_type=Path),
              help="Read the prime from FILE (any length; not printed).")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed; the same seed gives the same text.")
@click.option("--argmax", is_flag=True, help="Always take the most likely character.")
@click.option("--num-samples", default=1, show_default=True, type=int,
              help="Independent samples, generated together as one batch.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the settings, and each sample's text, length and log-probability.")
@threads_option
@click.pass_context
def sample(ctx, ckpt_path, length, temperature, top_k, top_p, beam, stop, prime, prime_file, seed, argmax,
           num_samples, as_json, threads):
    """Generate text from a checkpoint, streaming it to stdout (several samples are
    printed one after another once all are done, each under a header line)."""
    from .sample_command import SampleOptions, run

    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    options = SampleOptions(length, temperature, top_k, top_p, argmax, beam, tuple(stop), seed, num_samples)
    run(ckpt_path, prime, prime_file, options, given, as_json, sys.stdout,
        configure=lambda ckpt: configure_runtime(ckpt, threads))


@cli.command("eval", short_help="Mean loss of a checkpoint on a text file (nats and bits/char).")
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--streams", type=click.IntRange(min=1),
              help="Segments of FILE read side by side (more run faster) "
                   "[default: the checkpoint's train.eval_streams, 64 unless set].")
@click.option("--warmup", type=click.IntRange(min=0),
              help="Characters read before each segment for context, not scored "
                   "[default: the checkpoint's train.eval_warmup, 256 unless set].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@threads_option
def evaluate_command(ckpt_path, file, streams, warmup, as_json, threads):
    """Mean loss of a checkpoint over every character of FILE, each stream starting
    from the model's initial state; the result does not depend on the batch size the
    model was trained with."""
    from .evaluate import evaluate

    ckpt = checkpoint.load(ckpt_path)
    configure_runtime(ckpt, threads)
    ids = read_corpus_with_vocab(file, ckpt.config.data.encoding, ckpt.vocab)
    if len(ids) < 2:
        raise CharlstmError(f"{file} needs at least two characters to evaluate")
    train_cfg = ckpt.config.train
    result = evaluate(ckpt.params, ids, streams or train_cfg.eval_streams, train_cfg.seq_len,
                      train_cfg.eval_warmup if warmup is None else warmup)
    if as_json:
        click.echo(strict_json({"file": str(file), "chars": result.chars, "loss_nats": result.loss,
                                "bits_per_char": result.bits_per_char, "perplexity": math.exp(result.loss),
                                "streams": result.streams, "warmup_chars": result.warmup_chars}))
    else:
        click.echo(f"{file}: {result.loss:.4f} nats/char, {result.bits_per_char:.4f} bits/char, "
                   f"perplexity {math.exp(result.loss):.3f} over {result.describe()}")


@cli.command("export", short_help="Write a checkpoint's model for PyTorch, Keras, ONNX or a web page.")
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file.")
@click.option("--to", "fmt", required=True, type=click.Choice(["torch", "keras", "onnx", "html"]),
              help="torch: safetensors state dict of nn.LSTM + nn.Linear; keras: Keras 3 .weights.h5 of "
                   "LSTM + Dense; onnx: OUT (step model) and OUT.seq.onnx (sequence model); html: one "
                   "page that samples offline.")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--float16", is_flag=True, help="html: store the weights as float16 (half the size).")
@click.option("--force", is_flag=True, help="Replace OUT and the files written beside it if they exist.")
def export_command(ckpt_path, fmt, out, float16, force):
    """Write a checkpoint's model to OUT (torch and keras: its vocabulary to OUT's name
    with .vocab.json beside it), after running the written model on a few characters
    and comparing its logits with the checkpoint's (see README, Interoperability)."""
    from .exchange import export_checkpoint

    paths, checks = export_checkpoint(ckpt_path, fmt, out, force, float16)
    for path in paths:
        click.echo(f"wrote {path}")
    for line in checks:
        click.echo(line)


@cli.command("import", short_help="Make a checkpoint or a run from PyTorch/Keras weights.")
@click.option("--from", "fmt", required=True, type=click.Choice(["torch", "keras"]),
              help="torch: safetensors state dict (lstm.*, head.*); keras: Keras 3 .weights.h5 "
                   "(or the .npz earlier versions exported).")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--vocab", "vocab_path", required=True, type=click.Path(path_type=Path),
              help='JSON vocabulary: {"chars": "..."} or a list of characters, in id order.')
@click.option("--out", type=click.Path(path_type=Path), help="Checkpoint file to write.")
@click.option("--run-dir", type=click.Path(path_type=Path),
              help="Instead of --out: a run directory at step 0 on --corpus, for `train --resume`.")
@click.option("--corpus", type=click.Path(path_type=Path), help="The text to fine-tune on (with --run-dir).")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Training settings for the checkpoint; the model size comes from the weights.")
@click.option("--force", is_flag=True, help="Replace the --out checkpoint if it exists.")
def import_command(fmt, weights, vocab_path, out, run_dir, corpus, config_path, force):
    """Make a charlstm checkpoint, or a run to fine-tune, from PyTorch or Keras WEIGHTS
    and a vocabulary."""
    from .exchange import import_as_run, import_weights

    if (out is None) == (run_dir is None):
        raise CharlstmError("pass either --out CKPT (a checkpoint) "
                            "or --run-dir DIR --corpus FILE (a run to fine-tune)")
    if (run_dir is None) != (corpus is None):
        raise CharlstmError("--run-dir and --corpus go together")
    if out is not None:
        ckpt = import_weights(weights, fmt, vocab_path, out, config_path, force)
    else:
        ckpt = import_as_run(weights, fmt, vocab_path, run_dir, corpus, config_path)
    model = ckpt.config.model
    click.echo(f"wrote {out or run_dir}: {model.num_layers}x{model.hidden_size} LSTM, vocabulary "
               f"{ckpt.vocab.size}, {ckpt.params.flat.size:,} parameters")
    if run_dir is not None:
        click.echo(f"fine-tune: charlstm train --resume {run_dir}")


@cli.command(short_help="Show a checkpoint: config, vocabulary, sizes, gate norms.")
@click.option("--ckpt", "ckpt_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint file.")
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON object.")
def info(ckpt_path, as_json):
    """Config, vocabulary, parameters, per-gate norms and progress of a checkpoint."""
    from .info import describe, summary

    ckpt = checkpoint.load(ckpt_path)
    if as_json:
        click.echo(strict_json(summary(ckpt, str(ckpt_path))))
    else:
        click.echo(describe(ckpt, str(ckpt_path)))


@cli.command(short_help="Plot loss curves of runs against step and wall time.")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", default=Path("curves.png"), show_default=True, type=click.Path(path_type=Path),
              help="Image file (.png, .svg, .pdf).")
def plot(run_dirs, out):
    """Training and validation loss (bits/char) of RUN_DIRS against step and wall time
    (a sweep directory stands for all its runs)."""
    from .plot import plot_runs

    plot_runs(list(run_dirs), out)
    click.echo(f"wrote {out}")


@cli.command(short_help="Train a grid of configs and tabulate the results.")
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs trained at once; each gets cores/jobs BLAS threads.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Sweep directory, instead of the file's `out` [default: runs/<file stem>].")
def sweep(sweep_file, jobs, out):
    """Train every configuration of SWEEP_FILE (see configs/sweep_example.yaml), skip
    finished runs, resume unfinished ones, then print and save the table."""
    from .sweep import run_sweep

    run_sweep(sweep_file, jobs, say=click.echo, out=out)


def configure_runtime(ckpt, threads: int | None) -> None:
    """The kernel set and threads of the checkpoint's config (see charlstm/runtime.py),
    with --threads first."""
    from .runtime import configure

    configure(ckpt.config.train.kernels, threads or ckpt.config.train.threads)


def main(argv=None) -> int:
    """Console entry point: turns every expected failure into one line on stderr.

    Under mpiexec, an error every rank raised alike is printed by rank 0 alone; an
    error on one rank (or a bug) is printed by that rank, which then ends at once:
    the job ends with it instead of the other ranks waiting for it forever."""
    try:
        return _main(argv)
    except BaseException:
        if not _one_of_many_ranks():
            raise
        traceback.print_exc()  # a bug stays loud, and ends the job
        _end_the_job(1)


def _one_of_many_ranks() -> bool:
    comm = started()
    return comm is not None and comm.size > 1


def _end_the_job(exit_code: int):
    """Leave at once without MPI's orderly goodbye: mpiexec then ends the other ranks,
    which may be waiting for this one in a collective."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def report_error(exc: CharlstmError) -> int:
    """Print `exc` as one line; under mpiexec, once for the job (see `main`)."""
    many = _one_of_many_ranks()
    rank = started().rank if many else 0
    if many and exc.on_every_rank and rank != 0:
        return exc.exit_code  # rank 0 says it
    one_line = str(exc).replace("\n", "\\n")  # e.g. a file name holding a newline
    named = f"rank {rank}: " if rank != 0 and not exc.on_every_rank else ""
    click.echo(f"error: {named}{one_line}", err=True)
    if many and not exc.on_every_rank:
        _end_the_job(exc.exit_code)
    return exc.exit_code


def _main(argv=None) -> int:
    # Text decoded with e.g. unicode_escape may hold lone surrogates, which no output
    # encoding can write: print them as \udXXX escapes instead of failing midway.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        # Overflow and invalid values are caught where they matter (a non-finite loss
        # stops training in one line, checkpoints and configs refuse non-finite
        # numbers); NumPy's own warnings would only add lines to the terminal.
        with np.errstate(all="ignore"):
            cli.main(args=argv, prog_name="charlstm", standalone_mode=False)
    except CharlstmError as exc:
        return report_error(exc)
    except (MemoryError, ValueError) as exc:
        if isinstance(exc, ValueError) and not str(exc).startswith(NUMPY_SIZE_ERRORS):
            raise  # any other ValueError is a bug
        click.echo("error: out of memory; try smaller sizes (train.batch_size, train.seq_len, "
                   "model.hidden_size or --num-samples)", err=True)
        return 1
    except click.ClickException as exc:
        if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            click.echo(exc.format_message())  # bare `charlstm`: show the help
            return 0
        if launcher_rank() == 0:  # every rank parsed the same command line: say it once
            click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `charlstm sample ... | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # e.g. stdout is /dev/full; every file charlstm writes says its own name
        sys.stdout = open(os.devnull, "w")  # the unwritten rest must not fail again at exit
        click.echo(f"error: cannot write output: {exc.strerror or exc}", err=True)
        return 1
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
