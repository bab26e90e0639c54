"""From a composed config to a finished run: build data, model and Trainer, fit, and report.

Shared by the command line (``train.py``), the tests and the benchmark, so all three run the same code.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.reporting.console import route_to_logging
from lenet_lightning.reporting.tensorboard_events import write_summaries
from lenet_lightning.speed.cpu_layers import convert_to_fast_cpu_layers
from lenet_lightning.training.checkpoints import checkpoint_to_resume, interruption_of
from lenet_lightning.training.divergence import TrainingDiverged
from lenet_lightning.training.launch_guard import refuse_reexecution_in_multirun
from lenet_lightning.training.run_folder import check_writable
from lenet_lightning.training.throughput import THROUGHPUT_KEY

REPORTED_METRICS = ("train/loss", "train/acc", "test/acc")
HPARAM_SECTIONS = ("dataset", "model", "optimizer", "scheduler", "augment")


@dataclass
class RunResult:
    """What a finished run reports: final metrics of the last epoch and throughput."""

    status: str  # "completed"; other states ("diverged", "failed") are written by the code that detects them
    train_loss: float
    train_acc: float
    test_acc: float
    examples_per_second: float
    device: str
    output_dir: Path
    reason: str = ""  # why a run did not complete

    def write_json(self, path: Path) -> None:
        """Save the result as ``result.json`` in the run folder, where sweep summaries and tools read it."""
        path.write_text(json.dumps({**asdict(self), "output_dir": str(self.output_dir)}, indent=2) + "\n")

    def summary_lines(self) -> list[str]:
        folder = display_path(self.output_dir)
        return [
            f"loss {self.train_loss:.3f}, train acc {self.train_acc:.3f}, test acc {self.test_acc:.3f}",
            f"{self.examples_per_second:.1f} examples/sec on {self.device} "
            "(wall clock of the training epochs, per-epoch test evaluation included)"
            if math.isfinite(self.examples_per_second)
            else f"trained on {self.device} (throughput not measured: the epoch_timer callback is off)",
            f"run folder: {folder}",
            f"view the curves: tensorboard --logdir {folder}",
        ]


def display_path(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (what users type), else absolute."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def build(
    cfg: DictConfig, datamodule: MNISTDataModule | None = None
) -> tuple[MNISTDataModule, LeNetClassifier, L.Trainer]:
    """Instantiate the DataModule (unless given), the LightningModule and the Trainer (with logger and callbacks)."""
    datamodule = datamodule if datamodule is not None else instantiate(cfg.dataset)
    module = LeNetClassifier(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        num_classes=len(datamodule.classes),
        class_names=datamodule.classes,
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        augment=OmegaConf.to_container(cfg.augment, resolve=True),
        compile_mode=cfg.compile,
        memory_format=cfg.memory_format,
    )
    if cfg.fast_cpu_layers:  # faster CPU training kernels; GPUs, compilers and exporters see the stock ones
        convert_to_fast_cpu_layers(module.net)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks.append(RunReport(hparams_of(cfg)))
    logger = instantiate(cfg.logger)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return datamodule, module, trainer


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """The flat hyper-parameters shown in TensorBoard's HPARAMS tab: the short keys plus the recipe sections."""
    params: dict[str, Any] = {key: cfg[key] for key in ("lr", "epochs", "seed")}
    for section in HPARAM_SECTIONS:
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if not key.startswith("_") and key not in ("data_dir", "seed"):
                params[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return params


def write_hparams_session(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """Register the run in the HPARAMS tab, at the start so interrupted runs show up too.

    Lightning's ``log_hyperparams(params, metrics)`` would also log each metric at step 0; here the tab
    takes its values from the per-epoch scalars themselves, so the curves keep their 1..N steps.
    """
    write_summaries(logger, list(hparams(params, {tag: 0.0 for tag in REPORTED_METRICS})))


class RunReport(L.Callback):
    """The parts of the report made inside the training process(es), on rank 0 only.

    Registers the HPARAMS session when training starts, so interrupted runs show up too.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    write_hparams_session(logger, self.params)


def fit(cfg: DictConfig) -> RunResult:
    """Check, seed, build, train with per-epoch test evaluation, and return the final metrics.

    Bad input raises :class:`UserError` before any data is read; a diverged run returns status
    ``diverged``; SIGTERM or Ctrl-C raise :class:`~lenet_lightning.training.checkpoints.TrainingInterrupted`.
    With several processes the metrics are the synchronised ones of rank 0, also in the process that
    launched them (``ddp_spawn``).
    """
    route_to_logging()  # Lightning's lines and Python warnings through the run's logging config
    output_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(cfg.ckpt_path, cfg.get("resume"), output_dir)
    check_writable(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: MNISTDataModule = instantiate(cfg.dataset)
    datamodule.prepare_data()  # fail on missing or damaged data before the Trainer is even built
    datamodule, module, trainer = build(cfg, datamodule)
    refuse_reexecution_in_multirun(trainer)
    status, reason = "completed", ""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except TrainingDiverged as error:
        status, reason = "diverged", str(error)
    except BaseException as error:
        interruption = interruption_of(error, trainer)
        if interruption is None:
            raise
        raise interruption from None
    metrics = trainer.callback_metrics
    device = trainer.strategy.root_device
    return RunResult(
        status=status,
        train_loss=float(metrics.get("train/loss", math.nan)),
        train_acc=float(metrics.get("train/acc", math.nan)),
        test_acc=float(metrics.get("test/acc", math.nan)),
        examples_per_second=float(metrics.get(THROUGHPUT_KEY, math.nan)),
        device=f"{trainer.world_size} x {device.type}" if trainer.world_size > 1 else str(device),
        output_dir=output_dir,
        reason=reason,
    )
