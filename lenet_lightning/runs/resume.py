"""What a run continues from, and whether it can: the run's saved overrides, its checkpoint, and their agreement.

``resume=<run folder>`` becomes that run's saved overrides plus the ones given now before Hydra composes
(:func:`resume_arguments`), so the command composes its config once and the resumed run's record says what it
trains with. :func:`check_checkpoint_fits` then compares the config with the checkpoint's own hyper-parameters,
the truth about what the weights are: a checkpoint of another data set, model, optimizer or schedule is refused
in one line, as is a resume that would stretch a learning-rate schedule past the length it was built for.
"""

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.config.schema import shown
from lenet_lightning.data.datamodule import DATASETS
from lenet_lightning.errors import NothingToDo, UserError
from lenet_lightning.runs.checkpoint_files import finished_epochs, load_checkpoint_safely
from lenet_lightning.runs.commands import override, override_keys, parse_overrides, quoted, shell_word
from lenet_lightning.runs.layout import CHECKPOINT_DIR, LAST_CHECKPOINT, SAVED_OVERRIDES, is_run_folder

log = logging.getLogger(__name__)
NOT_SAVED_ON_RESUME = ("resume", "ckpt_path", "hparams_search")  # how the saved run was started, not what it is
# Hydra's own flags that take a value: the word after them is no override.
FLAGS_WITH_VALUE = ("-c", "--cfg", "-p", "--package", "-i", "--info", "-cp", "--config-path", "-cn", "--config-name")
FLAGS_WITH_VALUE += ("-cd", "--config-dir", "--experimental-rerun")
MULTIRUN_FLAGS = ("-m", "--multirun")
# Sections of the config a checkpoint's hyper-parameters also hold: what its weights were trained with.
CHECKED_SECTIONS = ("model", "optimizer", "scheduler", "augment")


def resume_arguments(arguments: list[str]) -> list[str]:
    """The command line with ``resume=<folder>`` turned into that run's overrides, before Hydra composes.

    The saved overrides come first and a key given now replaces its saved value; the run continues in its own
    folder. ``ckpt_path=last hydra.run.dir=<run folder>``, the other way to continue a run, gets the same merge.
    A sweep (``-m``) is left as it is: the sweep refuses ``resume=`` itself.
    """
    if any(argument in MULTIRUN_FLAGS for argument in arguments):
        return arguments
    flags, overrides = split_flags(arguments)
    parsed = {item.key_or_group: item for item in parse_overrides(overrides)}
    resume = parsed.get("resume")
    run_dir = parsed.get("hydra.run.dir")
    if resume is not None and resume.value() is not None:
        folder = Path(str(resume.value()))
        if not str(resume.value()):
            raise UserError("resume= names no run folder; give resume=outputs/runs/<date>/<time>")
        if run_dir is not None and Path(str(run_dir.value())).resolve() != folder.resolve():
            raise UserError(
                f"{override('resume', str(folder))} continues the run in its own folder, not in "
                f"{override('hydra.run.dir', str(run_dir.value()))}: drop hydra.run.dir, or start a new run from its "
                f"checkpoint with {shell_word(override('ckpt_path', str(folder / LAST_CHECKPOINT)))} "
                f"{shell_word(override('hydra.run.dir', str(run_dir.value())))}"
            )
    elif _value(parsed.get("ckpt_path")) == "last" and run_dir is not None and is_run_folder(Path(run_dir.value())):
        folder = Path(str(run_dir.value()))
    else:
        return arguments
    task = [item for item in overrides if not override_keys([item])[0].startswith("hydra.")]
    hydra = [item for item in overrides if item not in task and override_keys([item])[0] != "hydra.run.dir"]
    merged = merge_overrides(overrides_of_run(folder), task)
    return [*flags, *merged, *hydra, f"hydra.run.dir={quoted(str(folder))}"]


def _value(item: Any) -> Any:
    return None if item is None else item.value()


def split_flags(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (``--cfg job``, ``-m``...) and the overrides, each in the order given."""
    flags, overrides = [], []
    takes_value = False
    for argument in arguments:
        if takes_value or argument.startswith("-"):
            flags.append(argument)
            takes_value = argument in FLAGS_WITH_VALUE
        else:
            overrides.append(argument)
    return flags, overrides


def overrides_of_run(folder: Path) -> list[str]:
    """The command-line overrides a run folder was started with (Hydra saves them in ``.hydra/overrides.yaml``).

    A missing or damaged file is named in one line: continuing with the defaults instead would train another
    run than the one in the folder.
    """
    saved = folder / SAVED_OVERRIDES
    named = override("resume", str(folder))
    if not saved.is_file():
        if (folder / CHECKPOINT_DIR).is_dir():
            raise UserError(
                f"{named}: {saved} is missing, so the run's overrides are unknown; restore it (a YAML list such as "
                "['lr=0.3']), or start a new run from its checkpoint with ckpt_path=... and the overrides it needs"
            )
        raise UserError(f"{named}: not a run folder (no {SAVED_OVERRIDES} or {CHECKPOINT_DIR}/ in it)")
    try:
        items = OmegaConf.load(saved)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise damaged_overrides(saved, str(error).strip().splitlines()[0] if str(error).strip() else "") from None
    if not isinstance(items, ListConfig) or not all(isinstance(item, str) for item in items):
        what = "empty" if items is None or items == {} else "not a list of key=value overrides"
        raise damaged_overrides(saved, what)
    overrides = [str(item) for item in items]
    parse_overrides(overrides)  # a hand-edited line that Hydra cannot read is named here, not after composing
    return overrides


def damaged_overrides(saved: Path, what: str) -> UserError:
    return UserError(
        f"{saved} is damaged ({what}); restore it from a copy, or write the run's overrides into it as a YAML "
        "list (Hydra writes [] for a run started without any)"
    )


def merge_overrides(saved: list[str], given: list[str]) -> list[str]:
    """The saved overrides of a resumed run, then the given ones; a key given now replaces its saved value.

    ``resume`` and ``ckpt_path`` of the saved run are dropped: they said where that run started from; so is
    ``hparams_search``, which made the run one trial of a search: resumed, it is a single run.
    """
    given_keys = set(override_keys(given)) | set(NOT_SAVED_ON_RESUME)
    saved_keys = override_keys(saved)
    return [item for item, key in zip(saved, saved_keys, strict=True) if key not in given_keys] + given


def start_checkpoint(ckpt_path: str | None, resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint file a run continues from, if there is one: as :func:`checkpoint_to_resume` will pick it."""
    if ckpt_path not in (None, "", "last"):
        return Path(ckpt_path)
    if resume is None and ckpt_path != "last":
        return None
    last = output_dir / LAST_CHECKPOINT
    return last if last.is_file() else None


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


def check_checkpoint_fits(path: Path, cfg: DictConfig, named: str) -> None:
    """Refuse a checkpoint the config cannot continue, in one line; raise :class:`NothingToDo` if it is complete.

    The checkpoint's own hyper-parameters say what it is. A model of another architecture would fail to load
    with a traceback; one trained on the other data set would train on, on the wrong images; another optimizer
    or schedule in the config would be recorded while training went on with the checkpoint's (Lightning
    restores the optimizer and scheduler states). ``named`` is the override that named the checkpoint.
    """
    checkpoint = load_checkpoint_safely(path)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    refuse_other_data(hyper_parameters.get("class_names"), cfg.dataset.name, named)
    refuse_other_model(hyper_parameters.get("net"), OmegaConf.to_container(cfg.model, resolve=True), named)
    for section in CHECKED_SECTIONS[1:]:
        refuse_other_section(section, hyper_parameters.get(section), cfg, named)
    done, wanted = finished_epochs(checkpoint), int(cfg.trainer.max_epochs)
    refuse_stretched_schedule(checkpoint, done, wanted, named)
    if done >= wanted:
        progress = f"epoch {done} of {wanted}" if done == wanted else f"{done} epochs, more than the {wanted} asked for"
        raise NothingToDo(f"{named}: already complete ({progress}); raise epochs= to continue")


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
    differing = sorted(key for key in net.keys() | model.keys() if net.get(key) != model.get(key))
    if differing:
        theirs = " ".join(f"model.{key}={shown(net.get(key))}" for key in differing)
        ours = " ".join(f"model.{key}={shown(model.get(key))}" for key in differing)
        raise UserError(
            f"{named}: the checkpoint holds another model ({theirs}) than the config ({ours}); give {theirs}"
        )
