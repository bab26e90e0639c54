"""Stop a run whose loss became NaN or infinite, instead of training on garbage for the remaining epochs."""

import lightning as L
import torch
from torch import Tensor


class TrainingDiverged(Exception):
    """The training loss stopped being a finite number; the run ends with status ``diverged``."""


class StopOnDivergence(L.Callback):
    """Raise :class:`TrainingDiverged` within a few steps of the loss becoming NaN or inf.

    The check is kept on the device and read back every ``check_every_n_steps`` steps and at the last
    step of each epoch, which is before the epoch's evaluation and checkpoint, so no NaN weights are
    ever saved. Raising (rather than ``trainer.should_stop``) ends the epoch at once and skips the save.
    Lightning's ``EarlyStopping(check_finite=True)`` only looks at a monitored value once per epoch,
    after the checkpoint of that epoch may already hold NaN weights.
    """

    def __init__(self, check_every_n_steps: int) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._all_finite: Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        finite = torch.isfinite(loss.detach())
        self._all_finite = finite if self._all_finite is None else self._all_finite & finite
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % self.check_every_n_steps and not last_of_epoch:
            return
        # The one host sync, every n steps; with several processes all of them agree, so all stop together.
        if not trainer.strategy.reduce_boolean_decision(bool(self._all_finite), all=True):
            raise TrainingDiverged(
                f"training loss became {float(loss):g} by step {batch_idx + 1} of epoch {trainer.current_epoch + 1}; "
                "lower the learning rate (lr=...)"
            )
        self._all_finite = None
