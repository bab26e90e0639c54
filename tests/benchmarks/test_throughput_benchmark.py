"""The throughput benchmark's pipelines run on tiny data, train what they claim, and report it."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import benchmarks.seed_recipe
import benchmarks.throughput
from benchmarks.seed_recipe import PlainRun
from benchmarks.throughput import (
    PIPELINES,
    PIPELINES_ON,
    Measurement,
    accuracy_comparable,
    benchmark,
    format_table,
    gpu_goals,
    run_project,
    summarize,
)
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.cpu_layers import convert_to_fast_cpu_layers
from lenet_lightning.training.run import RunResult, fit
from tests.conftest import TINY_TEST


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PIPELINES_ON["cpu"], "floor_graphed"])  # floor_graphed: uncaptured on a CPU
def test_each_pipeline_trains_and_reports_throughput_and_accuracy(tiny_data_dir: Path, name: str) -> None:
    measurement = PIPELINES[name](tiny_data_dir, "mnist", 1, 0)
    assert measurement.pipeline == name
    assert measurement.examples_per_second > 0 and math.isfinite(measurement.examples_per_second)
    correct = measurement.test_acc * TINY_TEST  # the accuracy counts every tiny test image once
    assert correct == pytest.approx(round(correct)) and 0 <= round(correct) <= TINY_TEST


@pytest.mark.parametrize("name", ["seed", "floor", "floor_tuned"])
def test_plain_loops_train_the_projects_lenet_stock_or_converted(
    tiny_data_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed and floor train the stock network, floor_tuned the one training swaps in; all from the same weights."""
    trained = []

    def record_model(model: torch.nn.Module, *_) -> PlainRun:
        trained.append(model)
        return PlainRun(1.0, 1, 0.5)

    for module in (benchmarks.seed_recipe, benchmarks.throughput):
        monkeypatch.setattr(module, "train_epochs_plain", record_model)
    PIPELINES[name](tiny_data_dir, "mnist", 1, 0)
    torch.manual_seed(0)
    expected = LeNet()
    if name == "floor_tuned":
        convert_to_fast_cpu_layers(expected)
    (model,) = trained
    assert [type(layer) for layer in model.modules()] == [type(layer) for layer in expected.modules()]
    for a, b in zip(model.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_project_pipeline_runs_with_the_training_commands_settings(
    tiny_data_dir: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config ``python -m lenet_lightning.train`` composes (fast_cpu_layers on), but for the run's own keys."""
    configs = []

    def fake_fit(cfg):
        configs.append(cfg)
        return RunResult("completed", 0.0, 0.0, 0.5, 1.0, "cpu", Path(cfg.output_dir))

    monkeypatch.setattr(benchmarks.throughput, "fit", fake_fit)
    run_project(tiny_data_dir, "fashion", 2, 3)
    PIPELINES["project_graphed"](tiny_data_dir, "fashion", 2, 3, accelerator="gpu", eval_batch_size=1000)
    benchmarked, graphed = configs
    normal = make_config(
        "dataset=fashion", "epochs=2", "seed=3", "accelerator=cpu", output_dir=benchmarked.output_dir, figures=True
    )
    assert benchmarked.fast_cpu_layers is True and benchmarked.cuda_graph is False
    assert OmegaConf.to_container(benchmarked) == OmegaConf.to_container(normal)
    normal_graphed = make_config(
        "dataset=fashion", "epochs=2", "seed=3", "accelerator=gpu", "dataset.eval_batch_size=1000", "cuda_graph=true",
        output_dir=graphed.output_dir, figures=True,
    )  # fmt: skip
    assert OmegaConf.to_container(graphed) == OmegaConf.to_container(normal_graphed)


@pytest.mark.slow
def test_project_pipeline_is_the_normal_training_run(tiny_data_dir: Path, make_config) -> None:
    benchmarked = run_project(tiny_data_dir, "fashion", 2, 3)
    normal = fit(make_config("dataset=fashion", "epochs=2", "seed=3", "accelerator=cpu"))
    assert benchmarked.test_acc == normal.test_acc


@pytest.mark.slow
def test_one_round_runs_every_pipeline_in_its_own_process_and_tabulates_ratios(tiny_data_dir: Path) -> None:
    measurements = benchmark(tiny_data_dir, "mnist", epochs=1, rounds=1, warm_up=False)
    assert {name: [m.pipeline for m in runs] for name, runs in measurements.items()} == {
        name: [name] for name in PIPELINES_ON["cpu"]
    }
    for (run,) in measurements.values():
        assert 0 < run.train_seconds < run.process_seconds
    table = summarize(measurements)
    assert table["seed"]["vs_seed"] == table["floor"]["vs_floor"] == table["floor_tuned"]["vs_floor_tuned"] == 1.0
    project = table["project"]
    assert project["vs_floor"] == project["examples_per_second"] / table["floor"]["examples_per_second"]
    assert project["vs_floor_tuned"] == project["examples_per_second"] / table["floor_tuned"]["examples_per_second"]
    assert "| project |" in format_table(table)


def test_accuracy_check_flags_pipelines_that_learned_differently() -> None:
    def table(*accuracies: float) -> dict[str, dict[str, float]]:
        return {f"pipeline{i}": {"test_acc": acc} for i, acc in enumerate(accuracies)}

    assert accuracy_comparable(table(0.86, 0.89, 0.90))
    assert not accuracy_comparable(table(0.86, 0.11))


def gpu_round(floor: float, floor_graphed: float, project: float, graphed: float, gap: float) -> dict:
    """One round of the GPU pipelines with these examples/sec (60,000 examples a 1-epoch run)."""
    rates = {"seed": 30_000.0, "floor": floor, "floor_graphed": floor_graphed, "project": project}
    rates["project_graphed"] = graphed
    runs = {name: [Measurement(name, rate, 0.99, 60_000 / rate, 10.0)] for name, rate in rates.items()}
    runs["project_graphed"][0].test_acc = 0.99 + gap
    return runs


def test_gpu_goals_are_judged_on_the_measured_ratios_and_seconds() -> None:
    met = gpu_round(floor=120_000, floor_graphed=400_000, project=110_000, graphed=350_000, gap=0.002)
    table = summarize(met)
    assert table["project_graphed"]["vs_floor_graphed"] == 350_000 / 400_000
    assert "| floor_graphed |" in format_table(table) and "vs floor_graphed" in format_table(table)
    lines = gpu_goals(table, met, epochs=1)
    assert len(lines) == 5 and all(line.endswith(": met") for line in lines), lines
    missed = gpu_round(floor=120_000, floor_graphed=400_000, project=90_000, graphed=250_000, gap=0.01)
    lines = gpu_goals(summarize(missed), missed, epochs=1)
    assert [line.endswith("NOT met") for line in lines] == [True, True, True, True, True], lines


@pytest.mark.gpu
@pytest.mark.slow
def test_one_gpu_round_runs_the_graphed_pipelines(tiny_data_dir: Path) -> None:
    measurements = benchmark(tiny_data_dir, "mnist", epochs=1, rounds=1, accelerator="gpu", warm_up=False)
    assert list(measurements) == list(PIPELINES_ON["gpu"])
    assert len(gpu_goals(summarize(measurements), measurements, epochs=1)) == 5
