"""From a composed config to a finished run: build data, model and Trainer, fit, and report.

Shared by the command line (``train.py``), the tests and the benchmark, so all three run the same code.
"""

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

from lenet_lightning.config.command import signals_handled_by_lightning
from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.errors import UserError
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.reporting.console import route_to_logging
from lenet_lightning.reporting.error_analysis import ErrorAnalysis
from lenet_lightning.reporting.predictions import predict_test_set
from lenet_lightning.reporting.tensorboard_events import write_summaries
from lenet_lightning.runs.checkpoint_fit import checkpoint_to_resume
from lenet_lightning.runs.commands import override, train_command
from lenet_lightning.runs.disk import disk_errors_of_threads, is_disk_error
from lenet_lightning.runs.folder import check_writable
from lenet_lightning.runs.layout import LAST_CHECKPOINT, RESULT_FILE, RunStatus
from lenet_lightning.runs.record import write_result_json
from lenet_lightning.search.pruning import pruned_at
from lenet_lightning.speed.apply import with_speed_options
from lenet_lightning.training.divergence import TrainingDiverged
from lenet_lightning.training.interruptions import TrainingInterrupted, interruption_of
from lenet_lightning.training.launch_guard import refuse_reexecution_in_multirun
from lenet_lightning.training.logs_follow_checkpoints import name_event_files_after_the_last
from lenet_lightning.training.preflight import check_run_rules
from lenet_lightning.training.process_faults import QuietWhenAPeerDied, process_death_of
from lenet_lightning.training.throughput import THROUGHPUT_KEY

log = logging.getLogger(__name__)
REPORTED_METRICS = ("train/loss", "train/acc", "test/acc")
HPARAM_SECTIONS = ("dataset", "model", "optimizer", "scheduler", "augment")
WALL_SECONDS_KEY = "wall_seconds"  # in callback_metrics, where fit() reads it (also after ddp_spawn)
LAST_EPOCH_KEY = "last_epoch_metrics"  # in each checkpoint: REPORTED_METRICS of the epoch it holds


@dataclass
class RunResult:
    """What a run reports: final metrics of the last epoch and throughput.

    ``status`` is ``completed``, ``diverged`` (the training loss became NaN or infinite), ``pruned`` (stopped
    early by its search), ``no_epochs`` (the run ended without training an epoch, e.g. resuming a run that
    already has all its epochs) or ``failed``;
    ``reason`` says why when it is not ``completed``. Metrics that were never measured are NaN.
    """

    status: RunStatus
    train_loss: float
    train_acc: float
    test_acc: float
    examples_per_second: float
    device: str
    output_dir: Path
    reason: str = ""
    epochs: int = 0  # epochs the model has trained, earlier sessions of a resumed run included
    wall_seconds: float = math.nan  # training time, earlier sessions of a resumed run included
    val_acc: float = math.nan  # on the validation split (dataset.val_size), what a search chooses on
    val_loss: float = math.nan

    def write_json(self, path: Path) -> None:
        """Save the result as ``result.json`` in the run folder, where sweep summaries and tools read it.

        Strict JSON (NaN is written as null; the status says why) and atomic (a full disk never leaves it empty).
        """
        write_result_json(path, {**asdict(self), "output_dir": str(self.output_dir)})

    def summary_lines(self) -> list[str]:
        folder = display_path(self.output_dir)
        if self.status == RunStatus.NO_EPOCHS:
            return [self.reason, f"run folder: {folder}"]
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
    )
    module = with_speed_options(module, cfg)
    # callbacks.<name>=null turns that callback off, as ~callbacks.<name> does.
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    callbacks += [RunReport(hparams_of(cfg)), QuietWhenAPeerDied()]
    logger = instantiate(cfg.logger)
    # Without its callback Lightning would write a checkpoint of its own, under a name that resume cannot find.
    off = {} if cfg.callbacks.get("model_checkpoint") is not None else {"enable_checkpointing": False}
    if off:
        log.warning("callbacks.model_checkpoint=null: no checkpoint is written, so this run cannot be resumed")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **off)
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
    """The parts of the report made inside the training process(es).

    Registers the HPARAMS session when training starts (rank 0 only), so interrupted runs show up too.
    Times the run: the seconds of earlier sessions travel in the checkpoint, so a resumed run reports its
    whole training time, and a run started afresh in an old folder only its own.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.earlier_seconds = 0.0
        self.last_epoch: dict[str, float] = {}  # the metrics of the checkpoint's epoch, when one was loaded
        self._started: float | None = None

    @property
    def wall_seconds(self) -> float:
        return self.earlier_seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    write_hparams_session(logger, self.params)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.callback_metrics[WALL_SECONDS_KEY] = torch.tensor(self.wall_seconds, dtype=torch.float64)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # a diverged run reports its time too

    def state_dict(self) -> dict[str, float]:
        return {WALL_SECONDS_KEY: self.wall_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_seconds = float(state_dict.get(WALL_SECONDS_KEY, 0.0))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """The epoch's metrics travel with its checkpoint: a run killed before its result can be finished from it."""
        metrics = trainer.callback_metrics
        checkpoint[LAST_EPOCH_KEY] = {tag: float(metrics[tag]) for tag in REPORTED_METRICS if tag in metrics}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.last_epoch = dict(checkpoint.get(LAST_EPOCH_KEY) or {})


class OutOfDisk(UserError):
    """The run folder's disk filled up (or became read-only) while training; the last checkpoint is kept."""


def disk_error_in(error: BaseException) -> OSError | None:
    """The out-of-disk ``OSError`` behind ``error`` (raised itself, or the cause of what was raised), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if is_disk_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def out_of_disk(error: OSError, output_dir: Path) -> OutOfDisk:
    """One line naming the problem and the command that continues the run once there is room again."""
    problem = error.strerror or os.strerror(error.errno or 0)
    return OutOfDisk(
        f"{problem} while training in {output_dir}; checkpoints/last.ckpt holds the last finished epoch: free some "
        f"space (or fix the disk), then continue with {train_command(override('resume', str(output_dir)))}"
    )


def no_epoch_reason(trainer: L.Trainer) -> str:
    """Why a run that returned normally trained no epoch."""
    if trainer.current_epoch >= trainer.max_epochs:
        return (
            f"no epoch ran: the checkpoint already holds all {trainer.max_epochs} epochs; "
            "give a larger epochs=... to train on"
        )
    return "no epoch ran: no training batches (see trainer.limit_train_batches and dataset.val_size)"


def fit(cfg: DictConfig) -> RunResult:
    """Check, seed, build, train with per-epoch test evaluation, and return the final metrics.

    Bad input raises :class:`UserError` before any data is read; a diverged run returns status
    ``diverged``, a run that trained no epoch ``no_epochs``; SIGTERM or Ctrl-C raise
    :class:`~lenet_lightning.training.interruptions.TrainingInterrupted`; a disk that fills up while training
    raises :class:`OutOfDisk` after recording the run as ``failed`` (when ``result.json`` still fits).
    With several processes the metrics are the synchronised ones of rank 0, also in the process that
    launched them (``ddp_spawn``).
    """
    route_to_logging()  # Lightning's lines and Python warnings through the run's logging config
    check_run_rules(cfg)  # the command checked them before its folder was made; tests and benchmarks call fit directly
    output_dir = Path(cfg.output_dir)
    ckpt_path = checkpoint_to_resume(cfg.ckpt_path, cfg.get("resume"), output_dir)
    check_writable(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: MNISTDataModule = instantiate(cfg.dataset)
    datamodule.prepare_data()  # fail on missing or damaged data before the Trainer is even built
    datamodule, module, trainer = build(cfg, datamodule)
    refuse_reexecution_in_multirun(trainer)
    status, reason = RunStatus.COMPLETED, ""
    announce_nodes(trainer)
    if ckpt_path is not None:
        name_event_files_after_the_last(trainer)
    try:
        with stops_of(trainer, output_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except TrainingDiverged as error:
        status, reason = RunStatus.DIVERGED, str(error)
    if status == RunStatus.COMPLETED:
        status, reason = status_of_finished_fit(trainer)
    if status == RunStatus.COMPLETED and (epoch := pruned_at(trainer)) is not None:
        status, reason = RunStatus.PRUNED, f"pruned by the search after epoch {epoch}"
    return result_of(trainer, status, reason, output_dir)


@contextmanager
def stops_of(trainer: L.Trainer, output_dir: Path) -> Iterator[None]:
    """What stops a run from outside, as the run reports it: a signal or a dead process, or a full disk.

    A ``ddp_spawn`` launcher passes a signal it gets on to its workers, which then stop as Lightning stops.
    """
    spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
    passed_on: list[int] = []
    try:
        # TensorBoard's writer thread dies of a full disk too; training raises that error at its next write.
        with disk_errors_of_threads(), signals_handled_by_lightning(spawned) as passed_on:
            yield
    except TrainingDiverged:
        raise
    except BaseException as error:
        if passed_on:  # the workers stopped because this process passed a signal on to them
            raise TrainingInterrupted(passed_on[0]) from None
        interruption = interruption_of(error, trainer) or process_death_of(error, trainer)
        if interruption is not None:
            raise interruption from None
        disk_error = disk_error_in(error)
        if disk_error is None:
            raise
        failure = out_of_disk(disk_error, output_dir)
        if trainer.is_global_zero:
            record_failure_if_room(result_of(trainer, RunStatus.FAILED, str(failure), output_dir))
        raise failure from None
    if passed_on:  # the workers stopped early and sent results: the run was interrupted all the same
        raise TrainingInterrupted(passed_on[0])


def finish(cfg: DictConfig) -> RunResult:
    """End a run whose checkpoint holds every epoch but whose end was never recorded, without training.

    Killed after its last checkpoint, or stopped in its end-of-run analysis (a signal, a full disk): the Trainer
    restores the checkpoint (weights, epoch, the callbacks' states) and has no epoch left to train; then the
    analysis runs as at the end of training, and the result takes the last epoch's metrics from the checkpoint
    and the test accuracy from the analysis's pass over the test set.
    """
    route_to_logging()
    output_dir = Path(cfg.output_dir)
    checkpoint = output_dir / LAST_CHECKPOINT
    check_writable(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: MNISTDataModule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule, module, trainer = build(cfg, datamodule)
    log.info(
        "%s holds all %d epochs but the run's end was not recorded: finishing it (analysis, figures, %s)",
        checkpoint,
        int(cfg.trainer.max_epochs),
        RESULT_FILE,
    )
    name_event_files_after_the_last(trainer)
    with stops_of(trainer, output_dir):
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)  # trains no epoch
        analyses = [callback for callback in trainer.callbacks if isinstance(callback, ErrorAnalysis)]
        for analysis in analyses:
            analysis.analyse(trainer, module)
    predictions = analyses[0].predictions if analyses else predict_test_set(module, datamodule)
    report = next(callback for callback in trainer.callbacks if isinstance(callback, RunReport))
    metrics = {tag: math.nan for tag in REPORTED_METRICS} | report.last_epoch
    metrics["test/acc"] = float((predictions.predicted == predictions.labels).float().mean())
    trainer.callback_metrics.update({tag: torch.tensor(value) for tag, value in metrics.items()})
    return result_of(trainer, RunStatus.COMPLETED, "", output_dir)


def announce_nodes(trainer: L.Trainer) -> None:
    """A run over several machines waits for all of them: say on the console what it waits for and where."""
    if trainer.num_nodes > 1 and trainer.is_global_zero:
        address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '(a free port)')}"
        log.info(
            "waiting for %d nodes (%d processes in all) to join at %s; start the same command on every node "
            "with its NODE_RANK (see docs/scaling-out.md)",
            trainer.num_nodes,
            trainer.world_size,
            address,
        )


def status_of_finished_fit(trainer: L.Trainer) -> tuple[RunStatus, str]:
    """``completed``, unless no epoch ran or the last epoch's loss is not finite (with the divergence check off).

    Only a real non-finite training loss is divergence: a run that trained no epoch has no loss at all.
    """
    if "train/loss" not in trainer.callback_metrics:
        return RunStatus.NO_EPOCHS, no_epoch_reason(trainer)
    loss = float(trainer.callback_metrics["train/loss"])
    if not math.isfinite(loss):
        reason = f"the training loss of epoch {trainer.current_epoch} is {loss}; lower the learning rate"
        return RunStatus.DIVERGED, reason
    return RunStatus.COMPLETED, ""


def result_of(trainer: L.Trainer, status: RunStatus, reason: str, output_dir: Path) -> RunResult:
    """The run's result as the Trainer left it; metrics only of runs that trained to an end (completed or diverged)."""
    metrics = trainer.callback_metrics if status.has_metrics else {}
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
        epochs=trainer.current_epoch,
        wall_seconds=float(trainer.callback_metrics.get(WALL_SECONDS_KEY, math.nan)),
        val_acc=float(metrics.get("val/acc", math.nan)),
        val_loss=float(metrics.get("val/loss", math.nan)),
    )


def record_failure_if_room(result: RunResult) -> None:
    """Write ``result.json`` of a run whose disk is full when it still fits; never a second error on top."""
    try:
        result.write_json(result.output_dir / RESULT_FILE)
    except OSError as error:
        log.debug("result.json not written: %s", error)
