"""``result.json`` and ``.hydra/overrides.yaml``: how a run ended and how it was started, read and written here only.

``result.json`` is strict JSON (NaN is written as null; the status says why) and replaced atomically, so a full
disk never leaves it empty. Any file of the record may be damaged (a full disk, a hand edit, a killed job):
reading one that is raises :class:`UnreadableRecord` with what is wrong.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.runs.atomic import write_text_atomically
from lenet_lightning.runs.commands import override, train_command
from lenet_lightning.runs.layout import LAST_CHECKPOINT, RESULT_FILE, SAVED_OVERRIDES, RunStatus

NUMBER_FIELDS = ("train_loss", "train_acc", "test_acc", "val_acc", "val_loss", "wall_seconds")

log = logging.getLogger(__name__)


class UnreadableRecord(Exception):
    """A file of a run's record that cannot be read or does not hold what it should; the message says why."""


def write_result_json(path: Path, record: dict[str, Any]) -> None:
    """Write a run's record as strict JSON, atomically.

    Non-finite numbers are written as null (strict JSON readers refuse NaN; the record's status says why),
    and the file is renamed into place, so a full disk leaves the previous file whole, never an empty one.
    """
    strict = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()
    }
    write_text_atomically(path, json.dumps(strict, indent=2, allow_nan=False) + "\n")


def write_record(output_dir: Path, status: RunStatus, reason: str) -> None:
    """``result.json`` of a run that ended without final metrics: its status and a one-line reason.

    Never replaces the record of a run that trained to an end (a refused or failed resume of a completed run
    keeps its result), and a disk too full for it costs a warning, not a second error over the first.
    """
    path = output_dir / RESULT_FILE
    if not status.has_metrics and ended_with_metrics(path):
        log.warning("%s keeps the result of the run's earlier session (this session: %s)", path, status)
        return
    record = {"status": str(status), "reason": reason.splitlines()[0] if reason else "", "output_dir": str(output_dir)}
    try:
        write_result_json(path, record)
    except OSError as error:  # a full or read-only disk: the one-line report of the run matters more
        log.warning("could not write %s: %s", path, error.strerror or error)


def ended_with_metrics(path: Path) -> bool:
    """Whether ``path`` is a readable ``result.json`` of a run that trained to an end."""
    try:
        return RunStatus(read_result(path)["status"]).has_metrics
    except (UnreadableRecord, ValueError):
        return False


def read_result(path: Path) -> dict[str, Any]:
    """``result.json`` checked: a JSON object with a status, a text reason and numbers (null or NaN: not measured)."""
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise UnreadableRecord(f"{RESULT_FILE} is empty (was the disk full?)")
        result = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableRecord(f"{RESULT_FILE} cannot be read: {_first_line(error)}") from None
    if not isinstance(result, dict):
        raise UnreadableRecord(f"{RESULT_FILE} holds {type(result).__name__} {_shown(result)}, not a JSON object")
    if not isinstance(result.get("status"), str) or not result["status"]:
        raise UnreadableRecord(f"{RESULT_FILE} has no status (status: {_shown(result.get('status'))})")
    if not isinstance(result.get("reason", ""), str):
        raise UnreadableRecord(f"{RESULT_FILE}: reason is {_shown(result['reason'])}, not text")
    for key in NUMBER_FIELDS:
        value = result.get(key)
        if value is None:
            result[key] = math.nan
        elif isinstance(value, int | float) and not isinstance(value, bool):
            result[key] = float(value)
        else:
            raise UnreadableRecord(f"{RESULT_FILE}: {key} is {_shown(value)}, not a number")
    return result


def read_overrides(run_dir: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """The command-line overrides Hydra saved for this job (``.hydra/overrides.yaml``) as ``{key: value}``.

    A deletion (``~key``) has no value and is shown as ``~``.
    """
    path = run_dir / SAVED_OVERRIDES
    if not path.exists():
        return {}
    try:
        items = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise UnreadableRecord(f".hydra/overrides.yaml cannot be read: {_first_line(error)}") from None
    if not isinstance(items, ListConfig) or not all(isinstance(item, str) for item in items):
        raise UnreadableRecord(".hydra/overrides.yaml is not a list of key=value overrides")
    overrides = {}
    for item in items:
        key, separator, value = item.partition("=")
        key = key.lstrip("+~")
        if key not in exclude:
            overrides[key] = value if separator else "~"
    return overrides


def read_outcome(run_dir: Path) -> dict[str, Any]:
    """How the run ended: its checked ``result.json``, or what the folder tells without one.

    No ``result.json`` means the run was killed or is still running (``interrupted``) when it saved a
    checkpoint, else that it ended before its first epoch (``failed``).
    """
    if (run_dir / RESULT_FILE).exists():
        return read_result(run_dir / RESULT_FILE)
    if (run_dir / LAST_CHECKPOINT).is_file():
        resume = train_command(override("resume", str(run_dir)))
        return {
            "status": RunStatus.INTERRUPTED,
            "reason": f"no {RESULT_FILE} but a checkpoint: killed, or still running; {resume}",
        }
    return {"status": RunStatus.FAILED, "reason": f"ended without writing {RESULT_FILE} (see the run's log)"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _shown(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
