"""A callback the reliability tests add with ``+callbacks.fault=...`` to send a real signal mid-training."""

import os
from pathlib import Path

import lightning as L


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
