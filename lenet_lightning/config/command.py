"""Run a command and end it on bad input: one line ``error: ...`` on stderr and exit status 2, never a traceback.

Every command (train, eval, predict, export) runs its ``@hydra.main`` function through :func:`run_command`.
Hydra composes the config once; with ``HYDRA_FULL_ERROR`` set it re-raises what goes wrong while composing
(an unknown key, a value of the wrong type, a missing option) instead of printing its multi-line report.
The schema check of a single run raises :class:`UserError` in a Hydra callback before the task starts
(``config/check.py``), carried out of Hydra by :class:`StopBeforeRun`. Both end here, before the job's
logging is set up, so the line is printed. Inside a task :func:`exit_bad_input` logs it instead.
"""

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.config.explain import explain
from lenet_lightning.errors import EXIT_BAD_INPUT, NothingToDo, UserError

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


def run_command(main: Callable[[], Any], command: str) -> None:
    """Run a ``@hydra.main`` function with ``sys.argv``; bad input ends it with one line and exit status 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # re-raise composition errors, explained below in one line
    try:
        _run(main)
    except NothingToDo as done:
        print(done)
    except BAD_INPUT as error:
        print(f"error: {explain(error, command)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


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
