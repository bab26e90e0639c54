"""A training process of a distributed run killed with SIGKILL: the run ends fast, in one line, and resumes."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from lenet_lightning.training.process_faults import (
    QuietWhenAPeerDied,
    ending_quietly_if_a_peer_died,
    process_death_of,
)
from lenet_lightning.training.run import build
from tests.conftest import cli_env, run_module

NO_FIGURES = "~callbacks.error_analysis"  # rendering the figures costs seconds and is not what is tested here
# Far more epochs than run before the kill (about 0.2 s each on the tiny data), so it lands mid-training.
RECIPE = ("trainer=ddp_cpu", "trainer.devices=2", "epochs=1000", "dataset.batch_size=32", "lr=0.1", NO_FIGURES)
EXIT_WITHIN_S = 60


def spawned_workers(parent: int) -> list[int]:
    """The training processes ``ddp_spawn`` started, by pid in start order (rank 0 first); not the resource tracker."""
    ps = ["ps", "-ww", "--ppid", str(parent), "-o", "pid=,args="]  # -ww: whole command lines, also without a terminal
    listing = subprocess.run(ps, capture_output=True, text=True).stdout  # status 1: no such processes (yet)
    return sorted(int(line.split()[0]) for line in listing.splitlines() if "spawn_main" in line)


def wait_for_training(parent: subprocess.Popen, checkpoint: Path, deadline_s: float = 120) -> list[int]:
    """Wait for the first epoch's checkpoint and both training processes; fail if the run ends or stalls first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert parent.poll() is None, f"the run ended before it could be killed (exit status {parent.returncode})"
        workers = spawned_workers(parent.pid)
        if checkpoint.is_file() and len(workers) == 2:
            return workers
        time.sleep(0.2)
    pytest.fail(f"no {checkpoint} within {deadline_s} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_torch_reports_of_a_dead_process_become_an_interruption_naming_it(make_config) -> None:
    _, _, trainer = build(make_config("trainer=ddp_cpu"))
    killed = process_death_of(ProcessExitedException("", 1, 4321, -signal.SIGKILL, "SIGKILL"), trainer)
    assert str(killed) == "training process 1 of 2 (pid 4321) was killed by SIGKILL" and killed.exit_code == 137
    exited = process_death_of(ProcessExitedException("", 0, 4320, 3), trainer)
    assert str(exited) == "training process 0 of 2 (pid 4320) exited with status 3" and exited.exit_code == 3
    assert process_death_of(ProcessRaisedException("its traceback", 0, 4320), trainer) is None  # shown as it is


def kill_a_training_process(rank: int, run: Path, data_dir: Path, logs: Path) -> None:
    """Start a ``trainer=ddp_cpu`` run, SIGKILL its process of rank ``rank`` once the first checkpoint exists, and
    check that the run ends within a minute with one line naming that process and the resume command.

    Rank 0 is the one killed below (it writes the checkpoints); how the death of any other rank is named is
    :func:`test_torch_reports_of_a_dead_process_become_an_interruption_naming_it`, and torch stops the others alike.
    """
    command = [sys.executable, "-m", "lenet_lightning.train", *RECIPE, f"hydra.run.dir={run}"]
    with (logs / "stdout").open("w") as stdout, (logs / "stderr").open("w") as stderr:
        parent = subprocess.Popen(command, cwd=logs, env=cli_env(data_dir), stdout=stdout, stderr=stderr)
        try:
            workers = wait_for_training(parent, run / "checkpoints" / "last.ckpt")
            os.kill(workers[rank], signal.SIGKILL)
            killed_at = time.monotonic()
            exit_status = parent.wait(timeout=EXIT_WITHIN_S)
            seconds = time.monotonic() - killed_at
        finally:  # a run that hangs, or a failed assertion, must not leave processes training
            if parent.poll() is None:
                for pid in [*spawned_workers(parent.pid), parent.pid]:
                    os.kill(pid, signal.SIGKILL)
                parent.wait(timeout=30)

    assert seconds < EXIT_WITHIN_S
    assert exit_status == 128 + signal.SIGKILL  # as a shell reports a process ended by SIGKILL
    assert not [pid for pid in workers if alive(pid)], "the other training process was stopped too"
    errors = (logs / "stderr").read_text()
    (last_line,) = errors.strip().splitlines()  # one line: no traceback, no notice of torch stopping the others
    assert f"training process {rank} of 2 (pid {workers[rank]}) was killed by SIGKILL" in last_line, errors[-3000:]
    assert f"resume={run}" in last_line
    assert "ProcessExitedException" not in errors and "Error executing job" not in errors, "no traceback of the run"
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "interrupted" and f"pid {workers[rank]}" in record["reason"]


@pytest.mark.slow
def test_a_run_whose_rank_0_was_killed_resumes_from_its_last_checkpoint(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Rank 0 writes the checkpoints: killed, maybe during a save, it must still leave one to resume from."""
    run = tmp_path / "run"
    kill_a_training_process(0, run, tiny_data_dir, tmp_path)
    saved_epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    resumed = run_module(  # one more epoch, with the command the message gives
        "lenet_lightning.train", f"resume={run}", f"epochs={saved_epoch + 2}", cwd=tmp_path, data_dir=tiny_data_dir
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == saved_epoch + 1


def stopped_after_its_peer_died() -> None:
    """A training process whose SIGTERM handler, like Lightning's, broadcasts to a process that is gone."""

    def broadcast(signum: int, frame: object) -> None:
        raise RuntimeError("[gloo/transport/tcp/pair.cc] Read error: Connection reset by peer")

    signal.signal(signal.SIGTERM, ending_quietly_if_a_peer_died(broadcast))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # not reached


def test_a_process_stopped_after_a_peer_died_ends_quietly_with_the_signals_status(capfd) -> None:
    """The race the SIGKILL test above meets now and then: the survivor's SIGTERM lands in a failing collective."""
    worker = multiprocessing.get_context("fork").Process(target=stopped_after_its_peer_died)
    worker.start()
    worker.join(timeout=10)
    assert worker.exitcode == 128 + signal.SIGTERM
    assert capfd.readouterr().err == ""  # the launcher's one line is the only one


@pytest.mark.parametrize(("trainer", "wrapped"), [("trainer=ddp_cpu", True), ("trainer=default", False)])
def test_each_process_of_a_group_wraps_the_sigterm_handler_it_trains_with(make_config, trainer: str, wrapped: bool):
    _, _, built = build(make_config(trainer, "accelerator=cpu"))
    calls: list[int] = []

    def lightnings(signum: int, frame: object) -> None:
        calls.append(signum)

    signal.signal(signal.SIGTERM, lightnings)  # put back after the test by tests/conftest.py
    QuietWhenAPeerDied().on_train_start(built, None)
    handler = signal.getsignal(signal.SIGTERM)
    assert (handler is not lightnings) == wrapped
    handler(signal.SIGTERM, None)  # a handler whose collective works is called as it was
    assert calls == [signal.SIGTERM]
