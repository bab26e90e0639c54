"""Faults lose nothing: killed, terminated or interrupted runs resume to the same result with one continuous
TensorBoard curve; diverged runs stop early and say so; concurrent runs and bad output folders are handled."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.runs.folder import reserve_run_folder
from lenet_lightning.training.run import fit
from tests.conftest import CONFIG_DIR, cli_env
from tests.reliability_faults import NO_FIGURES, fault, fit_until_ctrl_c

# A recipe that learns the tiny data set in 4 epochs of 8 steps, so resumed and unbroken runs can be compared.
RECIPE = ("epochs=4", "dataset.batch_size=64", "lr=0.3", "model.activation=relu", "accelerator=cpu", NO_FIGURES)
CURVES = ("train/loss", "train/acc", "test/acc")


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in CURVES}


@pytest.fixture(scope="module")
def unbroken(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The reference: the same recipe run without interruption, in process. Returns (result, curves)."""
    run = tmp_path_factory.mktemp("unbroken")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data_dir={tiny_data_dir}", *RECIPE])
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


@pytest.mark.slow
def test_kill_9_then_resume_continues_and_matches_an_unbroken_run(run_cli, tmp_path: Path, unbroken) -> None:
    run = tmp_path / "run"
    killed = run_cli(*RECIPE, f"hydra.run.dir={run}", *fault(3, 0, signal.SIGKILL, tmp_path / "fired"))
    assert killed.returncode == -signal.SIGKILL
    # Killed in epoch 3 after its evaluation was logged but before its checkpoint: epoch 2 is what was saved.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    resumed = run_cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert_same_as_unbroken(run, unbroken)


@pytest.mark.slow
def test_sigterm_saves_flushes_exits_143_and_resumes(run_cli, make_config, tmp_path: Path, unbroken) -> None:
    run = tmp_path / "run"
    terminated = run_cli(*RECIPE, f"hydra.run.dir={run}", *fault(3, 4, signal.SIGTERM, tmp_path / "fired"))
    assert terminated.returncode == 143, terminated.stderr
    assert "interrupted by SIGTERM" in terminated.stderr and f"resume={run}" in terminated.stderr
    assert json.loads((run / "result.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    flushed = curves(run)
    assert [step for step, _ in flushed["test/acc"]] == [1, 2], "logs of the finished epochs are on disk"
    # The other documented way to resume, ckpt_path=<run>/checkpoints/last.ckpt, through the fit() the CLI runs.
    resumed = fit(make_config(*RECIPE, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", output_dir=run))
    resumed.write_json(run / "result.json")
    assert_same_as_unbroken(run, unbroken)


def test_ctrl_c_stops_cleanly_with_exit_130_and_keeps_the_checkpoint(make_config, tmp_path: Path) -> None:
    """A real SIGINT to this process, as Ctrl-C sends; Lightning's graceful shutdown, then our exit status."""
    cfg = make_config(*RECIPE, *fault(2, 3, signal.SIGINT, tmp_path / "fired"))
    interrupted = fit_until_ctrl_c(cfg)
    assert interrupted.exit_code == 130 and "SIGINT" in str(interrupted)
    assert torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


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
def test_nan_loss_stops_within_the_epoch_reports_diverged_and_keeps_no_nan_checkpoint(run_cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_cli("model.activation=relu", "lr=1e20", "epochs=3", "dataset.batch_size=32", f"hydra.run.dir={run}")
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


@pytest.mark.slow
def test_two_runs_started_together_get_separate_folders(tmp_path: Path, tiny_data_dir: Path) -> None:
    args = [sys.executable, "-m", "lenet_lightning.train", "epochs=1", "accelerator=cpu", NO_FIGURES]
    processes = [
        subprocess.Popen(
            [*args, f"seed={seed}"],
            cwd=tmp_path,
            env=cli_env(tiny_data_dir),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    runs = sorted(path.parent for path in (tmp_path / "outputs" / "runs").glob("*/*/result.json"))
    assert len(runs) == 2
    seeds = sorted((run / ".hydra" / "overrides.yaml").read_text().split("seed=")[1].strip() for run in runs)
    assert seeds == ["1", "2"], "each folder holds its own run, nothing overwritten"


def test_a_taken_run_folder_name_is_never_reused(tmp_path: Path) -> None:
    wanted = tmp_path / "runs" / "2024-01-01" / "12-00-00"
    first, second, third = (reserve_run_folder(wanted) for _ in range(3))
    assert len({first, second, third}) == 3
    assert second.name == "12-00-00-1" and third.name == "12-00-00-2"


@pytest.mark.slow
def test_unwritable_output_folder_fails_at_start_up(run_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    result = run_cli(f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write to the output folder" in lines[0] and str(blocker) in lines[0]


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 kB tmpfs filled to the brim (needs permission to mount; skipped without it)."""
    mount = tmp_path / "full"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with (mount / "filler").open("wb", buffering=0) as file, pytest.raises(OSError):
            while True:
                file.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_fails_at_start_up(run_cli, full_disk: Path) -> None:
    result = run_cli(f"hydra.run.dir={full_disk / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(full_disk) in lines[0] and "No space left on device" in lines[0]
