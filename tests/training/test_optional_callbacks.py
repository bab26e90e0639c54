"""The training run without optional callbacks: each callback stands alone, so any of them can be turned off,
by deleting its entry (``~callbacks.<name>``) or setting it to null (``callbacks.<name>=null``)."""

import math
from collections.abc import Callable

import pytest

from lenet_lightning.training.run import fit


@pytest.mark.parametrize(
    "callback, off",
    [
        ("epoch_timer", "~callbacks.epoch_timer"),
        ("divergence", "~callbacks.divergence"),
        ("error_analysis", "~callbacks.error_analysis"),
        ("logs_follow_checkpoints", "~callbacks.logs_follow_checkpoints"),
        ("per_class_accuracy", "callbacks.per_class_accuracy=null"),
        ("error_analysis", "callbacks.error_analysis=null"),
    ],
)
def test_run_completes_with_a_callback_removed(make_config: Callable, callback: str, off: str) -> None:
    result = fit(make_config(off, "epochs=1", "accelerator=cpu"))
    assert result.status == "completed"
    assert math.isfinite(result.test_acc)
    assert math.isfinite(result.examples_per_second) == (callback != "epoch_timer")
    if callback == "epoch_timer":
        assert "throughput not measured" in result.summary_lines()[1]
