"""Run a command and end it on bad input: one line ``error: ...`` on stderr and exit status 2, never a traceback.

Every command (train, eval, predict, export) runs its ``@hydra.main`` function through :func:`run_command`.
Hydra composes the config once; with ``HYDRA_FULL_ERROR`` set it re-raises what goes wrong while composing
(an unknown key, a value of the wrong type, a missing option) instead of printing its multi-line report.
The schema check of a single run raises :class:`UserError` in a Hydra callback before the task starts
(``config/check.py``), carried out of Hydra by :class:`StopBeforeRun`. Both end here, before the job's
logging is set up, so the line is printed. Inside a task :func:`exit_bad_input` logs it instead.
"""

import atexit
import contextlib
import functools
import gc
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn, TypeVar, cast

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.config.explain import explain, explain_null_group
from lenet_lightning.errors import EXIT_BAD_INPUT, Interrupted, NothingToDo, UserError

log = logging.getLogger(__name__)
Hook = TypeVar("Hook", bound=Callable[..., None])
BAD_INPUT = (
    UserError,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
    OmegaConfBaseException,
)


class StopBeforeRun(BaseException):
    """Carries what a Hydra callback raised out of Hydra, which would turn an ``Exception`` into a warning.

    Like ``SystemExit`` it gets through Hydra's ``except Exception``; :func:`run_command` raises ``reason`` again.
    """

    def __init__(self, reason: Exception) -> None:
        super().__init__(str(reason))
        self.reason = reason


def stops_the_command(hook: Hook) -> Hook:
    """Decorate a Hydra callback hook so that an error in it stops the command instead of being a warning."""

    @functools.wraps(hook)
    def checked_hook(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception as error:
            raise StopBeforeRun(error) from error

    return cast(Hook, checked_hook)


def run_command(
    main: Callable[[], Any], command: str, on_interrupt: Callable[[Interrupted], str] | None = None
) -> None:
    """Run a ``@hydra.main`` function with ``sys.argv``; bad input ends it with one line and exit status 2.

    A Ctrl-C or SIGTERM that lands outside training (while the config is composed, data is checked, or the
    end-of-run figures are drawn) ends the command with one line and the shell's status for that signal (130,
    143) instead of a traceback; ``on_interrupt`` records it first and says what to do next (training marks its
    run ``interrupted`` and gives the command that continues it).
    Inside ``Trainer.fit`` Lightning handles both signals itself (:func:`signals_handled_by_lightning`).
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"  # re-raise composition errors, explained below in one line
    exit_without_collecting()
    for stream in (sys.stdout, sys.stderr):  # an ASCII terminal or C locale shows a non-ASCII path escaped
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks around the real error
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is a KeyboardInterrupt from here on
    try:
        _run(main)
    except NothingToDo as done:
        print(done)
    except BAD_INPUT as error:
        print(f"error: {explain(error, command)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ValueError as error:  # Hydra's report of group=null, which it raises before composing
        if not str(error).startswith("Config group override must be"):
            raise
        print(f"error: {explain_null_group(sys.argv[1:], command)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (KeyboardInterrupt, Interrupted) as caught:
        stop = caught if isinstance(caught, Interrupted) else Interrupted(signal.SIGINT)
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the record short
            signal.signal(signum, signal.SIG_IGN)
        advice = on_interrupt(stop) if on_interrupt is not None else ""
        print(f"error: {command} {stop}{advice}", file=sys.stderr)
        sys.exit(stop.exit_code)
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_without_collecting() -> None:
    """When the process exits, keep the objects still alive to its end instead of collecting them one by one.

    With torch and Lightning loaded, Python's last garbage collections take over a second of every command's
    exit (1.4 s here, 0.3 s with this). The exit functions all still run (logging's, TensorBoard's, the data
    loaders' shutdown): freezing only spares the collector's walk over objects that die with the process.
    """
    atexit.unregister(gc.freeze)  # once, however often a process runs a command
    atexit.register(gc.freeze)


_lightning_handles_signals = False
_passed_on: list[int] | None = None  # while a ddp_spawn launcher waits: the signals passed on to its workers


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside training: raise, so the command ends as it does for Ctrl-C; inside it, Lightning stops."""
    if _passed_on is None:
        if not _lightning_handles_signals:
            raise Interrupted(signum)
    elif _passed_on and not multiprocessing.active_children():
        raise Interrupted(_passed_on[0])  # the workers have stopped: stop waiting for results they never send
    else:
        if not _passed_on:
            threading.Thread(target=_wake_when_workers_end, daemon=True).start()
        _passed_on.append(signum)
        for worker in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)


# How long workers get to stop at their next batch before they are killed; what they would lose is the current
# epoch, which SIGTERM does not save either.
WORKERS_GRACE_SECONDS = 20.0


def _wake_when_workers_end() -> None:
    """Signal the launching process's main thread once its workers are gone, killing any that do not stop.

    A worker stopped by SIGTERM exits with status 0 (Lightning's ``SIGTERMException`` is a ``SystemExit``)
    without sending results, so the launcher would wait for them for ever. A worker can also hang: when the
    signal reaches the processes in different batches, one may wait in a collective for a peer that has
    already stopped (gloo's timeout is 30 minutes), so stragglers are killed after the grace period.
    """
    deadline = time.monotonic() + WORKERS_GRACE_SECONDS
    while workers := multiprocessing.active_children():
        if time.monotonic() > deadline:
            for worker in workers:
                worker.kill()
            deadline = math.inf
        time.sleep(0.1)
    if _passed_on is not None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


@contextlib.contextmanager
def signals_handled_by_lightning(workers_are_child_processes: bool = False) -> Iterator[list[int]]:
    """While ``Trainer.fit`` runs: Lightning stops the loops at the next batch and keeps the last checkpoint.

    Lightning calls the SIGTERM handler it found (ours) after its own, so ours must not raise then; Ctrl-C is
    Lightning's ``KeyboardInterrupt`` handling. With ``ddp_spawn`` the launching process trains nothing and
    Lightning handles no signal in it: a Ctrl-C or SIGTERM it gets (from a supervisor, ``kill``, ``timeout``)
    is passed on to the training processes as SIGTERM, so they stop as Lightning stops on SIGTERM; the signals
    passed on are yielded for the caller to report.
    """
    global _lightning_handles_signals, _passed_on
    before, _lightning_handles_signals = _lightning_handles_signals, True
    passed_on: list[int] = []
    if workers_are_child_processes:
        _passed_on = passed_on
        previous_sigint = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield passed_on
    finally:
        _lightning_handles_signals = before
        if workers_are_child_processes:
            _passed_on = None
            signal.signal(signal.SIGINT, previous_sigint)


def _run(main: Callable[[], Any]) -> None:
    """Call ``main``; what one of its Hydra callbacks stopped it with is raised as itself."""
    try:
        main()
    except StopBeforeRun as stop:
        raise stop.reason from None


def exit_bad_input(error: UserError) -> NoReturn:
    """End a task on bad input found while it runs: logged once (Hydra's logging sends errors to stderr)."""
    log.error("error: %s", error)
    sys.exit(EXIT_BAD_INPUT)
