"""The console during training: a progress bar on a terminal, one log line per epoch otherwise, in every process.

Redirected to a file or a CI log, TQDM's bar turns into carriage returns and cursor-up codes on lines of
thousands of characters; there one readable line per epoch replaces it.
"""

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from omegaconf import OmegaConf

from lenet_lightning.reporting.console import configure_spawned_process

log = logging.getLogger(__name__)

EPOCH_METRICS = {"train/loss": "train loss", "train/acc": "train acc", "val/acc": "val acc", "test/acc": "test acc"}


def on_terminal() -> bool:
    """Both output streams are terminals: a bar redrawn in place is readable there and nowhere else."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_bar(refresh_rate: int) -> ProgressBar:
    """TQDM's bar, redrawn every ``refresh_rate`` steps, on a terminal; :class:`EpochLines` otherwise."""
    if on_terminal():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    log.debug("output is not a terminal: progress is one line per epoch")
    return EpochLines()


class EpochLines(ProgressBar):
    """One log line per finished epoch: its metrics and wall time (test evaluation included).

    The train metrics are logged in the LightningModule's ``on_train_epoch_end``, which Lightning calls
    after the callbacks' own, so an epoch's line is written when the next epoch starts or training ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_started = 0.0
        self._finished: tuple[int, float] | None = None  # (epoch, seconds) of an epoch whose line is due

    def disable(self) -> None:
        self._enabled = False  # Lightning disables the progress of every process but rank 0

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        log.info(sep.join(map(str, args)))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_finished_epoch(trainer)
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finished = (trainer.current_epoch, time.perf_counter() - self._epoch_started)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_finished_epoch(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write_finished_epoch(trainer)  # SIGTERM is raised once an epoch has ended, before the next starts

    def _write_finished_epoch(self, trainer: L.Trainer) -> None:
        if self._finished is None:
            return
        epoch, seconds = self._finished
        self._finished = None
        if not self._enabled:
            return
        total = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
        metrics = trainer.callback_metrics
        values = [f"{label} {float(metrics[key]):.3f}" for key, label in EPOCH_METRICS.items() if key in metrics]
        log.info("epoch %d%s: %s", epoch + 1, total, ", ".join([*values, f"{seconds:.1f} s"]))


class ConsoleInEveryProcess(L.Callback):
    """The run's logging in every training process, and the model's size in one line.

    Processes started by ``ddp_spawn`` begin with Python's default logging: Lightning's lines would reach
    stderr in its own format and our epoch lines nowhere. Unpickling this callback there, before Lightning
    logs anything, applies the run's Hydra logging config (captured here in the launching process).
    Lightning's model summary is off (``enable_model_summary``): its table lists the metric objects with
    0 parameters and a FLOPs column of zeros, as the module has no example input.
    """

    def __init__(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        self.job_logging: dict[str, Any] | None = None
        self.verbose: bool | str | list[str] = False
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            self.job_logging = OmegaConf.to_container(hydra.job_logging, resolve=True)
            self.verbose = OmegaConf.to_container(hydra.verbose) if OmegaConf.is_list(hydra.verbose) else hydra.verbose

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        configure_spawned_process(self.job_logging, self.verbose)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            total = sum(parameter.numel() for parameter in pl_module.parameters())
            trainable = sum(parameter.numel() for parameter in pl_module.parameters() if parameter.requires_grad)
            log.info("model: %s parameters (%s trainable)", f"{total:,}", f"{trainable:,}")
