"""PNG charts of runs and sweeps, for people who would rather look at a picture than open TensorBoard.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas, no pyplot): no global state, no display
needed, safe to call from inside a training process.
"""

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from lenet_lightning.reporting.records import RunRecord, read_curves

LOSS_TAG = "train/loss"
RUN_CURVES = ((LOSS_TAG, "train loss", "-"), ("train/acc", "train acc", "--"), ("test/acc", "test acc", "-."))
LOSS_TOP = 2.35  # just above ln 10 = 2.303, the loss of a uniform guess over 10 classes, where the recipe starts
MAX_LABELLED_LRS = 10  # up to this many distinct lr values get a tick each; more get the usual log ticks


def swept_keys(runs: list[RunRecord]) -> list[str]:
    """The override keys whose value differs between runs: what tells the runs apart in a legend."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def short_label(run: RunRecord, keys: list[str]) -> str:
    """``lr=0.3,dataset=fashion`` from the given keys, numbers cut to 4 significant digits."""
    return ",".join(f"{key}={_short_value(run.overrides.get(key, ''))}" for key in keys) or run.name


def _number(value: str) -> float:
    """``value`` as a number, NaN when it is not one."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _short_value(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def save_run_curves(run_dir: Path, path: Path | None = None) -> Path:
    """Save :func:`run_curves_figure` as ``curves.png`` in the run folder (or at ``path``)."""
    path = path or run_dir / "curves.png"
    run_curves_figure(run_dir).savefig(path, dpi=100)
    return path


def run_curves_figure(run_dir: Path) -> Figure:
    """Train loss, train acc and test acc against epoch, like the recipe's plot, each on its own labelled scale.

    The loss (left axis, from 0 to at least ln 10, the loss of a 10-class guess) and the accuracies (right axis,
    0 to 1) share the epochs; one legend names all three lines.
    """
    curves, _ = read_curves(run_dir)
    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
    loss_axes = figure.add_subplot()
    acc_axes = loss_axes.twinx()
    for tag, label, style in RUN_CURVES:
        points = sorted(curves.get(tag, {}).items())
        axes = loss_axes if tag == LOSS_TAG else acc_axes
        color = f"C{len(loss_axes.lines) + len(acc_axes.lines)}"  # one colour cycle across both axes
        axes.plot([epoch for epoch, _ in points], [value for _, value in points], style, color=color, label=label)
    losses = [value for value in curves.get(LOSS_TAG, {}).values() if math.isfinite(value)]
    loss_axes.set_ylim(0, max([LOSS_TOP, *(loss * 1.05 for loss in losses)]))
    loss_axes.set_ylabel("cross-entropy loss")
    acc_axes.set_ylim(0, 1)
    acc_axes.set_ylabel("accuracy")
    loss_axes.set_xlabel("epoch")
    loss_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.grid(alpha=0.3)
    lines = loss_axes.lines + acc_axes.lines
    figure.legend(lines, [line.get_label() for line in lines], loc="outside upper center", ncols=len(lines))
    return figure


def save_test_acc_curves(runs: list[RunRecord], path: Path) -> Path:
    """The test-accuracy curve of every run of a sweep on one chart, labelled with the run's name."""
    keys = swept_keys(runs)
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for run in runs:
        points = sorted(run.curves.get("test/acc", {}).items())
        if points:
            label = short_label(run, keys) + ("" if run.status == "completed" else f" ({run.status})")
            axes.plot([epoch for epoch, _ in points], [value for _, value in points], marker=".", label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("test acc")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small", loc="best")
    figure.savefig(path, dpi=100)
    return path


def save_test_acc_vs_lr(runs: list[RunRecord], path: Path) -> Path:
    """Final test accuracy against lr on a log axis, one line per combination of the other swept keys.

    Diverged runs are drawn as crosses at their final accuracy; failed runs have none and are left out, as
    are runs whose lr is not a positive number (a damaged record).
    """
    other_keys = [key for key in swept_keys(runs) if key != "lr"]
    series: dict[str, list[tuple[float, RunRecord]]] = defaultdict(list)
    for run in runs:
        lr = _number(run.overrides.get("lr", ""))
        if 0 < lr < math.inf and math.isfinite(run.test_acc):
            series[short_label(run, other_keys) if other_keys else ""].append((lr, run))
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for label, points in sorted(series.items()):
        points.sort(key=lambda point: point[0])
        completed = [(lr, run.test_acc) for lr, run in points if run.status == "completed"]
        line = axes.plot(*zip(*completed, strict=True), marker="o", label=label or None) if completed else []
        diverged = [(lr, run.test_acc) for lr, run in points if run.status != "completed"]
        if diverged:
            color = line[0].get_color() if line else None
            axes.plot(*zip(*diverged, strict=True), "x", color=color, markersize=9, label=f"{label} diverged".strip())
    axes.set_xscale("log")
    lrs = sorted({lr for points in series.values() for lr, _ in points})
    if len(lrs) <= MAX_LABELLED_LRS:
        axes.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs])
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("lr")
    axes.set_ylabel("final test acc")
    axes.grid(alpha=0.3, which="both")
    if any(line.get_label() and not line.get_label().startswith("_") for line in axes.lines):
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path
