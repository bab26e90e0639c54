"""A run folder as a summary sees it: its record (read through ``runs.record``) and its per-epoch TensorBoard scalars.

The folder's files are the record, not the process that wrote them, so sweep summaries and plots can be
rebuilt from disk whichever launcher ran the jobs. TensorBoard's own reader parses the event files. Any of
them may be damaged (a full disk, a hand edit, a killed job): a run whose record cannot be read still gets
a row, with status ``unreadable`` and the reason, and never stops the summary of the others.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from lenet_lightning.runs.layout import EVENT_FILES, RunStatus
from lenet_lightning.runs.record import UnreadableRecord, read_outcome, read_overrides

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
    val_acc: float  # NaN without a validation split (dataset.val_size=0)
    val_loss: float
    best_test_acc: float
    best_epoch: int | None
    wall_seconds: float
    curves: dict[str, Curve] = field(repr=False)


def read_curves(run_dir: Path) -> tuple[dict[str, Curve], float]:
    """All scalar tags of the run's event files as ``{tag: {epoch: value}}``, and the seconds they cover.

    Steps are epochs (the module logs ``step`` = epoch); a resumed run may log an epoch twice and the
    later value wins. The seconds are summed over the event files, one per session (start or resume) of
    the run, so the time between sessions is not counted.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its file watcher logs every file it reads
    files = sorted(run_dir.glob(EVENT_FILES))
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
        outcome = {"status": RunStatus.UNREADABLE, "reason": "; ".join(problems)}
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
        val_acc=outcome.get("val_acc", math.nan),
        val_loss=outcome.get("val_loss", math.nan),
        best_test_acc=best,
        best_epoch=best_epoch,
        wall_seconds=wall_seconds if math.isfinite(wall_seconds) else event_seconds,
        curves=curves,
    )
