"""Scaling out on real engines: several processes per run (Lightning DDP) and parallel sweeps (Hydra launchers)."""

import json
import pickle
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.training.run import build
from tests.conftest import CONFIG_DIR, rank_shards

ODD_TEST_SIZE = 101  # not a multiple of the process count: a padded evaluation shard would count one image twice


def test_evaluation_shards_are_disjoint_unpadded_and_cover_the_set() -> None:
    shards = rank_shards(ODD_TEST_SIZE, world_size=2, batch_size=8)
    seen = [torch.cat([batch_labels for _, batch_labels in shard]).tolist() for shard in shards]
    assert [len(s) for s in seen] == [51, 50]
    assert [len(shard) for shard in shards] == [7, 7]
    assert sorted(seen[0] + seen[1]) == list(range(ODD_TEST_SIZE))


def test_training_shards_reshuffle_every_epoch_identically_on_every_rank() -> None:
    shards = rank_shards(20, world_size=2, batch_size=4, seed=5)
    epochs = [[shard.indices().tolist() for shard in shards] for _ in range(2)]
    for rank0, rank1 in epochs:
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == list(range(20))
    assert epochs[0] != epochs[1]


def test_datamodule_pickles_with_its_shuffling_state() -> None:
    """ddp_spawn pickles the DataModule into each process; the copy must draw the same permutations."""
    datamodule = MNISTDataModule(seed=3)
    torch.randperm(10, generator=datamodule.shuffle_generator)  # advance past the seed's first draw
    copy = pickle.loads(pickle.dumps(datamodule))
    assert torch.equal(
        torch.randperm(10, generator=copy.shuffle_generator), torch.randperm(10, generator=datamodule.shuffle_generator)
    )


@pytest.mark.parametrize(
    ("option", "launcher", "processes"),
    [("ddp", _SubprocessScriptLauncher, 1), ("ddp_cpu", _MultiProcessingLauncher, 2), ("ddp_multinode", None, 2)],
)
def test_trainer_options_pick_the_intended_strategy(make_config, option: str, launcher, processes: int) -> None:
    _, _, trainer = build(make_config(f"trainer={option}", "accelerator=cpu"))
    if launcher is not None:
        assert isinstance(trainer.strategy.launcher, launcher)
    assert trainer.world_size == processes  # ddp: every visible device, here one CPU; multinode: 2 nodes x 1


def test_slurm_launcher_composes_with_one_process_per_gpu() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 1


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep_in_parallel_processes(run_command, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_command(
        "-m", "hydra/launcher=parallel", "epochs=1", "accelerator=cpu", "lr=0.1,0.3", f"hydra.sweep.dir={sweep}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/result.json")}
    assert sorted(results) == ["accelerator=cpu,epochs=1,lr=0.1", "accelerator=cpu,epochs=1,lr=0.3"]
    assert all(result["status"] == "completed" for result in results.values())
    summary = (sweep / "summary.csv").read_text()  # written by the launching process once both jobs returned
    assert all(name in summary for name in results)
    assert "Joblib" in done.stdout + done.stderr  # the plugin, not the sequential basic launcher, ran the jobs


@pytest.mark.slow
def test_multirun_with_reexecuting_ddp_fails_fast_with_the_fix(run_command, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    done = run_command(
        "-m",
        "trainer=ddp",
        "accelerator=cpu",
        "trainer.devices=2",
        "lr=0.1,0.3",
        f"hydra.sweep.dir={sweep}",
    )
    assert time.monotonic() - start < 120
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # then where the summary is
    assert len(errors) == 1 and errors[0].startswith("error: the ddp strategy re-runs the command")
    assert "trainer=ddp_cpu" in errors[0]
    assert "Traceback" not in done.stderr
    assert not list(sweep.rglob("*.ckpt")) and not list(sweep.rglob("events.out.tfevents.*"))
