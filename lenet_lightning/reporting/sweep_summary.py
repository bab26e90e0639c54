"""The sweep summary: one table of all runs of a multirun, as CSV, Markdown and on the console, plus plots.

The files are rewritten after every job, not only when the sweep ends: Hydra's basic sweeper re-raises a
failed job's exception after its batch and then never calls ``on_multirun_end``, and a job stopped by a
signal ends the sweep without ``on_job_end``, so the summary is also written when the process exits.
Rows come from the run folders' files (``result.json``, overrides, TensorBoard events), so any launcher
and any sweeper (Optuna included) work, and a sweep run again into the same folder is summarised as a whole.
A grid sweep is ranked by test accuracy (it chooses nothing; the recipe's lr sweep is about its curves); a search
by its objective, a validation metric, and the search prints the whole study's table itself.
"""

import atexit
import csv
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lenet_lightning.reporting.records import RunRecord, read_run

log = logging.getLogger(__name__)
RESULTS = ("completed", "pruned", "diverged")  # runs that trained to an end; any other status is a failure of the sweep
STATUS_ORDER = {status: rank for rank, status in enumerate((*RESULTS, "no_epochs", "interrupted", "failed"))}
CSV_NAME, MARKDOWN_NAME = "summary.csv", "summary.md"
REASON_WIDTH = 90  # the Markdown table cuts long failure reasons; summary.csv keeps them whole
CURVES_PLOT_NAME, LR_PLOT_NAME = "sweep_test_acc.png", "sweep_test_acc_vs_lr.png"
GRID_RANKING = "test/acc"
RANKINGS = {"test/acc": ("test_acc", -1.0), "val/acc": ("val_acc", -1.0), "val/loss": ("val_loss", 1.0)}  # field, sign


def collect_runs(
    sweep_dir: Path, exclude: frozenset[str] = frozenset(), rank_by: str = GRID_RANKING
) -> list[RunRecord]:
    """Every job folder of the sweep (one with ``.hydra/overrides.yaml``): completed runs first, best on top."""
    runs = []
    for overrides_file in sweep_dir.rglob(".hydra/overrides.yaml"):
        run = read_run(overrides_file.parent.parent, exclude)
        run.name = run.path.relative_to(sweep_dir).as_posix()
        runs.append(run)
    return sorted(runs, key=lambda run: sort_key(run, rank_by))


def sort_key(run: RunRecord, rank_by: str = GRID_RANKING) -> tuple[int, float, str]:
    field, sign = RANKINGS[rank_by]
    value = getattr(run, field)
    score = sign * value if math.isfinite(value) else math.inf
    return STATUS_ORDER.get(run.status, len(STATUS_ORDER)), score, run.name


def write_csv(runs: list[RunRecord], path: Path) -> None:
    """One row per run; each overridden key gets its own column, numbers keep full precision."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    columns = ["run", *keys, "status", "train_loss", "train_acc", "val_acc", "val_loss", "test_acc"]
    columns += ["best_test_acc", "best_epoch"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*columns, "wall_s", "reason"])
        for run in runs:
            writer.writerow(
                [
                    run.name,
                    *(run.overrides.get(key, "") for key in keys),
                    run.status,
                    *(
                        _csv_number(value)
                        for value in (
                            run.train_loss,
                            run.train_acc,
                            run.val_acc,
                            run.val_loss,
                            run.test_acc,
                            run.best_test_acc,
                        )
                    ),
                    "" if run.best_epoch is None else run.best_epoch,
                    _csv_number(run.wall_seconds),
                    run.reason,
                ]
            )


def markdown_table(runs: list[RunRecord]) -> str:
    """The table people read: rounded numbers, the failure reason next to the status."""
    lines = [
        "| run | status | train loss | train acc | val acc | test acc | best test acc (epoch) | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        reason = " ".join(run.reason.split())  # one table row, whatever the reason holds
        reason = reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 1] + "…"
        status = f"{run.status}: {reason}" if reason else run.status
        best = "—" if run.best_epoch is None else f"{run.best_test_acc:.3f} ({run.best_epoch})"
        cells = [
            run.name,
            status,
            _rounded(run.train_loss),
            _rounded(run.train_acc),
            _rounded(run.val_acc),
            _rounded(run.test_acc),
            best,
            _rounded(run.wall_seconds, 1),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    sweep_dir: Path, exclude: frozenset[str] = frozenset(), rank_by: str = GRID_RANKING
) -> list[RunRecord]:
    """Write ``summary.csv``, ``summary.md`` and the plots into the sweep folder and return the rows."""
    from lenet_lightning.reporting.plots import save_test_acc_curves, save_test_acc_vs_lr

    runs = collect_runs(sweep_dir, exclude, rank_by)
    write_csv(runs, sweep_dir / CSV_NAME)
    (sweep_dir / MARKDOWN_NAME).write_text(f"# Sweep {sweep_dir}, ranked by {rank_by}\n\n" + markdown_table(runs))
    save_test_acc_curves(runs, sweep_dir / CURVES_PLOT_NAME)
    if len({run.overrides["lr"] for run in runs if "lr" in run.overrides}) > 1:
        save_test_acc_vs_lr(runs, sweep_dir / LR_PLOT_NAME)
    return runs


class SweepSummary(Callback):
    """Hydra callback: keep the sweep summary up to date after each job and show it when the sweep ends.

    Exits non-zero at the end of a sweep in which any run failed (diverged runs are results, not failures).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.register(self._write_at_exit, Path(config.hydra.sweep.dir), _excluded_keys(config), _ranking(config))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir, rank_by = Path(config.hydra.sweep.dir), _ranking(config)
        runs = write_summary(sweep_dir, _excluded_keys(config), rank_by)
        field, _ = RANKINGS[rank_by]
        best = runs[0] if runs and runs[0].status == "completed" else None
        leader = f"best so far {best.name} ({rank_by} {getattr(best, field):.3f})" if best else "no completed run yet"
        log.info("[sweep] %d run(s) done, %s; table: %s", len(runs), leader, sweep_dir / MARKDOWN_NAME)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._write_at_exit)
        sweep_dir, rank_by = Path(config.hydra.sweep.dir), _ranking(config)
        runs = write_summary(sweep_dir, _excluded_keys(config), rank_by)
        if rank_by == GRID_RANKING:
            log.info("\nSweep summary, ranked by test acc (%s):\n\n%s", sweep_dir, markdown_table(runs).rstrip())
        plots = CURVES_PLOT_NAME + (f", {LR_PLOT_NAME}" if (sweep_dir / LR_PLOT_NAME).exists() else "")
        trained = math.fsum(run.wall_seconds for run in runs if math.isfinite(run.wall_seconds))
        log.info(
            "%d runs, %.0f s of training (their own records); saved %s, %s, %s",
            len(runs),
            trained,
            CSV_NAME,
            MARKDOWN_NAME,
            plots,
        )
        log.info("compare them: tensorboard --logdir %s", sweep_dir)
        failed = [run.name for run in runs if run.status not in RESULTS]
        if failed:
            sys.exit(f"error: {len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); see their rows above")

    @staticmethod
    def _write_at_exit(sweep_dir: Path, exclude: frozenset[str], rank_by: str) -> None:
        """The sweep was stopped (a signal, or a job's exit): summarise the jobs on disk, the stopped one included."""
        try:
            write_summary(sweep_dir, exclude, rank_by)
        except OSError as error:  # a full disk, most likely: the summary of the last finished job stays
            log.warning("sweep stopped; its summary could not be updated: %s", error)
            return
        log.warning("sweep stopped; summary of its runs so far: %s", sweep_dir / MARKDOWN_NAME)


def _ranking(config: DictConfig) -> str:
    """What the table ranks by: a search's objective (a validation metric), else test accuracy."""
    return str(config.hydra.sweeper.get("objective") or GRID_RANKING)


def _excluded_keys(config: DictConfig) -> frozenset[str]:
    """Keys left out of run names (``hydra.job.config.override_dirname.exclude_keys``) are left out of the table too."""
    return frozenset(config.hydra.job.config.override_dirname.exclude_keys)


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _rounded(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
