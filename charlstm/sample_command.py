"""What `charlstm sample` does between reading its options and printing: resolve the
checkpoint and the prime, check that the options make sense together, generate
(sampling or beam search), cut each sample at its first stop string, and write text
or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TextIO

import numpy as np

from . import checkpoint
from .errors import CharlstmError
from .files import existing_file, strict_json
from .rundir import checkpoint_path

# The escapes a stop string may use, since a shell passes "\n" as two characters.
STOP_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


@dataclass(frozen=True)
class SampleOptions:
    length: int = 500
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    argmax: bool = False
    beam: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_samples: int = 1


@dataclass(frozen=True)
class Sample:
    text: str  # generated characters, prime excluded, up to and including a stop string
    log_prob: float  # natural log of its probability under the model, given the prime
    stopped_by: str | None  # the stop string that ended it, if one did


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory standing for its `best` checkpoint."""
    path = Path(path)
    if path.is_dir():
        best = checkpoint_path(path, "best")
        if not best.exists():
            raise CharlstmError(f"{path} has no best checkpoint yet (no evaluation has run); "
                                f"pass --ckpt {checkpoint_path(path, 'last')}")
        return best
    return path


def read_stop(text: str) -> str:
    """A --stop value with its backslash escapes (\\n, \\t, \\r, \\\\) read."""
    out, index = [], 0
    while index < len(text):
        pair = text[index:index + 2]
        if pair in STOP_ESCAPES:
            out.append(STOP_ESCAPES[pair])
            index += 2
        else:
            out.append(text[index])
            index += 1
    if not out:
        raise CharlstmError("--stop must not be empty")
    return "".join(out)


def read_prime_file(path: Path, encoding: str) -> str:
    path = existing_file(path, "prime file")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise CharlstmError(f"prime file {path}: byte {exc.start} is not valid {encoding}") from None
    except OSError as exc:
        raise CharlstmError(f"cannot read prime file {path}: {exc.strerror or exc}") from None


def check_combination(options: SampleOptions, given: set[str]) -> None:
    """Refuse options that would be silently ignored. `given`: the options the user
    passed explicitly (e.g. {"temperature", "argmax"})."""
    shaping = [name for name in ("temperature", "top_k", "top_p") if name in given]
    if options.argmax and shaping:
        raise CharlstmError(f"--argmax always takes the most likely character, so "
                            f"{', '.join('--' + n.replace('_', '-') for n in shaping)} would do nothing; drop one")
    if options.beam is not None:
        clashes = [f"--{n.replace('_', '-')}" for n in ("argmax", "num_samples", "seed", "stop", *shaping)
                   if n in given]
        if clashes:
            raise CharlstmError(f"--beam searches for the single most likely text; it does not combine "
                                f"with {', '.join(clashes)}")


def generate_samples(ckpt, prime: str, options: SampleOptions) -> list[Sample]:
    """Every sample, each cut after its first stop string; generation ends early once
    every sample has stopped."""
    from .beam import beam_search
    from .sample import generate_scored

    if options.beam is not None:
        result = beam_search(ckpt.params, ckpt.vocab, options.length, options.beam, prime)
        return [Sample(result.text, result.log_prob, None)]
    steps = generate_scored(ckpt.params, ckpt.vocab, options.length, prime=prime,
                            temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                            argmax=options.argmax, rng=np.random.default_rng(options.seed),
                            num_samples=options.num_samples)
    collector = StopCollector(options.num_samples, options.stop)
    for chars, log_probs in steps:
        if collector.add(chars, log_probs):
            break
    return collector.samples()


class StopCollector:
    """Gathers N samples a character at a time and notes where each one stops: a
    sample stops right after the first stop string it completes."""

    def __init__(self, num_samples: int, stops: tuple[str, ...]):
        self.stops = stops
        self.texts = [[] for _ in range(num_samples)]
        self.tails = [""] * num_samples  # the last characters, as long as the longest stop
        self.log_probs = np.zeros(num_samples)
        self.stopped_by: list[str | None] = [None] * num_samples
        self.keep = max((len(s) for s in stops), default=0)

    def add(self, chars: str, log_probs: np.ndarray) -> bool:
        """Add one character per sample; True once every sample has stopped."""
        for n, char in enumerate(chars):
            if self.stopped_by[n] is not None:
                continue
            self.texts[n].append(char)
            self.log_probs[n] += log_probs[n]
            if self.keep:
                self.tails[n] = (self.tails[n] + char)[-self.keep:]
                self.stopped_by[n] = next((s for s in self.stops if self.tails[n].endswith(s)), None)
        return bool(self.stops) and all(s is not None for s in self.stopped_by)

    def samples(self) -> list[Sample]:
        return [Sample("".join(t), float(lp), s) for t, lp, s in zip(self.texts, self.log_probs, self.stopped_by)]


def stream_one(ckpt, prime: str, shown_prime: str, options: SampleOptions, out: TextIO) -> None:
    """One sample written as it is generated, ending after a stop string if one comes.
    Bad options fail (in generate_scored) before anything is written."""
    from .sample import generate_scored

    steps = generate_scored(ckpt.params, ckpt.vocab, options.length, prime=prime,
                            temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                            argmax=options.argmax, rng=np.random.default_rng(options.seed))
    out.write(shown_prime)
    collector = StopCollector(1, options.stop)
    for chars, log_probs in steps:
        out.write(chars)
        out.flush()
        if collector.add(chars, log_probs):
            break


def json_report(ckpt_path: Path, prime: str, prime_file: Path | None, options: SampleOptions,
                samples: list[Sample]) -> str:
    settings = {"ckpt": str(ckpt_path), **asdict(options), "stop": list(options.stop)}
    settings["prime_file" if prime_file else "prime"] = str(prime_file) if prime_file else prime
    if prime_file:
        settings["prime_chars"] = len(prime)
    return strict_json({"settings": settings,
                        "samples": [{"text": s.text, "length": len(s.text), "log_prob": s.log_prob,
                                     "stopped_by": s.stopped_by} for s in samples]})


def run(ckpt_path: Path, prime: str, prime_file: Path | None, options: SampleOptions, given: set[str],
        as_json: bool, out: TextIO, configure: Callable[[checkpoint.Checkpoint], None] = lambda ckpt: None) -> None:
    """`charlstm sample`; `configure` sets up the kernels and threads for the loaded checkpoint."""
    check_combination(options, given)
    if prime and prime_file:
        raise CharlstmError("pass --prime or --prime-file, not both")
    stops = tuple(read_stop(s) for s in options.stop)
    options = SampleOptions(**{**asdict(options), "stop": stops})
    ckpt_path = resolve_checkpoint(ckpt_path)
    ckpt = checkpoint.load(ckpt_path)
    configure(ckpt)
    if prime_file is not None:
        prime = read_prime_file(prime_file, ckpt.config.data.encoding)
        if not prime:
            raise CharlstmError(f"prime file {prime_file} is empty")
    shown_prime = "" if prime_file else prime  # a prime file may be long: not echoed
    if as_json:
        out.write(json_report(ckpt_path, prime, prime_file, options, generate_samples(ckpt, prime, options)) + "\n")
        return
    if options.num_samples == 1 and options.beam is None:
        stream_one(ckpt, prime, shown_prime, options, out)
        out.write("\n")
        return
    samples = generate_samples(ckpt, prime, options)
    if options.beam is not None:
        out.write(shown_prime + samples[0].text + "\n")
        out.write(f"---- beam {options.beam}: log-probability {samples[0].log_prob:.4f} "
                  f"({len(samples[0].text)} characters) ----\n")
        return
    for n, sample in enumerate(samples):
        out.write(f"---- sample {n + 1} of {options.num_samples} ----\n")
        out.write(shown_prime + sample.text + "\n")

