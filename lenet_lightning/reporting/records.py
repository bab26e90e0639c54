"""Read a run folder back: its ``result.json``, the overrides that made it, and its per-epoch TensorBoard scalars.

The folder's files are the record, not the process that wrote them, so sweep summaries and plots can be
rebuilt from disk whichever launcher ran the jobs. TensorBoard's own reader parses the event files. Any of
them may be damaged (a full disk, a hand edit, a killed job): a run whose record cannot be read still gets
a row, with status ``unreadable`` and the reason, and never stops the summary of the others.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.reporting.atomic_files import write_text_atomically
from lenet_lightning.training.run_folder import LAST_CHECKPOINT, override, train_command

Curve = dict[int, float]  # epoch -> value
RESULT_FILE = "result.json"
NUMBER_FIELDS = ("train_loss", "train_acc", "test_acc", "wall_seconds")

log = logging.getLogger(__name__)


class UnreadableRecord(Exception):
    """A file of a run's record that cannot be read or does not hold what it should; the message says why."""


@dataclass
class RunRecord:
    """One run of a sweep as its folder tells it; missing numbers are NaN."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str
    reason: str
    train_loss: float
    train_acc: float
    test_acc: float
    best_test_acc: float
    best_epoch: int | None
    wall_seconds: float
    curves: dict[str, Curve] = field(repr=False)


def write_result_json(path: Path, record: dict[str, Any]) -> None:
    """Write a run's record as strict JSON, atomically.

    Non-finite numbers are written as null (strict JSON readers refuse NaN; the record's status says why),
    and the file is renamed into place, so a full disk leaves the previous file whole, never an empty one.
    """
    strict = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()
    }
    write_text_atomically(path, json.dumps(strict, indent=2, allow_nan=False) + "\n")


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


def read_curves(run_dir: Path) -> tuple[dict[str, Curve], float]:
    """All scalar tags of the run's event files as ``{tag: {epoch: value}}``, and the seconds they cover.

    Steps are epochs (the module logs ``step`` = epoch); a resumed run may log an epoch twice and the
    later value wins. The seconds are summed over the event files, one per session (start or resume) of
    the run, so the time between sessions is not counted.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its file watcher logs every file it reads
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    if not files:
        return {}, math.nan
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 keeps every value
    events.Reload()
    curves = {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    spans = []
    for file in files:
        times = [event.wall_time for event in EventFileLoader(str(file)).Load()]
        if times:
            spans.append(max(times) - min(times))
    return curves, math.fsum(spans) if spans else math.nan


def best_test_acc(curves: dict[str, Curve]) -> tuple[float, int | None]:
    """The highest test accuracy and its epoch, counting only epochs whose test loss and accuracy are finite.

    Once a run has diverged its logits are NaN and its "accuracy" is an artefact of argmax over NaN;
    such epochs never count as a best score.
    """
    test_loss = curves.get("test/loss", {})
    valid = {
        epoch: acc
        for epoch, acc in curves.get("test/acc", {}).items()
        if math.isfinite(acc) and math.isfinite(test_loss.get(epoch, 0.0))
    }
    if not valid:
        return math.nan, None
    epoch = max(valid, key=lambda e: (valid[e], -e))  # ties go to the earlier epoch
    return valid[epoch], epoch


def read_overrides(run_dir: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """The command-line overrides Hydra saved for this job (``.hydra/overrides.yaml``) as ``{key: value}``.

    A deletion (``~key``) has no value and is shown as ``~``.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
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
            "status": "interrupted",
            "reason": f"no {RESULT_FILE} but a checkpoint: killed, or still running; {resume}",
        }
    return {"status": "failed", "reason": f"ended without writing {RESULT_FILE} (see the run's log)"}


def read_run(run_dir: Path, exclude: frozenset[str] = frozenset()) -> RunRecord:
    """Everything a summary needs about one run folder, whatever state the folder is in.

    A damaged record is ``unreadable``, with what is wrong as the reason. Numbers come from ``result.json``;
    the wall time from the event files when the result has none (an interrupted or failed run).
    """
    curves, event_seconds = read_curves(run_dir)
    best, best_epoch = best_test_acc(curves)
    problems = []
    try:
        overrides = read_overrides(run_dir, exclude)
    except UnreadableRecord as error:
        overrides, problems = {}, [str(error)]
    try:
        outcome = read_outcome(run_dir)
    except UnreadableRecord as error:
        outcome, problems = {}, [*problems, str(error)]
    if problems:
        outcome = {"status": "unreadable", "reason": "; ".join(problems)}
    wall_seconds = outcome.get("wall_seconds", math.nan)
    return RunRecord(
        name=run_dir.name,
        path=run_dir,
        overrides=overrides,
        status=outcome["status"],
        reason=outcome.get("reason", ""),
        train_loss=outcome.get("train_loss", math.nan),
        train_acc=outcome.get("train_acc", math.nan),
        test_acc=outcome.get("test_acc", math.nan),
        best_test_acc=best,
        best_epoch=best_epoch,
        wall_seconds=wall_seconds if math.isfinite(wall_seconds) else event_seconds,
        curves=curves,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _shown(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
