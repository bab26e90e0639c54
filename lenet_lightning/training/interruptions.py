"""How a signal ends training: Lightning's reports of SIGTERM and Ctrl-C turned into :class:`TrainingInterrupted`.

SIGTERM needs no handler of ours: Lightning 2.6 already stops the loops at the next batch and raises
``SIGTERMException`` (exiting 0 unless caught); :func:`interruption_of` maps it to exit status 143.
"""

import signal

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lenet_lightning.errors import exit_status_of


class TrainingInterrupted(Exception):
    """Training stopped by a signal; the last end-of-epoch checkpoint and flushed logs are on disk."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_status_of(self.signum)


def interruption_of(error: BaseException, trainer: L.Trainer) -> TrainingInterrupted | None:
    """Recognise how Lightning reports SIGTERM (``SIGTERMException``) and Ctrl-C (``SystemExit`` after shutdown)."""
    if isinstance(error, SIGTERMException):
        return TrainingInterrupted(signal.SIGTERM)
    if isinstance(error, SystemExit | KeyboardInterrupt) and trainer.interrupted:
        return TrainingInterrupted(signal.SIGINT)
    return None
