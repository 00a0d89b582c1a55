"""Data-parallel training over MPI (parallel.py): two ranks train the run one process
trains, a checkpoint resumes under any number of ranks, and failures end every rank
with one line. Each test starts `mpiexec -n 2` on a tiny model (a few seconds)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charlstm import checkpoint, runtime
from helpers import write_tiny_corpus

MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not MPIEXEC.exists(),
    reason='mpi4py and mpiexec are not installed (pip install "charlstm[mpi]")')

# float32 summation order: the 2-rank gradient is (g0 + g1) / 2 in one rounding, one
# process sums the same terms in BLAS order; 30-40 steps amplify those roundings.
# Measured: relative to the largest entry (carried c reaches 14), weights, Adam's
# moments and carried state differ by at most about 1e-6 with the NumPy kernels and
# 1.6e-5 with the compiled ones (train.kernels auto, numba installed: its cell rounds
# differently for a rank's 4 streams than for all 8); losses by about 1e-8.
RELATIVE_TOLERANCE = 5e-5
LOSS_TOLERANCE = 1e-6

RUN = {"model.hidden_size": 16, "train.batch_size": 8, "train.seq_len": 16, "train.max_steps": 30,
       "train.state_reset": 0.2, "model.initial_state": "learned", "train.eval_every": 10,
       "train.checkpoint_every": 10, "train.sample_every": 10, "train.sample_length": 5,
       "train.lr_schedule": "constant", "train.warmup_steps": 3, "train.lr": 0.02}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def charlstm(ranks: int, *args: str, cwd: Path, wait: bool = True, one_thread: bool = True, **sets):
    """`charlstm ARGS` in `ranks` processes (one: no mpiexec at all), with one BLAS thread
    each unless `one_thread` is False (then charlstm chooses)."""
    command = [sys.executable, "-m", "charlstm.cli", *args, "--quiet"]
    command += [arg for key, value in {**RUN, **sets}.items() for arg in ("--set", f"{key}={value}")]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    env = {name: value for name, value in os.environ.items() if name not in ONE_THREAD}
    if one_thread:
        env.update(ONE_THREAD)
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        env.pop(name, None)  # a pytest started under mpiexec must not make the one process a rank
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def train(ranks: int, cwd: Path, out: str, **sets) -> subprocess.CompletedProcess:
    result = charlstm(ranks, "train", "tiny.txt", "--out", out, cwd=cwd, **sets)
    assert result.returncode == 0, result.stderr
    return result


def resume(ranks: int, cwd: Path, out: str, **sets) -> subprocess.CompletedProcess:
    resume_sets = {key: value for key, value in sets.items() if key == "train.max_steps"}
    command = [sys.executable, "-m", "charlstm.cli", "train", "--resume", out, "--quiet",
               *[arg for key, value in resume_sets.items() for arg in ("--set", f"{key}={value}")]]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **ONE_THREAD}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def state(path: Path) -> dict:
    ckpt = checkpoint.load(path)
    return {"params": ckpt.params.flat, "exp_avg": ckpt.optimizer_moments[0], "h": ckpt.carried_state[0],
            "c": ckpt.carried_state[1], "rngs": ckpt.rng_states, "step": ckpt.progress["step"],
            "best": ckpt.progress["best_val_loss"],
            **({"training": ckpt.training_params} if ckpt.training_params is not None else {})}


def assert_close_runs(a: dict, b: dict, exact: bool = False) -> None:
    for key in a:
        if isinstance(a[key], np.ndarray):
            if exact:
                assert np.array_equal(a[key], b[key]), key
            else:
                relative = np.abs(a[key] - b[key]).max() / max(1.0, np.abs(a[key]).max())
                print(f"measured: {key} relative difference {relative:.2e}")
                assert relative <= RELATIVE_TOLERANCE, key
        elif isinstance(a[key], float) and not exact:
            print(f"measured: {key} difference {abs(a[key] - b[key]):.2e}")
            assert abs(a[key] - b[key]) <= LOSS_TOLERANCE, key
        else:
            assert a[key] == b[key], key  # the generators: every rank draws for all streams


@pytest.fixture
def workdir(tmp_path) -> Path:
    write_tiny_corpus(tmp_path)
    return tmp_path


@pytest.mark.parametrize("sets", [{"model.dropout": 0.0}, {"model.dropout": 0.3},
                                  {"model.dropout": 0.3, "train.ema_decay": 0.9},
                                  # 15 windows an epoch: the ranks restart their streams together
                                  {"model.dropout": 0.3, "train.seq_len": 64},
                                  # one weight mask a window, drawn alike on every rank
                                  {"model.dropout": 0.3, "model.recurrent_weight_dropout": 0.3}])
def test_two_ranks_train_what_one_process_trains(workdir, sets):
    one = train(1, workdir, "one", **sets)
    two = train(2, workdir, "two", **sets)
    assert_close_runs(state(workdir / "one" / "last.safetensors"), state(workdir / "two" / "last.safetensors"))
    # Rank 0 alone prints: each evaluation line once, the samples (same generator) alike.
    assert two.stdout.count("step 10: val") == 1
    assert [line for line in two.stdout.splitlines() if "sample at" in line] == \
           [line for line in one.stdout.splitlines() if "sample at" in line]
    metrics = [[json.loads(line) for line in (workdir / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("one", "two")]
    assert [r["step"] for r in metrics[0]] == [r["step"] for r in metrics[1]] == [10, 20, 30]
    for a, b in zip(*metrics):  # the loss is the mean over both ranks' characters
        assert abs(a["train_loss"] - b["train_loss"]) <= LOSS_TOLERANCE
        assert abs(a["val_loss"] - b["val_loss"]) <= LOSS_TOLERANCE


def test_the_same_number_of_ranks_is_bitwise_reproducible(workdir):
    train(2, workdir, "a", **{"model.dropout": 0.3})
    train(2, workdir, "b", **{"model.dropout": 0.3})
    assert_close_runs(state(workdir / "a" / "last.safetensors"), state(workdir / "b" / "last.safetensors"),
                      exact=True)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_under_another_number_of_ranks(workdir, first, then):
    sets = {"model.dropout": 0.3, "model.recurrent_weight_dropout": 0.2}
    train(1, workdir, "one-go", **sets, **{"train.max_steps": 40})
    train(first, workdir, "stopped", **sets, **{"train.max_steps": 20})
    resume(then, workdir, "stopped", **{"train.max_steps": 40})
    assert_close_runs(state(workdir / "one-go" / "last.safetensors"),
                      state(workdir / "stopped" / "last.safetensors"))


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_batch_the_ranks_cannot_share_is_refused_in_one_line(workdir):
    result = charlstm(2, "train", "tiny.txt", "--out", "run", cwd=workdir, **{"train.batch_size": 5})
    assert result.returncode == 1
    line = one_error_line(result)
    assert "train.batch_size=5" in line and "2 MPI ranks" in line
    assert not (workdir / "run").exists()


def test_a_bad_config_is_one_line_for_the_whole_job(workdir):
    result = charlstm(2, "train", "tiny.txt", "--out", "run", cwd=workdir, **{"train.no_such_key": 1})
    assert result.returncode != 0
    assert "no_such_key" in one_error_line(result)


def test_a_command_line_error_is_said_once_for_the_whole_job(workdir):
    result = charlstm(2, "train", "tiny.txt", "--no-such-option", cwd=workdir)
    assert result.returncode == 2
    assert "--no-such-option" in one_error_line(result)  # not once per rank


def test_a_corpus_missing_on_one_rank_stops_every_rank_naming_it(workdir):
    """Rank 1 is given a file that is not there, as on a host without the corpus."""
    base = [sys.executable, "-m", "charlstm.cli", "train", "--out", "run", "--quiet"]
    command = [str(MPIEXEC), "-n", "1", *base, "tiny.txt", ":", "-n", "1", *base, "absent.txt"]
    result = subprocess.run(command, cwd=workdir, env={**os.environ, **ONE_THREAD}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: rank 1: ") and "absent.txt" in line
    assert not (workdir / "run").exists()


def test_diverging_weights_between_ranks_are_caught(workdir):
    script = ("from charlstm.parallel import communicator; import numpy as np\n"
              "from charlstm.errors import CharlstmError\n"
              "comm = communicator(); weights = np.ones(100, np.float32)\n"
              "comm.check_same_weights(weights, 5)\n"
              "weights[7] += comm.rank * 1e-7\n"
              "try:\n    comm.check_same_weights(weights, 10)\n"
              "except CharlstmError as exc:\n    print(comm.rank, exc.on_every_rank, exc)\n")
    result = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", script], cwd=workdir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert len(lines) == 2 and all("rank 1 differ from rank 0's at step 10" in line for line in lines)
    assert all(" True " in line for line in lines)


def test_sigterm_to_mpiexec_saves_once_and_the_printed_command_resumes(workdir):
    job = charlstm(2, "train", "tiny.txt", "--out", "run", cwd=workdir, wait=False,
                   **{"train.max_steps": 100000, "train.checkpoint_every": 100000, "train.eval_every": 50})
    metrics = workdir / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "resume with: charlstm train --resume run" in lines[0]
    stopped_at = checkpoint.load(workdir / "run" / "last.safetensors").progress["step"]
    assert stopped_at >= 10  # the first metrics record came at step 10
    resumed = subprocess.run([sys.executable, "-m", "charlstm.cli", "train", "--resume", "run", "--quiet",
                              "--set", f"train.max_steps={stopped_at + 5}"],
                             cwd=workdir, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(workdir / "run" / "last.safetensors").progress["step"] == stopped_at + 5


def rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the charlstm process of `rank` whose command line holds `marker`."""
    for proc in Path("/proc").iterdir():
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and \
                    f"PMI_RANK={rank}\0".encode() in (proc / "environ").read_bytes():
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def test_sigkill_of_one_rank_ends_the_job_and_the_run_resumes(workdir):
    out = f"killed-{os.getpid()}"
    job = charlstm(2, "train", "tiny.txt", "--out", out, cwd=workdir, wait=False,
                   **{"train.max_steps": 100000, "train.checkpoint_every": 20, "train.eval_every": 20})
    last = workdir / out / "last.safetensors"
    deadline = time.time() + 60
    while not last.exists() and time.time() < deadline:
        time.sleep(0.1)
    victim = rank_pid(out, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    job.communicate(timeout=60)  # ends: no rank waits forever for the killed one
    assert job.returncode != 0
    step = checkpoint.load(last).progress["step"]
    resumed = subprocess.run([sys.executable, "-m", "charlstm.cli", "train", "--resume", out, "--quiet",
                              "--set", f"train.max_steps={step + 5}"],
                             cwd=workdir, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr


def test_without_mpiexec_nothing_of_mpi_is_imported(workdir):
    script = ("import sys; from charlstm.cli import main\n"
              "code = main(['train', 'tiny.txt', '--out', 'run', '--quiet', '--set', 'train.max_steps=2', "
              "'--set', 'model.hidden_size=8', '--set', 'train.batch_size=4', '--set', 'train.sample_length=0'])\n"
              "assert code == 0 and 'mpi4py' not in sys.modules, code\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PMI_", "OMPI_", "PMIX_"))}
    result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(importlib.util.find_spec("threadpoolctl") is None,
                    reason='threadpoolctl sets the BLAS threads (pip install "charlstm[fast]")')
def test_ranks_share_the_cores_by_default(workdir):
    """`train.threads: 0` under mpiexec: the usable cores are shared out among the ranks
    on this host, so two ranks on two cores take one BLAS thread each."""
    result = charlstm(2, "train", "tiny.txt", "--out", "run", cwd=workdir, one_thread=False)
    assert result.returncode == 0, result.stderr
    share = max(1, runtime.usable_cores() // 2)
    assert f", {share} BLAS threads" in json.loads((workdir / "run" / "run.json").read_text())["runtime"]
