"""Command-line entry point: ``python -m lenet_lightning.train [key=value ...]`` (Hydra overrides).

Only Hydra is imported at module level: ``--help`` and bad overrides are answered without paying
for importing torch and Lightning. Exit status of a single run: 0 done, 2 bad input (one line on
stderr), 3 training diverged, 143 stopped by SIGTERM, 130 stopped by Ctrl-C (the last checkpoint is
kept in both).
"""

import json
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lenet_lightning.config.check import check_sweep_job
from lenet_lightning.config.command import exit_bad_input, run_command
from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.training.launch_guard import ReexecutionInMultirunError

log = logging.getLogger(__name__)
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> float:
    """Train once and return the final test accuracy, the value Hydra sweepers optimise.

    A single run's config was checked and its folder claimed before Hydra wrote into it
    (``training/run_folder.py``). In a sweep (``-m``) each job checks its own config here, and a failed
    or diverged job is recorded in its ``result.json`` and returns NaN, so the other jobs still run
    (``sys.exit`` here would end the whole sweep); a single run exits non-zero.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from lenet_lightning.reporting.plots import save_run_curves
    from lenet_lightning.training.checkpoints import TrainingInterrupted
    from lenet_lightning.training.run import fit

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.output_dir)
    try:
        check_sweep_job(cfg)
        result = fit(cfg)
    except ReexecutionInMultirunError as error:  # every job of the sweep would fail the same way: end it now
        exit_bad_input(error)
    except TrainingInterrupted as interruption:
        write_record(output_dir, "interrupted", str(interruption))
        log.warning(
            "%s: checkpoints/last.ckpt holds the last finished epoch; continue with "
            "python -m lenet_lightning.train resume=%s",
            interruption,
            output_dir,
        )
        sys.exit(interruption.exit_code)
    except Exception as error:
        if sweeping:
            return record_failure(output_dir, error)
        if isinstance(error, UserError):
            write_record(output_dir, "failed", str(error))
            exit_bad_input(error)
        raise
    if not math.isfinite(result.train_loss) and result.status == "completed":  # NaN/inf with no divergence check
        result.status = "diverged"
    if rank_zero_only.rank == 0:  # with the ddp strategy every process runs this function; one reports
        result.write_json(result.output_dir / "result.json")
        save_run_curves(result.output_dir)
        for line in result.summary_lines():
            log.info(line)
        if result.status == "diverged":
            log.error("error: training diverged: %s", result.reason or "the loss is not finite")
    if result.status == "diverged" and not sweeping:
        sys.exit(EXIT_DIVERGED)
    return result.test_acc


def write_record(output_dir: Path, status: str, reason: str) -> None:
    """``result.json`` of a run that ended without final metrics: its status and a one-line reason."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "reason": reason.splitlines()[0] if reason else "", "output_dir": str(output_dir)}
    (output_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")


def record_failure(output_dir: Path, error: Exception) -> float:
    """In a sweep, one failing run must not end the others: record it in ``result.json`` and carry on.

    Returns NaN, which Optuna records as a failed trial; the sweep summary reports the run as failed and
    makes the sweep exit non-zero.
    """
    reason = f"{type(error).__name__}: {error}".splitlines()[0]
    write_record(output_dir, "failed", reason)
    log.error("run failed: %s", reason)
    return math.nan


def cli() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work."""
    run_command(train, "train")


if __name__ == "__main__":
    cli()
