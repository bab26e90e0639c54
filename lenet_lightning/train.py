"""Command-line entry point: ``python -m lenet_lightning.train [key=value ...]`` (Hydra overrides).

Only Hydra is imported at module level: ``--help`` and bad overrides are answered without paying
for importing torch and Lightning. Exit status: 0 done, 2 bad input (one line on stderr), 3 training
diverged, 143 stopped by SIGTERM, 130 stopped by Ctrl-C (the last checkpoint is kept in both).
"""

import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lenet_lightning.config_check import check_command_line, overrides_of, reject_sweeps
from lenet_lightning.errors import UserError
from lenet_lightning.run_folder import check_writable, merge_overrides, overrides_of_run, quoted, reserve_run_folder

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once and return the final test accuracy, the value Hydra sweepers optimise.

    In a sweep (``-m``) a failed or diverged job is recorded in its ``result.json`` and returns NaN, so
    the other jobs still run; a single run exits with a non-zero status instead.
    """
    from lenet_lightning.checkpointing import TrainingInterrupted
    from lenet_lightning.pipeline import RunResult, fit

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    output_dir = Path(cfg.output_dir)
    try:
        result = fit(cfg)
    except UserError as error:
        RunResult.unfinished("failed", str(error), output_dir).write_json(output_dir / "result.json")
        print(f"error: {error}", file=sys.stderr)
        if sweeping:
            return math.nan
        sys.exit(EXIT_BAD_INPUT)
    except TrainingInterrupted as interruption:
        RunResult.unfinished("interrupted", str(interruption), output_dir).write_json(output_dir / "result.json")
        print(
            f"{interruption}: checkpoints/last.ckpt holds the last finished epoch; continue with "
            f"python -m lenet_lightning.train resume={output_dir}",
            file=sys.stderr,
        )
        sys.exit(interruption.exit_code)
    result.write_json(output_dir / "result.json")
    print("\n".join(result.summary_lines()))
    if result.status == "diverged":
        print(f"error: training diverged: {result.message}", file=sys.stderr)
        if sweeping:
            return math.nan
        sys.exit(EXIT_DIVERGED)
    return result.test_acc


def prepare_command_line(args: list[str]) -> list[str]:
    """Check the command line before Hydra runs it, and choose the run folder; return the arguments to run.

    ``resume=<run folder>`` brings back the overrides that run was started with and runs in its folder.
    A fresh single run gets a folder of its own even when another run starts in the same second.
    """
    overrides = overrides_of(args)
    resume = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "resume"), None)
    if resume and resume != "null":
        saved = overrides_of_run(Path(resume))
        flags = [arg for arg in args if arg not in overrides]
        args = flags + merge_overrides(saved, overrides)
    cfg = check_command_line(args)
    if cfg is None:
        return args
    if "-m" in args or "--multirun" in args:
        check_writable(Path(cfg.hydra.sweep.dir).parent)
        return args
    reject_sweeps(overrides)
    if "--cfg" in args or "-c" in args:
        return args  # prints the config, runs nothing
    if resume and resume != "null":
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
