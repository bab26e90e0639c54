"""Read a run folder back: its ``result.json``, the overrides that made it, and its per-epoch TensorBoard scalars.

The folder's files are the record, not the process that wrote them, so sweep summaries and plots can be
rebuilt from disk whichever launcher ran the jobs. TensorBoard's own reader parses the event files.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

Curve = dict[int, float]  # epoch -> value


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


def read_curves(run_dir: Path) -> tuple[dict[str, Curve], float]:
    """All scalar tags of the run's event files as ``{tag: {epoch: value}}``, and the seconds they span.

    Steps are epochs (the module logs ``step`` = epoch); a resumed run may log an epoch twice and the
    later value wins.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its file watcher logs every file it reads
    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}, math.nan
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 keeps every value
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    curves = {tag: {event.step: event.value for event in values} for tag, values in scalars.items()}
    last_time = max((event.wall_time for values in scalars.values() for event in values), default=math.nan)
    return curves, last_time - events.FirstEventTimestamp()


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
    """The command-line overrides Hydra saved for this job (``.hydra/overrides.yaml``) as ``{key: value}``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    pairs = (item.split("=", 1) for item in OmegaConf.load(path))
    return {key.lstrip("+~"): value for key, value in pairs if key.lstrip("+~") not in exclude}


def read_run(run_dir: Path, exclude: frozenset[str] = frozenset()) -> RunRecord:
    """Everything a summary needs about one run folder; a folder without ``result.json`` counts as failed."""
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    curves, wall_seconds = read_curves(run_dir)
    best, best_epoch = best_test_acc(curves)
    default_reason = "" if result else "ended without writing result.json (see the run's log)"
    return RunRecord(
        name=run_dir.name,
        path=run_dir,
        overrides=read_overrides(run_dir, exclude),
        status=result.get("status", "failed"),
        reason=result.get("reason", default_reason),
        train_loss=float(result.get("train_loss", math.nan)),
        train_acc=float(result.get("train_acc", math.nan)),
        test_acc=float(result.get("test_acc", math.nan)),
        best_test_acc=best,
        best_epoch=best_epoch,
        wall_seconds=wall_seconds,
        curves=curves,
    )
