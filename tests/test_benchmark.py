"""The throughput benchmark's three pipelines run on tiny data and report what they measure."""

import math
from pathlib import Path

import pytest
import torch

from benchmarks.throughput import (
    PIPELINES,
    accuracy_comparable,
    benchmark,
    format_table,
    recipe_lenet,
    run_project,
    summarize,
)
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.training.run import fit


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_each_pipeline_trains_and_reports_throughput_and_accuracy(tiny_data_dir: Path, name: str) -> None:
    measurement = PIPELINES[name](tiny_data_dir, "mnist", 1, 0)
    assert measurement.pipeline == name
    assert measurement.examples_per_second > 0 and math.isfinite(measurement.examples_per_second)
    assert 0.0 <= measurement.test_acc <= 1.0


def test_baselines_train_the_recipes_lenet_from_stock_layers() -> None:
    """Same weights for the same seed and the same function as the project's LeNet, without its speed-ups.

    Outputs agree to float32 rounding: the project's pooling adds each window's four terms in another order.
    """
    torch.manual_seed(0)
    stock = recipe_lenet()
    torch.manual_seed(0)
    project = LeNet()
    for a, b in zip(stock.parameters(), project.parameters(), strict=True):
        assert torch.equal(a, b)
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(stock(images), project(images))
    assert all(type(layer).__module__.startswith("torch.nn") for layer in stock)


def test_project_pipeline_is_the_normal_training_run(tiny_data_dir: Path, make_config) -> None:
    benchmarked = run_project(tiny_data_dir, "fashion", 2, 3)
    normal = fit(make_config("dataset=fashion", "epochs=2", "seed=3", "accelerator=cpu"))
    assert benchmarked.test_acc == normal.test_acc


def test_one_round_runs_every_pipeline_in_its_own_process_and_tabulates_ratios(tiny_data_dir: Path) -> None:
    measurements = benchmark(tiny_data_dir, "mnist", epochs=1, rounds=1, warm_up=False)
    assert {name: [m.pipeline for m in runs] for name, runs in measurements.items()} == {
        name: [name] for name in PIPELINES
    }
    table = summarize(measurements)
    assert table["seed"]["vs_seed"] == table["floor"]["vs_floor"] == table["floor_tuned"]["vs_floor_tuned"] == 1.0
    project = table["project"]
    assert project["vs_floor"] == project["examples_per_second"] / table["floor"]["examples_per_second"]
    assert project["vs_floor_tuned"] == project["examples_per_second"] / table["floor_tuned"]["examples_per_second"]
    assert "| project |" in format_table(table)
    assert isinstance(accuracy_comparable(table), bool)
