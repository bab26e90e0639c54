"""The training command end to end on tiny data, run in this process: run folder, checkpoint, event files, summary."""

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.model.classifier import LeNetClassifier
from tests.reliability_faults import NO_FIGURES

EPOCHS = 3


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_training_run_writes_checkpoint_events_and_summary(run_command, tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "my_run"
    done = run_command(
        f"epochs={EPOCHS}", "accelerator=cpu", "dataset.batch_size=64", NO_FIGURES, f"hydra.run.dir={run_dir}"
    )
    assert done.returncode == 0, done.stderr[-3000:]

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == EPOCHS - 1  # saved after every epoch: the 0-based index of the last one
    restored = LeNetClassifier(**checkpoint["hyper_parameters"])
    restored.load_state_dict(checkpoint["state_dict"])

    curves = scalars(run_dir)
    for tag in ("train/loss", "train/acc", "test/acc"):
        assert [step for step, _ in curves[tag]] == list(range(1, EPOCHS + 1)), tag

    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["test_acc"] == curves["test/acc"][-1][1]
    assert result["train_acc"] == curves["train/acc"][-1][1]

    summary = re.search(r"^loss (\d\.\d{3}), train acc (\d\.\d{3}), test acc (\d\.\d{3})$", done.stdout, re.M)
    assert summary, done.stdout
    assert float(summary[3]) == round(curves["test/acc"][-1][1], 3)
    assert re.search(r"^\d+\.\d examples/sec on cpu \(wall clock", done.stdout, re.M)
    assert "tensorboard --logdir outputs/my_run\n" in done.stdout  # relative to the working directory


@pytest.mark.slow
def test_hparams_tab_lists_the_run_with_test_accuracy(run_command, tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "hp_run"
    done = run_command("epochs=1", "lr=0.3", NO_FIGURES, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert "test/acc" in [metric.name.tag for metric in experiment.metric_infos]
    assert session.hparams["lr"].number_value == 0.3
    assert session.hparams["dataset.name"].string_value == "mnist"


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_another_seed_other_curves(run_command, tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("first", "second", "other")}
    for name, run_dir in runs.items():
        seed = 1 if name == "other" else 0
        done = run_command("epochs=1", f"seed={seed}", "lr=0.3", NO_FIGURES, f"hydra.run.dir={run_dir}")
        assert done.returncode == 0, done.stderr[-3000:]
    first, second, other = (scalars(run_dir) for run_dir in runs.values())
    assert first == second
    assert set(first) >= {"train/loss", "train/acc", "test/acc"}
    assert first["train/loss"] != other["train/loss"]


def test_missing_data_is_one_line_and_exit_2(run_command, tmp_path: Path) -> None:
    done = run_command("dataset=fashion", f"hydra.run.dir={tmp_path / 'r'}", data_dir=tmp_path / "empty")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: FashionMNIST files could not be downloaded"), done.stderr
    assert "Traceback" not in done.stderr
