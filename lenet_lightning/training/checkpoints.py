"""Checkpoints that survive crashes and resume cleanly, and that never run code when loaded.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside its target and renames
  it into place, so a kill during a save leaves the previous ``last.ckpt`` intact.
- :func:`load_checkpoint_safely` is the one check every checkpoint a user names goes through: it exists,
  it is a Lightning checkpoint, and it loads with ``weights_only=True`` (a pickle payload is refused).
- :func:`check_checkpoint_fits` refuses, before the run folder is touched, a checkpoint of another data set
  or model than the config's, and stops a run whose checkpoint already holds every epoch asked for.
- :func:`checkpoint_to_resume` turns ``ckpt_path`` / ``resume`` into the file to resume from.
- :class:`LogsFollowCheckpoints` keeps the TensorBoard curves consistent with ``last.ckpt`` across kills.
- SIGTERM needs no handler of ours: Lightning 2.6 already stops the loops at the next batch and raises
  ``SIGTERMException`` (exiting 0 unless caught); :func:`interruption_of` maps it to exit status 143.
"""

import logging
import os
import pickle
import signal
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config.command import NothingToDo
from lenet_lightning.config.errors import UserError
from lenet_lightning.config.schema import shown
from lenet_lightning.data.datamodule import DATASETS
from lenet_lightning.reporting.atomic_files import replaced_on_success
from lenet_lightning.reporting.tensorboard_events import restart_at
from lenet_lightning.training.run_folder import LAST_CHECKPOINT

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target's folder, fsync, then rename over the target.

    Lightning's own save stages the file in the system temp folder and falls back to a non-atomic copy
    when that folder is on another file system (common with a local /tmp and a network output folder).
    The file gets the permissions any new file gets (the umask's), like the rest of the run folder.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        with replaced_on_success(target) as temporary, temporary.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always ``weights_only=True``: a checkpoint holds tensors and plain containers, nothing to execute.

        Also reads the bare weights files ``ddp_spawn`` passes back to the launching process.
        """
        return load_weights_only(path, map_location=map_location)


def load_checkpoint_safely(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``, or raise a one-line :class:`UserError` naming it.

    Refuses missing files, files that are not checkpoints, and checkpoints that would need to run code
    (arbitrary pickled objects) to load.
    """
    checkpoint = load_weights_only(path, map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def load_weights_only(path: _PATH, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` of any file ``torch.save`` wrote, with one-line errors naming it."""
    file = Path(path)
    if not file.is_file():
        what = "a folder, not a checkpoint file" if file.is_dir() else "no such file"
        raise UserError(f"checkpoint {file}: {what}")
    if not zipfile.is_zipfile(file):  # torch.save writes zip archives; anything else is damaged or something else
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (not a zip archive written by torch.save)")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UserError(
                f"checkpoint {file} was refused: it holds pickled objects other than tensors and plain "
                "containers, which could run code when loaded; only load checkpoints from sources you trust"
            ) from None
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (or is damaged): {error}") from None
    except Exception as error:  # torch.load raises whatever its parser trips on for a non-checkpoint file
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (or is damaged): {first_line}") from None


def check_checkpoint_fits(path: Path, cfg: DictConfig, named: str) -> None:
    """Refuse a checkpoint the config cannot continue, in one line; raise :class:`NothingToDo` if it is complete.

    The checkpoint's own hyper-parameters say what it is. A model of another architecture would fail to
    load with a traceback; one trained on the other data set would train on, on the wrong images (given
    ``dataset=`` by mistake, or with ``.hydra/overrides.yaml`` lost). ``named`` is the override that named it.
    """
    checkpoint = load_checkpoint_safely(path)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    refuse_other_data(hyper_parameters.get("class_names"), cfg.dataset.name, named)
    refuse_other_model(hyper_parameters.get("net"), OmegaConf.to_container(cfg.model, resolve=True), named)
    done, wanted = finished_epochs(checkpoint), int(cfg.trainer.max_epochs)
    if done >= wanted:
        progress = f"epoch {done} of {wanted}" if done == wanted else f"{done} epochs, more than the {wanted} asked for"
        raise NothingToDo(f"{named}: already complete ({progress}); raise epochs= to continue")


def finished_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs a checkpoint holds: Lightning saves it at the end of an epoch, under that epoch's 0-based index."""
    return int(checkpoint.get("epoch", -1)) + 1


def refuse_other_data(class_names: list[str] | None, dataset: str, named: str) -> None:
    """One line when a checkpoint's classes are not those of ``dataset``, naming the data set it was trained on."""
    if class_names is None or list(class_names) == list(DATASETS[dataset].classes):
        return
    trained_on = next((name for name, data in DATASETS.items() if list(data.classes) == list(class_names)), None)
    if trained_on is None:
        raise UserError(
            f"{named}: the checkpoint classifies other classes ({', '.join(map(str, class_names[:3]))}, ...) than "
            f"dataset={dataset}; start from a checkpoint of this data set"
        )
    raise UserError(
        f"{named}: the checkpoint was trained on dataset={trained_on}, not {dataset}; give dataset={trained_on}"
    )


def refuse_other_model(net: dict[str, Any] | None, model: dict[str, Any], named: str) -> None:
    """One line when a checkpoint's network differs from the config's ``model``, with the overrides that match it."""
    if not isinstance(net, dict):
        return
    differing = sorted(key for key in net.keys() | model.keys() if net.get(key) != model.get(key))
    if differing:
        theirs = " ".join(f"model.{key}={shown(net.get(key))}" for key in differing)
        ours = " ".join(f"model.{key}={shown(model.get(key))}" for key in differing)
        raise UserError(
            f"{named}: the checkpoint holds another model ({theirs}) than the config ({ours}); give {theirs}"
        )


def checkpoint_to_resume(ckpt_path: str | None, resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint a run continues from, checked; ``None`` for a fresh start.

    ``ckpt_path=<file>`` must name a loadable checkpoint. ``resume=<run folder>`` (the CLI runs in that
    folder) and ``ckpt_path=last`` continue from ``<run folder>/checkpoints/last.ckpt``; when the run
    stopped before its first checkpoint, they say so and start fresh.
    """
    if ckpt_path not in (None, "", "last"):
        load_checkpoint_safely(ckpt_path)
        return Path(ckpt_path)
    if resume is None and ckpt_path != "last":
        return None
    last = output_dir / LAST_CHECKPOINT
    if not last.exists():
        log.warning("nothing to resume: no %s (the run stopped before its first epoch ended); starting fresh", last)
        return None
    load_checkpoint_safely(last)
    log.info("resuming from %s", last)
    return last


class TrainingInterrupted(Exception):
    """Training stopped by a signal; the last end-of-epoch checkpoint and flushed logs are on disk."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal: 143, 130


def interruption_of(error: BaseException, trainer: L.Trainer) -> TrainingInterrupted | None:
    """Recognise how Lightning reports SIGTERM (``SIGTERMException``) and Ctrl-C (``SystemExit`` after shutdown)."""
    if isinstance(error, SIGTERMException):
        return TrainingInterrupted(signal.SIGTERM)
    if isinstance(error, SystemExit | KeyboardInterrupt) and trainer.interrupted:
        return TrainingInterrupted(signal.SIGINT)
    return None


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
