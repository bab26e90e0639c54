"""What a run continues from: the run's saved overrides merged with the given ones, and its checkpoint file.

``resume=<run folder>`` becomes that run's saved overrides plus the ones given now before Hydra composes
(:func:`resume_arguments`), so the command composes its config once and the resumed run's record says what it
trains with; ``runs/checkpoint_fit.py`` then checks the checkpoint against that config. No torch here: the
command line is read before anything heavy is imported.
"""

import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import override, override_keys, parse_overrides, quoted, shell_word
from lenet_lightning.runs.layout import CHECKPOINT_DIR, LAST_CHECKPOINT, SAVED_OVERRIDES, is_run_folder

log = logging.getLogger(__name__)
NOT_SAVED_ON_RESUME = ("resume", "ckpt_path", "hparams_search")  # how the saved run was started, not what it is
# Hydra's own flags that take a value: the word after them is no override.
FLAGS_WITH_VALUE = ("-c", "--cfg", "-p", "--package", "-i", "--info", "-cp", "--config-path", "-cn", "--config-name")
FLAGS_WITH_VALUE += ("-cd", "--config-dir", "--experimental-rerun")
MULTIRUN_FLAGS = ("-m", "--multirun")


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
