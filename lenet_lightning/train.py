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

from lenet_lightning.config.check import check_command_line, overrides_of, reject_sweeps
from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.training.launch_guard import ReexecutionInMultirunError
from lenet_lightning.training.run_folder import (
    check_writable,
    merge_overrides,
    overrides_of_run,
    quoted,
    reserve_run_folder,
)

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once and return the final test accuracy, the value Hydra sweepers optimise.

    In a sweep (``-m``) a failed or diverged job is recorded in its ``result.json`` and returns NaN, so
    the other jobs still run (``sys.exit`` here would end the whole sweep); a single run exits non-zero.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from lenet_lightning.reporting.plots import save_run_curves
    from lenet_lightning.training.checkpoints import TrainingInterrupted
    from lenet_lightning.training.run import fit

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.output_dir)
    try:
        result = fit(cfg)
    except ReexecutionInMultirunError as error:  # every job of the sweep would fail the same way: end it now
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingInterrupted as interruption:
        write_record(output_dir, "interrupted", str(interruption))
        print(
            f"{interruption}: checkpoints/last.ckpt holds the last finished epoch; continue with "
            f"python -m lenet_lightning.train resume={output_dir}",
            file=sys.stderr,
        )
        sys.exit(interruption.exit_code)
    except Exception as error:
        if sweeping:
            return record_failure(output_dir, error)
        if isinstance(error, UserError):
            write_record(output_dir, "failed", str(error))
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        raise
    if not math.isfinite(result.train_loss) and result.status == "completed":  # NaN/inf with no divergence check
        result.status = "diverged"
    if rank_zero_only.rank == 0:  # with the ddp strategy every process runs this function; one reports
        result.write_json(result.output_dir / "result.json")
        save_run_curves(result.output_dir)
        print("\n".join(result.summary_lines()))
        if result.status == "diverged":
            print(f"error: training diverged: {result.reason or 'the loss is not finite'}", file=sys.stderr)
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


def prepare_command_line(args: list[str]) -> list[str]:
    """Check the command line before Hydra runs it, and choose the run folder; return the arguments to run.

    ``resume=<run folder>`` brings back the overrides that run was started with and runs in its folder.
    A fresh single run gets a folder of its own even when another run starts in the same second. In a
    sweep only the keys are checked here; each job checks its values when it starts and records a failure.
    """
    overrides = overrides_of(args)
    resume = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "resume"), None)
    resume = None if resume in (None, "", "null") else resume
    if resume:
        saved = overrides_of_run(Path(resume))
        flags = [arg for arg in args if arg not in overrides]
        args = flags + merge_overrides(saved, overrides)
    sweeping = "-m" in args or "--multirun" in args
    cfg = check_command_line(args, check_values=not sweeping)
    if cfg is None:
        return args
    if sweeping:
        check_writable(Path(cfg.hydra.sweep.dir).parent)
        return args
    reject_sweeps(overrides)
    if "--cfg" in args or "-c" in args:
        return args  # prints the config, runs nothing
    if resume:
        check_writable(Path(resume))
        return [f"hydra.run.dir={quoted(resume)}", *args]  # overrides first: argparse wants them together
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        check_writable(Path(cfg.hydra.run.dir))
        return args
    folder = reserve_run_folder(Path(cfg.hydra.run.dir))
    check_writable(folder)
    return [f"hydra.run.dir={quoted(str(folder))}", *args]


def cli() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work."""
    try:
        sys.argv[1:] = prepare_command_line(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    main()


if __name__ == "__main__":
    cli()
