"""A ddp_spawn launcher passes Ctrl-C and SIGTERM on to its training processes and ends as the signal says.

Here the launcher is this process and its training process a forked sleeper; the real ``trainer=ddp_cpu`` run,
stopped by a signal to its launcher, is ``tests/cli/test_ddp_launcher_signals.py``.
"""

import multiprocessing
import os
import signal
import time
from multiprocessing.synchronize import Event

import pytest

from lenet_lightning.config import command
from lenet_lightning.config.command import run_command, signals_handled_by_lightning


def train_until_stopped(ready: Event, on_sigterm: signal.Handlers) -> None:
    """A training process as spawned: it stops on SIGTERM (as Lightning makes it) or, hung, ignores it."""
    signal.signal(signal.SIGTERM, on_sigterm)
    ready.set()
    time.sleep(60)


def launch_and_signal(signum: int, on_sigterm: signal.Handlers) -> tuple[int, list[int], int | None, float]:
    """Run a launcher that starts one worker and gets ``signum``: (exit status, signals passed on, the worker's
    exit code, seconds until the launcher ended)."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    worker = fork.Process(target=train_until_stopped, args=(ready, on_sigterm))
    passed: list[int] = []

    def launcher() -> None:
        with signals_handled_by_lightning(workers_are_child_processes=True) as passed_on:
            worker.start()
            assert ready.wait(timeout=10)
            os.kill(os.getpid(), signum)
            passed.extend(passed_on)
            time.sleep(30)  # the launcher's wait for results that never come; the wake-up ends it

    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        run_command(launcher, "train")
    worker.join(timeout=10)
    return ended.value.code, passed, worker.exitcode, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_the_launcher_passes_the_signal_on_and_ends_once_its_workers_are_gone(
    signum: int, capsys: pytest.CaptureFixture
) -> None:
    status, passed, worker_exit, seconds = launch_and_signal(signum, signal.SIG_DFL)
    assert status == 128 + signum and seconds < 5
    assert passed == [signum]
    assert worker_exit == -signal.SIGTERM, "the training process got SIGTERM, as Lightning stops on it"
    assert capsys.readouterr().err.strip() == f"error: train interrupted by {signal.Signals(signum).name}"


@pytest.mark.slow
def test_a_worker_that_does_not_stop_is_killed_after_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "WORKERS_GRACE_SECONDS", 0.5)
    status, _, worker_exit, seconds = launch_and_signal(signal.SIGTERM, signal.SIG_IGN)
    assert status == 143 and seconds < 5
    assert worker_exit == -signal.SIGKILL
