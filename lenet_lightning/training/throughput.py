"""Wall-clock throughput of training, measured the way the README reports it."""

import time
from typing import Any

import lightning as L
import torch

THROUGHPUT_KEY = "examples_per_second"  # in callback_metrics, where the training run reads it


class EpochTimer(L.Callback):
    """Times each training epoch from its first batch fetch to its end, per-epoch test evaluation included.

    Lightning's ``ThroughputMonitor`` logs per step and needs FLOP counts; one wall-clock figure per run
    is all the summary line needs.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.examples = 0
        self.earlier_rate = 0.0  # of the session that saved the checkpoint this one started from
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.examples += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        self.seconds += time.perf_counter() - self._epoch_start

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report in ``callback_metrics``: with ``ddp_spawn`` they are all that returns to the launching process."""
        # Each process times its own share of the data; together they train world_size times as many examples.
        trainer.callback_metrics[THROUGHPUT_KEY] = torch.tensor(self.examples_per_second * trainer.world_size)

    @property
    def examples_per_second(self) -> float:
        """This session's throughput; a session that trains no epoch (finishing a run) reports the checkpoint's."""
        return self.examples / self.seconds if self.seconds else self.earlier_rate

    def state_dict(self) -> dict[str, float]:
        return {THROUGHPUT_KEY: self.examples_per_second}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_rate = float(state_dict.get(THROUGHPUT_KEY, 0.0))
