"""Command-line entry point: ``python -m lenet_lightning.train [key=value ...]`` (Hydra overrides).

Only Hydra is imported at module level: ``--help`` and bad overrides are answered without paying
for importing torch and Lightning. Exit status of a single run: 0 done (or nothing left to do: a
resumed run that has all its epochs), 2 bad input (one line on stderr; also a run that trained no
epoch), 3 training diverged, 143 stopped by SIGTERM, 130 stopped by Ctrl-C (the last checkpoint is
kept in both).
"""

if __name__ == "__main__":  # before the imports below, which a Ctrl-C would otherwise end with a traceback
    from lenet_lightning.errors import end_quietly_on_signals

    end_quietly_on_signals("train")


import contextlib
import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from lenet_lightning.config.check import check_sweep_job
from lenet_lightning.config.command import exit_bad_input, run_command
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.config.plugins import make_project_plugins_findable
from lenet_lightning.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, Interrupted, NothingToDo, UserError
from lenet_lightning.runs.commands import hydra_safe_arguments, override, train_command
from lenet_lightning.runs.folder import claimed_run_folders, hold_run_folder, release_run_folder
from lenet_lightning.runs.layout import RESULT_FILE, RunStatus, is_run_folder
from lenet_lightning.runs.record import write_record
from lenet_lightning.runs.resume import resume_arguments, start_checkpoint
from lenet_lightning.runs.sweep_folder import completed_earlier, sweep_job_start
from lenet_lightning.search.objective import outcome
from lenet_lightning.training.launch_guard import ReexecutionInMultirunError

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> dict[str, Any] | float:
    """Train once and return the run's outcome for a search: its status and validation metrics, no test metric.

    A single run's config was checked and its folder claimed before Hydra wrote into it
    (``training/preflight.py``). In a sweep (``-m``) each job checks its own config here, and a failed
    or diverged job is recorded in its ``result.json`` and returns NaN, so the other jobs still run
    (``sys.exit`` here would end the whole sweep); a single run exits non-zero.
    """
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.output_dir)
    if sweeping:  # a single run's folder was claimed, and is held, since PrepareRun
        try:
            hold_run_folder(output_dir)  # a job's folder is held while it trains, as a single run's is
        except UserError as error:  # a resume of this job is running in it: leave its files alone
            log.error("run skipped: %s", error)
            return math.nan
        earlier = completed_earlier_job(output_dir)
        if earlier is not None:
            release_run_folder(output_dir)
            return earlier
    try:
        return _train(cfg, output_dir, sweeping)
    finally:
        release_run_folder(output_dir)


def _train(cfg: DictConfig, output_dir: Path, sweeping: bool) -> dict[str, Any] | float:
    """Fit and report; what ends the run is recorded in ``result.json``, except a result that was never made."""
    from lightning.pytorch.utilities import rank_zero_only

    from lenet_lightning.reporting.plots import save_run_curves
    from lenet_lightning.runs.checkpoint_fit import check_checkpoint_fits, end_left_to_finish
    from lenet_lightning.training.interruptions import TrainingInterrupted
    from lenet_lightning.training.preflight import check_run_rules
    from lenet_lightning.training.run import finish, fit

    try:
        check_sweep_job(cfg, check_run_rules)
        if sweeping:  # a single run's checkpoint was checked before its folder was claimed
            start = sweep_job_checkpoint(cfg, output_dir)
            if start is not None:
                check_checkpoint_fits(start, cfg, override("ckpt_path", str(cfg.ckpt_path)), output_dir)
        start = start_checkpoint(cfg.ckpt_path, cfg.get("resume"), output_dir)
        result = finish(cfg) if end_left_to_finish(start, cfg, output_dir) else fit(cfg)
    except ReexecutionInMultirunError as error:  # every job of the sweep would fail the same way: end it now
        exit_bad_input(error)
    except TrainingInterrupted as interruption:
        write_record(output_dir, RunStatus.INTERRUPTED, str(interruption))
        log.warning(
            "%s: checkpoints/last.ckpt holds the last finished epoch; continue with %s",
            interruption,
            train_command(override("resume", str(output_dir))),
        )
        sys.exit(interruption.exit_code)
    except NothingToDo as done:  # only in a sweep: a single run's checkpoint was checked before it started
        write_record(output_dir, RunStatus.NO_EPOCHS, str(done))
        return math.nan
    except Exception as error:
        if sweeping:
            return record_failure(output_dir, error)
        if isinstance(error, UserError):
            write_record(output_dir, RunStatus.FAILED, str(error))
            exit_bad_input(error)
        raise
    if rank_zero_only.rank == 0:  # with the ddp strategy every process runs this function; one reports
        # A run that trained no epoch has no result: it never replaces the record of a run that has one.
        if result.status != RunStatus.NO_EPOCHS or not (output_dir / RESULT_FILE).exists():
            result.write_json(result.output_dir / RESULT_FILE)
        if result.status != RunStatus.NO_EPOCHS:
            save_run_curves(result.output_dir)
            for line in result.summary_lines():
                log.info(line)
        if result.status == RunStatus.DIVERGED:
            log.error("error: training diverged: %s", result.reason or "the loss is not finite")
    if not sweeping and result.status == RunStatus.NO_EPOCHS:
        exit_bad_input(UserError(result.reason))
    if result.status == RunStatus.DIVERGED and not sweeping:
        sys.exit(EXIT_DIVERGED)
    return outcome(str(result.status), result.val_acc, result.val_loss, result.epochs, result.output_dir)


def completed_earlier_job(output_dir: Path) -> float | None:
    """A sweep job whose folder holds its run, completed by an earlier sweep: skipped, with that run's test acc."""
    test_acc = completed_earlier(output_dir)
    if test_acc is not None:
        log.info(
            "run skipped: %s holds this job's completed run (test acc %.3f); delete it to train again",
            output_dir,
            test_acc,
        )
    return test_acc


def sweep_job_checkpoint(cfg: DictConfig, output_dir: Path) -> Path | None:
    """What a sweep job starts from: its own interrupted run's checkpoint, which it continues, else ``ckpt_path``."""
    own = sweep_job_start(output_dir)
    if own is None:
        return start_checkpoint(cfg.ckpt_path, None, output_dir)
    log.info("continuing this job's interrupted run from %s", own)
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    return own


def record_failure(output_dir: Path, error: Exception) -> float:
    """In a sweep, one failing run must not end the others: record it in ``result.json`` and carry on.

    Returns NaN, which Optuna records as a failed trial; the sweep summary reports the run as failed and
    makes the sweep exit non-zero.
    """
    reason = f"{type(error).__name__}: {error}".splitlines()[0]
    write_record(output_dir, RunStatus.FAILED, reason)
    log.error("run failed: %s", reason)
    return math.nan


def record_interruption(stop: Interrupted) -> str:
    """A signal outside training: the run folder, if Hydra made one, says ``interrupted``; how to go on."""
    advice = "; nothing was trained"
    for folder in claimed_run_folders():
        release_run_folder(folder)
        if not folder.is_dir():
            continue
        if not is_run_folder(folder):
            with contextlib.suppress(OSError):
                folder.rmdir()  # claimed, but nothing written yet: leave nothing behind
            continue
        write_record(folder, RunStatus.INTERRUPTED, str(stop))
        advice = (
            f"; {folder / RESULT_FILE} says interrupted; continue with {train_command(override('resume', str(folder)))}"
        )
    return advice


def cli() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work.

    ``resume=``, ``ckpt_path=`` and ``hydra.run.dir=`` take any file or folder name as typed (``hydra_safe_arguments``);
    ``resume=<folder>`` becomes that run's saved overrides before Hydra composes, so the config is composed once.
    """
    try:
        sys.argv[1:] = resume_arguments(hydra_safe_arguments(sys.argv[1:]))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    make_project_plugins_findable()  # hparams_search=... needs the project's sweeper
    run_command(train, "train", on_interrupt=record_interruption)


if __name__ == "__main__":
    cli()
