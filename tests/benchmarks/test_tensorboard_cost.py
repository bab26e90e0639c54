"""The TensorBoard cost benchmark runs both settings, each as a fresh training process, and prints their ratio."""

import re
import sys
from pathlib import Path

import pytest

import benchmarks.tensorboard_cost
from tests.conftest import cli_env


@pytest.mark.slow
def test_cost_benchmark_runs_both_settings_and_prints_the_ratio(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PYTHONPATH", cli_env(None)["PYTHONPATH"])  # the training processes use this checkout
    arguments = ("--data-dir", str(tiny_data_dir), "--epochs", "1", "--rounds", "1", "--no-warm-up")
    monkeypatch.setattr(sys, "argv", ["tensorboard_cost", *arguments])
    benchmarks.tensorboard_cost.main()
    output = capsys.readouterr().out
    assert re.search(r"ratio on/off: \d+\.\d+", output), output
