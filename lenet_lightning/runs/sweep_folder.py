"""A sweep folder named on the command line is checked like a named run folder, and written by one sweep at a time.

``hydra.sweep.dir=<folder>`` must be new or empty, or hold an earlier sweep of the same command: Hydra's
``multirun.yaml`` of that command beside the job folders. A run folder, or a folder of other files (a user's own
``summary.md``, say), is refused. In an earlier sweep's folder a job whose run completed is skipped, one that was
interrupted continues from its checkpoint (:func:`sweep_job_start`), and a job whose earlier run trained another
config (another ``data_dir``, which the job folder's name leaves out) is refused before the sweep starts.
While the sweep runs, its folder's lock names the process (:func:`~lenet_lightning.runs.folder.hold_run_folder`).
"""

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import first_names, override, shell_word
from lenet_lightning.runs.disk import PROBE_PREFIX
from lenet_lightning.runs.folder import claim_run_folder
from lenet_lightning.runs.layout import (
    CHECKPOINT_DIR,
    HYDRA_DIR,
    LAST_CHECKPOINT,
    LOCK_FILE,
    RESULT_FILE,
    RUN_CONFIG,
    SWEEP_FILES,
    is_run_folder,
)
from lenet_lightning.runs.record import ended_with_metrics, read_result

SWEEP_CONFIG = SWEEP_FILES[0]  # Hydra's sweepers write the sweep's config there when the sweep starts
NOT_COMPARED = ("output_dir",)  # where the job writes: the same folder, named another way


def claim_sweep_folder(folder: Path, job_name: str) -> None:
    """Make a named sweep folder this sweep's: new, empty or an earlier sweep of ``job_name``; held until exit."""
    claim_run_folder(folder, continues_its_run=True, check=lambda: check_sweep_folder(folder, job_name))


def check_sweep_folder(folder: Path, job_name: str) -> None:
    """Raise a one-line :class:`UserError` unless ``folder`` is empty or holds an earlier sweep of ``job_name``."""
    names = sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith((LOCK_FILE, PROBE_PREFIX)))
    if not names:
        return
    shown = first_names(names)
    if HYDRA_DIR in names or CHECKPOINT_DIR in names:
        raise UserError(
            f"hydra.sweep.dir={folder} holds a run ({shown}), not a sweep; continue the run with "
            f"{shell_word(override('resume', str(folder)))}, or give hydra.sweep.dir a new or empty folder"
        )
    if sweep_job_name(folder / SWEEP_CONFIG) != job_name:
        raise UserError(
            f"hydra.sweep.dir={folder} is not empty ({shown}) and holds no earlier sweep of this command (no "
            f"{SWEEP_CONFIG} of a {job_name} sweep); give hydra.sweep.dir a new or empty folder"
        )


def sweep_job_name(path: Path) -> str | None:
    """The command an earlier sweep ran (``hydra.job.name`` of its ``multirun.yaml``); None when it is no such file."""
    try:
        saved = OmegaConf.load(path)
        return str(OmegaConf.select(saved, "hydra.job.name", throw_on_missing=False))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException, ValueError):
        return None


def check_earlier_job(folder: Path, cfg: DictConfig, job: str, keys: tuple[str, ...] | None = None) -> None:
    """A job folder of an earlier sweep is skipped or continued only if its run trained this job's config.

    The folder is named after the job's overrides, but not after ``data_dir`` or what the environment and the
    config files say: a run of other data there would be reported as this job's result. ``keys`` limits the
    comparison (a sweeper that picks its jobs as it goes: only what every job shares).
    """
    if not folder.exists():
        return
    if not is_run_folder(folder):
        if any(folder.iterdir()):
            raise UserError(
                f"sweep job {job}: {folder} holds files of no run; move them away or give hydra.sweep.dir a new folder"
            )
        return
    try:
        theirs = comparable(OmegaConf.load(folder / RUN_CONFIG))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"sweep job {job}: the earlier run's {folder / RUN_CONFIG} cannot be read ({reason}); "
            "give hydra.sweep.dir a new folder"
        ) from None
    ours = comparable(cfg)
    differing = [key for key in sorted(theirs.keys() | ours.keys()) if theirs.get(key) != ours.get(key)]
    differing = [key for key in differing if keys is None or key in keys]
    if differing:
        was = " ".join(f"{key}={theirs.get(key)}" for key in differing[:3])
        now = " ".join(f"{key}={ours.get(key)}" for key in differing[:3])
        raise UserError(
            f"sweep job {job}: {folder} holds a run of {was}, not {now}; its results would pass for this job's: "
            "give hydra.sweep.dir a new folder, or the earlier values"
        )


def comparable(cfg: DictConfig) -> dict[str, Any]:
    """A job's config as flat ``{dotted key: value}``, folders as absolute paths (the saved config has them so)."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key in NOT_COMPARED:  # a placeholder: other keys name folders inside it
        copy[key] = "<run folder>"
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
            return
        key = prefix[:-1]
        flat[key] = os.path.abspath(node) if key.endswith("data_dir") and isinstance(node, str) else node

    walk(OmegaConf.to_container(copy, resolve=True), "")
    return flat


def completed_earlier(output_dir: Path) -> float | None:
    """The test accuracy of a sweep job's run that an earlier sweep trained to its end (None: none did).

    Such a job is skipped: training it again would replace its checkpoint and results with the same run's.
    """
    if not ended_with_metrics(output_dir / RESULT_FILE):
        return None
    return read_result(output_dir / RESULT_FILE)["test_acc"]  # readable: ended_with_metrics read it


def sweep_job_start(output_dir: Path) -> Path | None:
    """The checkpoint of a sweep job's interrupted earlier run, which the job continues; None when there is none."""
    last = output_dir / LAST_CHECKPOINT
    return last if last.is_file() else None  # checked as the job starts from it (a damaged one named in one line)
