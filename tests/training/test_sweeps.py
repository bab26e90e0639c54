"""Sweeps end to end through the real CLI: readable run folders, TensorBoard, the summary, failures, Optuna."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from lenet_lightning.reporting.records import best_test_acc, read_run
from lenet_lightning.reporting.sweep_summary import collect_runs

# ReLU learns the tiny data within two epochs, so the runs differ and their order means something.
TINY_SWEEP = ("epochs=2", "model.activation=relu")


def sweep_dir_of(tmp_path: Path) -> Path:
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    return sweep_dir


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def assert_png(path: Path) -> None:
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path


@pytest.mark.slow
def test_lr_sweep_names_runs_and_summarises_them(run_command, tmp_path: Path, tiny_data_dir: Path) -> None:
    lrs = ("0.05", "0.3", "0.9")
    done = run_command("-m", f"lr={','.join(lrs)}", *TINY_SWEEP)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_dir = sweep_dir_of(tmp_path)
    names = {f"epochs=2,lr={lr},model.activation=relu" for lr in lrs}
    assert {path.name for path in sweep_dir.iterdir() if path.is_dir()} == names

    # One TensorBoard view of the sweep lists every run by its folder name, with scalars and HPARAMS.
    tensorboard = EventMultiplexer()
    tensorboard.AddRunsFromDirectory(str(sweep_dir))
    tensorboard.Reload()
    assert set(tensorboard.Runs()) == names
    assert set(tensorboard.PluginRunToTagToContent("hparams")) == names
    curves = {name: {tag: tensorboard.Scalars(name, tag) for tag in ("train/loss", "test/acc")} for name in names}
    for name in names:
        assert [event.step for event in curves[name]["test/acc"]] == [1, 2]

    rows = read_summary(sweep_dir)
    assert sorted(row["lr"] for row in rows) == sorted(lrs)
    assert [float(row["test_acc"]) for row in rows] == sorted((float(row["test_acc"]) for row in rows), reverse=True)
    for row in rows:
        events = curves[row["run"]]
        test_acc = [event.value for event in events["test/acc"]]
        assert row["status"] == "completed"
        assert float(row["test_acc"]) == pytest.approx(test_acc[-1])
        assert float(row["train_loss"]) == pytest.approx(events["train/loss"][-1].value)
        assert float(row["best_test_acc"]) == pytest.approx(max(test_acc))
        assert test_acc[int(row["best_epoch"]) - 1] == max(test_acc)
        assert float(row["wall_s"]) > 0
        assert_png(sweep_dir / row["run"] / "curves.png")
        # The job's saved config names the data folder it read, not ${oc.env:LENET_DATA_DIR,data}.
        assert f"data_dir: {tiny_data_dir}\n" in (sweep_dir / row["run"] / ".hydra" / "config.yaml").read_text()

    markdown = (sweep_dir / "summary.md").read_text()
    assert all(f"| {name} | completed |" in markdown for name in names)
    assert "| run | status |" in done.stdout and all(name in done.stdout for name in names)
    assert_png(sweep_dir / "sweep_test_acc.png")
    assert_png(sweep_dir / "sweep_test_acc_vs_lr.png")


@pytest.mark.slow
def test_failed_and_diverged_runs_do_not_stop_the_sweep(run_command, tiny_data_dir: Path, tmp_path: Path) -> None:
    # The job with an empty data folder fails as it looks for its files (download=false); lr=1e+30 turns the ReLU
    # net's loss into NaN (diverged). A value the config check refuses stops the sweep before it starts, and so do
    # jobs that would share a folder (names leave data_dir out).
    empty = tmp_path / "no-data"
    empty.mkdir()
    refused = run_command("-m", "lr=-1,0.3", *TINY_SWEEP)
    assert refused.returncode == 2 and "sweep job lr=-1" in refused.stderr and not (tmp_path / "outputs").exists()
    shared = run_command("-m", f"data_dir={tiny_data_dir},{empty}", *TINY_SWEEP)
    assert shared.returncode == 2 and "would share the run folder" in shared.stderr, shared.stderr

    numbered = ("hydra.sweep.subdir=job${hydra.job.num}", "dataset.download=false")  # a folder per job
    done = run_command("-m", f"data_dir={tiny_data_dir},{empty}", "lr=1e+30,0.3", *numbered, *TINY_SWEEP)
    assert done.returncode != 0
    assert "2 of 4 runs failed" in done.stderr
    sweep_dir = sweep_dir_of(tmp_path)
    rows = read_summary(sweep_dir)
    assert [row["status"] for row in rows] == ["completed", "diverged", "failed", "failed"]
    assert all("MNIST files are missing" in row["reason"] for row in rows[2:]), rows
    good = {row["lr"]: row for row in rows if row["status"] != "failed"}
    assert "MNIST files are missing" in rows[2]["reason"], rows
    assert good["1e+30"]["best_test_acc"] == "" and good["1e+30"]["best_epoch"] == ""
    assert json.loads((sweep_dir / good["1e+30"]["run"] / "result.json").read_text())["train_loss"] is None  # not NaN
    assert float(good["0.3"]["test_acc"]) > 0.15  # ran beside the failures, and learned
    assert "MNIST files are missing" in (sweep_dir / "summary.md").read_text()
    assert_png(sweep_dir / "sweep_test_acc.png")


def make_job_folder(folder: Path, overrides: str) -> Path:
    """A job folder as Hydra leaves it before the job writes anything: only ``.hydra/overrides.yaml``."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(overrides)
    return folder


@pytest.mark.slow
def test_a_sweep_run_again_into_its_folder_reports_each_runs_own_wall_time(run_command, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    for _ in range(2):
        done = run_command("-m", "lr=0.3", "epochs=1", f"hydra.sweep.dir={sweep_dir}")
        assert done.returncode == 0, done.stderr[-3000:]
    (row,) = read_summary(sweep_dir)
    run_dir = sweep_dir / row["run"]
    training = json.loads((run_dir / "result.json").read_text())["wall_seconds"]
    assert float(row["wall_s"]) == pytest.approx(training)
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, "the second sweep skipped the job its first sweep completed"
    assert "run skipped:" in done.stdout
    assert re.search(rf"^1 runs, {round(training)} s of training", done.stdout, re.M), done.stdout


def test_run_without_result_counts_as_failed(tmp_path: Path) -> None:
    """A job that died before writing result.json still gets a row, marked failed."""
    run_dir = tmp_path / "lr=0.3"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- lr=0.3\n- data_dir=/somewhere\n")
    (run,) = collect_runs(tmp_path, exclude=frozenset({"data_dir"}))
    assert (run.name, run.status, run.overrides) == ("lr=0.3", "failed", {"lr": "0.3"})
    assert "result.json" in run.reason and math.isnan(read_run(run_dir).test_acc)


def test_nan_epochs_never_count_as_best() -> None:
    curves = {"test/acc": {1: 0.4, 2: 0.6, 3: math.nan, 4: 0.9}, "test/loss": {1: 1.0, 2: 0.8, 3: 0.7, 4: math.nan}}
    assert best_test_acc(curves) == (0.6, 2)
    assert best_test_acc({"test/acc": {1: math.nan}})[1] is None
