"""Callbacks the fault tests add with ``+callbacks.fault=...`` to send a real signal or blow up mid-training."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.training.interruptions import TrainingInterrupted
from lenet_lightning.training.run import fit

# The error-analysis figures are not what the fault tests look at, and rendering them costs seconds per run.
NO_FIGURES = "~callbacks.error_analysis"
# A recipe that learns the tiny data set in 4 epochs of 8 steps, so resumed and unbroken runs can be compared.
RECIPE = ("epochs=4", "dataset.batch_size=64", "lr=0.3", "model.activation=relu", "accelerator=cpu", NO_FIGURES)
CURVES = ("train/loss", "train/acc", "test/acc")


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard curves of ``CURVES``, as (epoch, value) points."""
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in CURVES}


def fault(epoch: int, batch: int, signum: int, marker: Path) -> list[str]:
    """Overrides adding the test callback that sends ``signum`` at that point (``batch=0``: before the checkpoint)."""
    prefix = "+callbacks.fault"
    return [
        f"{prefix}._target_=tests.reliability_faults.SignalAt",
        f"{prefix}.epoch={epoch}",
        f"{prefix}.batch={batch}",
        f"{prefix}.signum={int(signum)}",
        f"{prefix}.marker={marker}",
    ]


def fit_until_ctrl_c(cfg: DictConfig) -> TrainingInterrupted:
    """Train ``cfg`` (which sends itself a SIGINT with :func:`fault`) and return how the run was interrupted."""
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingInterrupted) as raised:
            fit(cfg)
    finally:
        signal.signal(signal.SIGINT, previous_handler)  # Lightning ignores further Ctrl-C while shutting down
    return raised.value


class SignalAt(L.Callback):
    """Send ``signum`` to this process during epoch ``epoch`` (1-based), once per marker file.

    ``batch=N`` fires after training batch N. ``batch=0`` fires after the epoch's evaluation was logged
    and flushed to disk but before its checkpoint is written: the worst moment for duplicate curves.
    The marker file makes a resumed run in the same folder train on undisturbed, as after a real kill.
    """

    def __init__(self, epoch: int, batch: int, signum: int, marker: str) -> None:
        self.epoch, self.batch, self.signum, self.marker = epoch, batch, signum, Path(marker)

    def _fire(self) -> None:
        if not self.marker.exists():
            self.marker.write_text(str(self.signum))
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.current_epoch + 1 == self.epoch and batch_idx + 1 == self.batch:
            self._fire()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch and self.batch == 0:
            for logger in trainer.loggers:
                logger.experiment.flush()
            self._fire()


class BlowUpAt(L.Callback):
    """Multiply every weight by 1e30 at the start of epoch ``epoch`` (1-based), so its loss becomes NaN."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            for parameter in pl_module.parameters():
                parameter.data.mul_(1e30)
