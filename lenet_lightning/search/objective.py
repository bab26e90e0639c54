"""What a search optimises: a validation metric, never a test one, and what each trial hands back to the sweeper.

The test set estimates how well the chosen model does on new data only if it played no part in choosing it, so a
trial's outcome carries no test metric at all; the study summary shows test accuracy as information, read from
the run's ``result.json`` after the trial has been scored.
"""

import math
from pathlib import Path
from typing import Any

from lenet_lightning.errors import UserError

VALIDATION_METRICS = {"val/acc": "maximize", "val/loss": "minimize"}  # metric -> Optuna direction


def direction_of(objective: str) -> str:
    """The direction a study of ``objective`` takes; anything but a validation metric is refused."""
    if objective not in VALIDATION_METRICS:
        choices = ", ".join(VALIDATION_METRICS)
        raise UserError(
            f"hydra.sweeper.objective={objective} cannot be optimised: a search chooses on the validation split "
            f"only ({choices}); the test set stays unseen until the end"
        )
    return VALIDATION_METRICS[objective]


def outcome(status: str, val_acc: float, val_loss: float, epochs: int, output_dir: Path) -> dict[str, Any]:
    """A trial's outcome as the task returns it to the sweeper: its status and validation metrics only."""
    return {"status": status, "val/acc": val_acc, "val/loss": val_loss, "epochs": epochs, "output_dir": str(output_dir)}


def objective_value(outcome: Any, objective: str) -> float | None:
    """The trial's value of ``objective``, or None when the trial has none (it failed, or its metric is NaN)."""
    direction_of(objective)
    if not isinstance(outcome, dict):
        return None
    value = outcome.get(objective)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
