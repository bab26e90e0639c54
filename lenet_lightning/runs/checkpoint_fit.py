"""Whether a checkpoint can be continued by a config: the checkpoint's own hyper-parameters are the truth.

A checkpoint of another data set, model, optimizer or schedule is refused in one line, as is a resume that would
stretch a learning-rate schedule past the length it was built for; a checkpoint that already holds every epoch
asked for raises :class:`NothingToDo`. Imports torch (through the checkpoint loader): the commands import it
only once they run.
"""

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config.schema import shown
from lenet_lightning.data.datamodule import DATASETS
from lenet_lightning.errors import NothingToDo, UserError
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.runs.checkpoint_files import finished_epochs, load_checkpoint_safely
from lenet_lightning.runs.layout import LAST_CHECKPOINT, RESULT_FILE
from lenet_lightning.runs.record import ended_with_metrics

log = logging.getLogger(__name__)
# Sections of the config a checkpoint's hyper-parameters also hold: what its weights were trained with.
CHECKED_SECTIONS = ("optimizer", "scheduler", "augment")


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


def check_checkpoint_fits(path: Path, cfg: DictConfig, named: str, run_dir: Path | None = None) -> None:
    """Refuse a checkpoint the config cannot continue, in one line; raise :class:`NothingToDo` if it is complete.

    Complete means all its epochs and, for the run folder's own checkpoint (``run_dir``), a ``result.json`` that
    says the run ended: one killed after its last checkpoint, or stopped in its end-of-run analysis, is finished.

    The checkpoint's own hyper-parameters say what it is. A model of another architecture would fail to load
    with a traceback; one trained on the other data set would train on, on the wrong images; another optimizer
    or schedule in the config would be recorded while training went on with the checkpoint's (Lightning
    restores the optimizer and scheduler states). ``named`` is the override that named the checkpoint.
    """
    checkpoint = load_checkpoint_safely(path)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    refuse_other_data(hyper_parameters.get("class_names"), cfg.dataset.name, named)
    refuse_other_model(hyper_parameters.get("net"), OmegaConf.to_container(cfg.model, resolve=True), named)
    for section in CHECKED_SECTIONS:
        refuse_other_section(section, hyper_parameters.get(section), cfg, named)
    done, wanted = finished_epochs(checkpoint), int(cfg.trainer.max_epochs)
    refuse_stretched_schedule(checkpoint, done, wanted, named)
    if done >= wanted and not (done == wanted and run_dir is not None and end_unrecorded(path, run_dir)):
        progress = f"epoch {done} of {wanted}" if done == wanted else f"{done} epochs, more than the {wanted} asked for"
        raise NothingToDo(f"{named}: already complete ({progress}); raise epochs= to continue")


def end_unrecorded(path: Path, run_dir: Path) -> bool:
    """Whether ``path`` is ``run_dir``'s own checkpoint and its ``result.json`` does not say the run ended."""
    return path.resolve() == (run_dir / LAST_CHECKPOINT).resolve() and not ended_with_metrics(run_dir / RESULT_FILE)


def end_left_to_finish(path: Path | None, cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the run trained every epoch into its own checkpoint but was stopped before its end was recorded.

    Killed after its last checkpoint, or stopped (a signal, a full disk) in its end-of-run analysis: what is left
    is the analysis, the figures and ``result.json``, made from the checkpoint without training.
    """
    if path is None or not end_unrecorded(path, run_dir):
        return False
    return finished_epochs(load_checkpoint_safely(path)) == int(cfg.trainer.max_epochs)


def refuse_other_section(section: str, saved: Any, cfg: DictConfig, named: str) -> None:
    """One line when the config's optimizer, schedule or augmentation differs from what the checkpoint trained with."""
    if not isinstance(saved, dict):
        return  # a checkpoint made before the section was saved: nothing to compare
    wanted = OmegaConf.to_container(cfg[section], resolve=True) or {}
    saved = saved or {}
    differing = sorted(key for key in saved.keys() | wanted.keys() if saved.get(key) != wanted.get(key))
    if differing:
        theirs = " ".join(f"{section}.{key}={shown(saved.get(key))}" for key in differing)
        ours = " ".join(f"{section}.{key}={shown(wanted.get(key))}" for key in differing)
        raise UserError(
            f"{named}: the checkpoint trained with {theirs}, not {ours}; its optimizer and schedule states go on as "
            f"saved, so give {theirs} to continue it (a resume cannot change them), or train a new run"
        )


def refuse_stretched_schedule(checkpoint: dict[str, Any], done: int, wanted: int, named: str) -> None:
    """A learning-rate schedule is built for the run's length: continuing past it would crash (one-cycle) or climb."""
    schedulers = checkpoint.get("lr_schedulers") or []
    length = next((state.get("total_steps") or state.get("T_max") for state in schedulers if state), None)
    steps = int(checkpoint.get("global_step", 0))
    if not length or done < 1 or steps < 1:
        return
    planned = round(int(length) / (steps / done))
    if wanted != planned:
        raise UserError(
            f"{named}: its learning-rate schedule was built for epochs={planned} and cannot be stretched to "
            f"epochs={wanted}; give epochs={planned}, or train a new run with epochs={wanted}"
        )


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
    try:
        LeNet(**net)  # a checkpoint made by other code may name an activation or layer this code does not know
    except (TypeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{named}: the checkpoint holds a network this code cannot rebuild ({reason}); "
            "use a checkpoint this project's code trained"
        ) from None
    differing = sorted(key for key in net.keys() | model.keys() if net.get(key) != model.get(key))
    if differing:
        theirs = " ".join(f"model.{key}={shown(net.get(key))}" for key in differing)
        ours = " ".join(f"model.{key}={shown(model.get(key))}" for key in differing)
        raise UserError(
            f"{named}: the checkpoint holds another model ({theirs}) than the config ({ours}); give {theirs}"
        )
