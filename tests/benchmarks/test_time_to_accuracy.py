"""The speedrun experiments play fair, and the time-to-accuracy benchmark times and tabulates what it says."""

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import benchmarks.time_to_accuracy
from benchmarks.time_to_accuracy import GOALS, Run, format_table, summarize, verdict
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.training.run import fit
from tests.conftest import REAL_DATA_DIR, TINY_TEST

SPEEDRUNS = {"mnist": "speedrun_mnist", "fashion": "speedrun_fashion"}
MAX_PARAMETERS = 100_000


def monitored_keys(node: object) -> list[str]:
    """Every ``monitor`` key in a config tree: a callback that watches a metric to decide something."""
    if isinstance(node, dict):
        own = ["monitor"] if "monitor" in node else []
        return own + [key for value in node.values() for key in monitored_keys(value)]
    if isinstance(node, list):
        return [key for value in node for key in monitored_keys(value)]
    return []


@pytest.mark.parametrize("dataset", sorted(SPEEDRUNS))
def test_speedrun_is_a_small_lenet_on_a_fixed_schedule_that_never_watches_the_test_set(
    make_config, dataset: str
) -> None:
    cfg = make_config(f"experiment={SPEEDRUNS[dataset]}")
    assert cfg.dataset.name == dataset
    network = LeNet(**OmegaConf.to_container(cfg.model))
    assert sum(parameter.numel() for parameter in network.parameters()) <= MAX_PARAMETERS
    assert cfg.trainer.max_epochs == cfg.epochs  # the run's length is set in advance
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=False)
    assert monitored_keys(callbacks) == []  # no early stopping or best-checkpoint choice by a test metric
    assert not any("EarlyStopping" in str(callback.get("_target_")) for callback in callbacks.values())


def runs_of(command: str, dataset: str, accuracies: list[float], wall: float, train: float = 1.0) -> list[Run]:
    return [Run(command, dataset, seed, wall, train, acc) for seed, acc in enumerate(accuracies)]


def test_summary_gives_every_seed_mean_min_and_wall_time_over_the_seed_recipes() -> None:
    runs = runs_of("seed_recipe", "mnist", [0.96, 0.97], wall=100.0) + runs_of(
        "speedrun", "mnist", [0.991, 0.989], wall=15.0, train=9.0
    )
    rows = {row["command"]: row for row in summarize(runs)}
    speedrun = rows["speedrun"]
    assert speedrun["test_acc"] == [0.991, 0.989] and speedrun["seeds"] == [0, 1]
    assert speedrun["mean_acc"] == pytest.approx(0.990) and speedrun["min_acc"] == 0.989
    assert speedrun["wall_vs_seed_recipe"] == pytest.approx(0.15)
    assert speedrun["train_seconds"] == 9.0
    assert rows["seed_recipe"]["wall_vs_seed_recipe"] == 1.0
    assert verdict(speedrun).startswith("met")
    assert "| mnist | speedrun | 0.9910 0.9890 | 0.9900 | 0.9890 |" in format_table(list(rows.values()))


@pytest.mark.parametrize(
    ("accuracies", "wall"),
    [([0.995, 0.987], 15.0), ([0.989, 0.989], 15.0), ([0.995, 0.995], 21.0)],
    ids=["one seed too low", "mean too low", "too slow"],
)
def test_verdict_misses_when_any_part_of_the_goal_is_missed(accuracies: list[float], wall: float) -> None:
    goal = GOALS["mnist"]
    assert (goal.mean_acc, goal.min_acc, goal.max_wall_ratio) == (0.990, 0.988, 0.2)
    runs = runs_of("seed_recipe", "mnist", [0.96], wall=100.0) + runs_of("speedrun", "mnist", accuracies, wall)
    speedrun = next(row for row in summarize(runs) if row["command"] == "speedrun")
    assert verdict(speedrun).startswith("MISSED")


@pytest.mark.slow
def test_command_line_times_each_command_in_its_own_process_and_writes_every_run_to_json(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "tta.json"
    argv = ["time_to_accuracy", "--data-dir", str(tiny_data_dir), "--datasets", "fashion", "--seeds", "1"]
    argv += ["--project-override", "dataset.batch_size=64", "--no-warm-up"]  # one-cycle needs batches on tiny data
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(output)])
    benchmarks.time_to_accuracy.main()
    payload = json.loads(output.read_text())
    runs = payload["runs"]
    assert [(run["dataset"], run["command"], run["seed"]) for run in runs] == [
        ("fashion", "seed_recipe", 0),
        ("fashion", "speedrun", 0),
    ]
    for run in runs:  # read back from each process: its own training time inside the wall time it was given
        assert run["wall_seconds"] > run["train_seconds"] > 0
        assert run["test_acc"] * TINY_TEST == pytest.approx(round(run["test_acc"] * TINY_TEST))
    assert {row["command"] for row in payload["summary"]} == {"seed_recipe", "speedrun"}
    assert "| fashion | speedrun |" in capsys.readouterr().out


@pytest.mark.real_data
def test_speedrun_mnist_reaches_98_5_percent_on_the_real_test_set(make_config) -> None:
    cfg = make_config("experiment=speedrun_mnist", "accelerator=cpu", data_dir=Path(REAL_DATA_DIR))
    result = fit(cfg)
    assert result.status == "completed"
    assert result.test_acc >= 0.985, result


def test_the_recipe_and_the_speedrun_are_the_training_command_with_their_own_overrides(tmp_path: Path) -> None:
    """The recipe's row (``--with-recipe``) runs the same command as the speedrun's, timed the same way."""
    arguments = (tmp_path / "data", "fashion", 2, "cpu", tmp_path / "run", ("dataset.batch_size=64",))
    recipe = benchmarks.time_to_accuracy.COMMANDS["recipe"](*arguments)
    speedrun = benchmarks.time_to_accuracy.COMMANDS["speedrun"](*arguments)
    assert recipe[1:3] == speedrun[1:3] == ["-m", "lenet_lightning.train"]
    assert recipe[3] == "dataset=fashion" and speedrun[3] == "experiment=speedrun_fashion"
    assert recipe[4:] == speedrun[4:] == [
        f"data_dir={tmp_path / 'data'}", "seed=2", "accelerator=cpu", f"hydra.run.dir={tmp_path / 'run'}",
        "dataset.batch_size=64",
    ]  # fmt: skip
