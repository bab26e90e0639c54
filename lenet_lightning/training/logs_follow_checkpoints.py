"""TensorBoard's curves kept consistent with ``checkpoints/last.ckpt``, however the previous session ended."""

from pathlib import Path

import lightning as L

from lenet_lightning.reporting.tensorboard_events import restart_at, wait_to_be_read_last


class LogsFollowCheckpoints(L.Callback):
    """Keep TensorBoard's curves consistent with ``last.ckpt``, however the previous run ended.

    At each epoch start the loggers are flushed, so a run killed with SIGKILL loses no epoch that its
    checkpoint holds. On resume a TensorBoard "session start" marker at the first step to redo makes
    TensorBoard drop anything the killed run logged past its checkpoint: one continuous curve, no
    duplicate epoch.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:  # other processes have no event file
            return
        first_step = trainer.current_epoch + 1  # metrics are logged against the 1-based epoch
        for logger in trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
                restart_at(logger, first_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "flush"):
                experiment.flush()


def name_event_files_after_the_last(trainer: L.Trainer) -> None:
    """Before a resumed fit makes its event file: make sure TensorBoard replays it after the earlier sessions'.

    Lightning creates the event file before the first callback hook runs, so this is called ahead of ``fit``.
    """
    for logger in trainer.loggers:
        if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
            wait_to_be_read_last(Path(logger.log_dir))
