"""Command-line entry point: ``python -m lenet_lightning.train [key=value ...]`` (Hydra overrides).

Only Hydra is imported at module level: ``--help`` and bad overrides are answered without paying
for importing torch and Lightning.
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

from lenet_lightning.errors import UserError
from lenet_lightning.launch_guard import ReexecutionInMultirunError

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once and return the final test accuracy, the value Hydra sweepers optimise."""
    from lightning.pytorch.utilities import rank_zero_only

    from lenet_lightning.pipeline import fit
    from lenet_lightning.plots import save_run_curves

    try:
        result = fit(cfg)
    except ReexecutionInMultirunError as error:  # every job of the sweep would fail the same way: end it now
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # sys.exit here would end the whole sweep
            return record_failure(Path(cfg.output_dir), error)
        if isinstance(error, UserError):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise
    if not math.isfinite(result.train_loss):  # the loss became NaN/inf: a result of the sweep, not a failure
        result.status = "diverged"
    if rank_zero_only.rank == 0:  # with the ddp strategy every process runs this function; one reports
        result.write_json(result.output_dir / "result.json")
        save_run_curves(result.output_dir)
        print("\n".join(result.summary_lines()))
    return result.test_acc


def record_failure(output_dir: Path, error: Exception) -> float:
    """In a sweep, one failing run must not end the others: record it in ``result.json`` and carry on.

    Returns NaN, which Optuna records as a failed trial; the sweep summary reports the run as failed and
    makes the sweep exit non-zero.
    """
    reason = f"{type(error).__name__}: {error}".splitlines()[0]
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "failed", "reason": reason, "output_dir": str(output_dir)}
    (output_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    log.error("run failed: %s", reason)
    return math.nan


if __name__ == "__main__":
    main()
