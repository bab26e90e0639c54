"""What every command reports to the user: the one error class they can fix, and the exit statuses.

At the top of the package so that data, model, speed, runs and inference raise it without importing the config.
"""

import os
import signal
import sys
from types import FrameType

EXIT_SOME_SKIPPED = 1  # predict: some pictures skipped; export: the exported model failed its check (nothing kept)
EXIT_BAD_INPUT = 2  # bad input: the command line or a file it names; nothing was run or written
EXIT_DIVERGED = 3  # training diverged (the loss became NaN or infinite)


def exit_status_of(signum: int) -> int:
    """What a shell reports for a process ended by that signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + int(signum)


EXIT_INTERRUPTED = exit_status_of(signal.SIGINT)
EXIT_TERMINATED = exit_status_of(signal.SIGTERM)


class UserError(Exception):
    """Bad input or a missing resource, with a message that names the problem and the fix."""


class NothingToDo(Exception):
    """The command would change nothing (resuming a run that has all its epochs and its record).

    Not an error: the run is as the command asks, so the message is printed and the command exits with 0,
    and running the same command again (a job scheduler's retry) is harmless.
    """


class Interrupted(BaseException):
    """A signal (Ctrl-C, SIGTERM) that arrived outside training, where Lightning does not handle it.

    A ``BaseException``, like ``KeyboardInterrupt``: nothing meant for errors catches it on its way out.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_status_of(self.signum)


def end_quietly_on_signals(command: str) -> None:
    """Until the command's own handling starts: Ctrl-C or SIGTERM end it with one line, not an import traceback.

    For ``python -m lenet_lightning.<command>`` while its modules are imported; nothing has been written then.
    """

    def end(signum: int, frame: FrameType | None) -> None:
        sys.stderr.write(f"error: {command} {Interrupted(signum)} while starting; nothing was done\n")
        os._exit(exit_status_of(signum))

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, end)
