"""The training run without optional callbacks: each callback stands alone, so any of them can be turned off,
by deleting its entry (``~callbacks.<name>``) or setting it to null (``callbacks.<name>=null``)."""

import math
from collections.abc import Callable

import pytest

from lenet_lightning.training.run import fit


@pytest.mark.parametrize("off", ["~callbacks.{}", "callbacks.{}=null"])
@pytest.mark.parametrize(
    "callback", ["epoch_timer", "divergence", "error_analysis", "per_class_accuracy", "logs_follow_checkpoints"]
)
def test_run_completes_with_a_callback_removed(make_config: Callable, callback: str, off: str) -> None:
    result = fit(make_config(off.format(callback), "epochs=1", "accelerator=cpu"))
    assert result.status == "completed"
    assert math.isfinite(result.test_acc)
    assert math.isfinite(result.examples_per_second) == (callback != "epoch_timer")
    if callback == "epoch_timer":
        assert "throughput not measured" in result.summary_lines()[1]
