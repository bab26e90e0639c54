"""Faults lose nothing: killed, terminated or interrupted runs resume to the same result with one continuous
TensorBoard curve; diverged runs stop early and say so; concurrent runs and bad output folders are handled."""

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lenet_lightning.runs.folder import reserve_run_folder
from lenet_lightning.training.run import fit
from tests.conftest import fill_up, small_tmpfs
from tests.reliability_faults import NO_FIGURES, RECIPE, curves, fault, fit_until_ctrl_c


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130_and_keeps_the_checkpoint(make_config, tmp_path: Path) -> None:
    """A real SIGINT to this process, as Ctrl-C sends; Lightning's graceful shutdown, then our exit status."""
    cfg = make_config(*RECIPE, *fault(2, 3, signal.SIGINT, tmp_path / "fired"))
    interrupted = fit_until_ctrl_c(cfg)
    assert interrupted.exit_code == 130 and "SIGINT" in str(interrupted)
    run = Path(cfg.output_dir)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    # The other documented way to resume, ckpt_path=<run>/checkpoints/last.ckpt, through the fit() the CLI runs.
    resumed = fit(make_config(*RECIPE, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", output_dir=run))
    assert resumed.status == "completed"
    assert [step for step, _ in curves(run)["test/acc"]] == [1, 2, 3, 4], "one point per epoch, no duplicate"


def test_resume_with_nothing_to_resume_says_starting_fresh(make_config, tmp_path: Path, caplog) -> None:
    run = tmp_path / "stopped-early"
    (run / ".hydra").mkdir(parents=True)
    for overrides in ([f"resume={run}"], ["ckpt_path=last"]):
        caplog.clear()
        result = fit(make_config(*overrides, "epochs=1", NO_FIGURES, output_dir=run))
        assert result.status == "completed"
        assert f"nothing to resume: no {run / 'checkpoints' / 'last.ckpt'}" in caplog.text
        (run / "checkpoints" / "last.ckpt").unlink()


@pytest.mark.slow
def test_nan_loss_stops_within_the_epoch_reports_diverged_and_keeps_no_nan_checkpoint(
    run_command, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = run_command(
        "model.activation=relu", "lr=1e20", "epochs=3", "dataset.batch_size=32", f"hydra.run.dir={run}"
    )
    assert result.returncode == 3, result.stderr
    assert "diverged" in result.stderr and "epoch 1" in result.stderr
    summary = json.loads((run / "result.json").read_text())
    assert summary["status"] == "diverged"
    assert not (run / "checkpoints" / "last.ckpt").exists(), "no checkpoint of NaN weights"
    assert not re.search(r"^epoch \d", result.stdout, re.M), "stopped within the first epoch, before its end"


def test_divergence_after_a_good_epoch_keeps_the_last_finite_checkpoint(make_config) -> None:
    blow_up = ("+callbacks.blow_up._target_=tests.reliability_faults.BlowUpAt", "+callbacks.blow_up.epoch=2")
    cfg = make_config("model.activation=relu", "lr=0.3", "epochs=3", "dataset.batch_size=64", *blow_up)
    result = fit(cfg)
    assert result.status == "diverged" and "epoch 2" in result.reason
    state = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0, "the checkpoint of epoch 1 is kept, epoch 2 never saved"
    assert all(torch.isfinite(tensor).all() for tensor in state["state_dict"].values() if tensor.is_floating_point())


def test_a_taken_run_folder_name_is_never_reused(tmp_path: Path) -> None:
    wanted = tmp_path / "runs" / "2024-01-01" / "12-00-00"
    first, second, third = (reserve_run_folder(wanted) for _ in range(3))
    assert len({first, second, third}) == 3
    assert second.name == "12-00-00-1" and third.name == "12-00-00-2"


@pytest.mark.slow
def test_unwritable_output_folder_fails_at_start_up(run_command, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    result = run_command(f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write to the output folder" in lines[0] and str(blocker) in lines[0]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs filled to the brim (needs permission to mount; skipped without it)."""
    with small_tmpfs(tmp_path / "full", "256k") as mount:
        fill_up(mount, chunk=4096)
        yield mount


@pytest.mark.slow
def test_full_disk_fails_at_start_up(run_command, full_disk: Path) -> None:
    result = run_command(f"hydra.run.dir={full_disk / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(full_disk) in lines[0] and "No space left on device" in lines[0]
