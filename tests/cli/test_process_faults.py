"""A training process killed with SIGKILL or stopped with SIGTERM loses nothing: it resumes to the unbroken result.

The signal reaches a real ``python -m lenet_lightning.train`` process (the ``SignalAt`` test callback sends it at a
chosen step); the resumed run is held against the same recipe trained without a break, curve point by curve point.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lenet_lightning.training.run import fit
from tests.conftest import cli_env, compose_config
from tests.reliability_faults import CURVES, RECIPE, curves, fault

pytestmark = pytest.mark.slow  # every test starts the training command in a process of its own


@pytest.fixture(scope="module")
def unbroken(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The reference: the same recipe run without interruption, in process. Returns (result, curves)."""
    run = tmp_path_factory.mktemp("unbroken")
    cfg = compose_config("train", f"data_dir={tiny_data_dir}", *RECIPE)
    with open_dict(cfg):
        cfg.output_dir = str(run)
    result = fit(cfg)
    assert result.status == "completed"
    return {"train_loss": result.train_loss, "train_acc": result.train_acc, "test_acc": result.test_acc}, curves(run)


def assert_same_as_unbroken(run: Path, unbroken: tuple[dict, dict]) -> None:
    expected_result, expected_curves = unbroken
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed"
    for key, value in expected_result.items():
        assert result[key] == pytest.approx(value, abs=1e-4), key
    resumed_curves = curves(run)
    for tag in CURVES:
        steps = [step for step, _ in resumed_curves[tag]]
        assert steps == [1, 2, 3, 4], f"{tag}: one point per epoch, no duplicate: {steps}"
        assert [v for _, v in resumed_curves[tag]] == pytest.approx([v for _, v in expected_curves[tag]], abs=1e-4)


def test_kill_9_then_resume_continues_and_matches_an_unbroken_run(run_cli, run_command, tmp_path: Path, unbroken):
    run = tmp_path / "run"
    killed = run_cli(*RECIPE, f"hydra.run.dir={run}", *fault(3, 0, signal.SIGKILL, tmp_path / "fired"))
    assert killed.returncode == -signal.SIGKILL
    # Killed in epoch 3 after its evaluation was logged but before its checkpoint: epoch 2 is what was saved.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    resumed = run_command(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert_same_as_unbroken(run, unbroken)


def test_sigterm_saves_flushes_exits_143_and_the_printed_resume_command_pastes_back(
    run_cli, tmp_path: Path, tiny_data_dir: Path, unbroken
) -> None:
    """SIGTERM in epoch 3: exit 143, an interrupted record, the finished epochs' logs on disk, and a command that,
    pasted into a shell as printed (a folder name with a space, an accent and a comma), finishes the run."""
    run = tmp_path / "my runs" / "résumé,lr=0.3"
    terminated = run_cli(*RECIPE, f"hydra.run.dir={run}", *fault(3, 4, signal.SIGTERM, tmp_path / "fired"))
    assert terminated.returncode == 143, terminated.stderr
    assert "interrupted by SIGTERM" in terminated.stderr
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert [step for step, _ in curves(run)["test/acc"]] == [1, 2], "logs of the finished epochs are on disk"

    command = terminated.stderr.strip().splitlines()[-1].partition("continue with ")[2]
    assert command.startswith("python -m lenet_lightning.train ")
    shell_env = {**cli_env(tiny_data_dir), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pasted = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=shell_env, capture_output=True, text=True)
    assert pasted.returncode == 0, pasted.stderr[-3000:]
    assert_same_as_unbroken(run, unbroken)
