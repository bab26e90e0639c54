"""Scaling out on real engines: several processes per run (Lightning DDP) and parallel sweeps (Hydra launchers)."""

import hashlib
import json
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import multiclass_accuracy

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.training.run import build, fit
from tests.conftest import CONFIG_DIR, TINY_TRAIN, cli_env, rank_shards, write_tiny_dataset

ODD_TEST_SIZE = 101  # not a multiple of the process count: a padded evaluation shard would count one image twice


class ShardRecorder(L.Callback):
    """Writes a fingerprint of every training image each process saw, per epoch, for the test to compare."""

    def __init__(self) -> None:
        self.epochs: list[list[str]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        pixels = batch[0].mul(255).round().to(torch.uint8).flatten(1)
        self.epochs[-1].extend(hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in pixels)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"shards-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.epochs))


def free_port() -> int:
    """A TCP port free on the loopback interface now, where the processes of one run meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fingerprints(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(image.flatten().numpy().tobytes()).hexdigest() for image in images]


@pytest.fixture(scope="module")
def odd_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd_data")
    write_tiny_dataset(root, "MNIST", n_test=ODD_TEST_SIZE)
    return root


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
def test_two_cpu_processes_train_one_run_with_synced_metrics(run_cli, odd_data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(
        "trainer=ddp_cpu",
        "epochs=2",
        "dataset.batch_size=32",
        "model.activation=relu",  # learns within the 16 steps, so the accuracy compared below is not chance
        "lr=0.1",
        "+callbacks.shard_recorder._target_=tests.training.test_scale_out.ShardRecorder",
        f"hydra.run.dir={run}",
        data_dir=odd_data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # One run folder, written by rank 0 only: one event file, one checkpoint, one result, one summary.
    assert sorted(path.name for path in tmp_path.rglob("events.out.tfevents.*")) == [
        next(run.glob("events.out.tfevents.*")).name
    ]
    assert sorted(path.relative_to(run).as_posix() for path in run.rglob("*.ckpt")) == ["checkpoints/last.ckpt"]
    assert done.stdout.count("run folder:") == 1
    result = json.loads((run / "result.json").read_text())
    assert result["device"] == "2 x cpu" and result["examples_per_second"] > 0

    # The logged test accuracy is that of the final weights on the whole test set, each image counted once.
    datamodule = MNISTDataModule(data_dir=str(odd_data_dir))
    datamodule.setup()
    images, labels = datamodule.splits["test"]
    module = LeNetClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    with torch.no_grad():
        logits = module(images.unsqueeze(1).float().div(255))
    expected = multiclass_accuracy(logits, labels, num_classes=10, average="micro").item()
    accumulator = EventAccumulator(str(run)).Reload()
    logged = [event.value for event in accumulator.Scalars("test/acc")]
    assert len(logged) == 2
    assert logged[-1] == pytest.approx(expected, abs=1e-6)
    assert result["test_acc"] == pytest.approx(expected, abs=1e-6)

    # Each process trained on its own half of every epoch; together they covered the whole training set.
    ranks = [json.loads((run / f"shards-rank{rank}.json").read_text()) for rank in range(2)]
    train_set = set(fingerprints(datamodule.splits["train"][0]))
    assert len(train_set) == TINY_TRAIN
    for epoch in range(2):
        rank0, rank1 = ranks[0][epoch], ranks[1][epoch]
        assert len(rank0) == len(rank1) == TINY_TRAIN // 2
        assert not set(rank0) & set(rank1)
        assert set(rank0) | set(rank1) == train_set
    assert ranks[0][0] != ranks[0][1]  # a new shuffle every epoch


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_process_with_their_global_batch(
    make_config, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """``trainer=ddp_multinode`` started twice, as on two machines, sharing one run folder.

    Lightning's LightningEnvironment reads MASTER_ADDR, MASTER_PORT, NODE_RANK and WORLD_SIZE. Each node takes
    every other example of each global batch of 2 x 32, so the steps are those of one process with batch 64.
    """
    run = tmp_path / "two-nodes"
    # In float64, so the comparison can be tight: in float32 the other order of the sums differs by 1e-7 after
    # one epoch, and by 5e-4 after two at this learning rate.
    recipe = ("accelerator=cpu", "trainer.precision=64-true", "epochs=2", "model.activation=relu", "lr=0.1")
    recipe += ("~callbacks.error_analysis",)  # its figures are not compared
    command = [sys.executable, "-m", "lenet_lightning.train", "trainer=ddp_multinode", "trainer.num_nodes=2"]
    command += ["trainer.devices=1", "dataset.batch_size=32", *recipe, f"hydra.run.dir={run}"]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    # One thread per process: two nodes on one 2-core machine would otherwise each use both cores (10x slower).
    rendezvous["OMP_NUM_THREADS"] = "1"
    logs = [(tmp_path / f"node{rank}.out", tmp_path / f"node{rank}.err") for rank in (0, 1)]
    nodes = []
    for rank, (out, err) in enumerate(logs):
        env = {**cli_env(tiny_data_dir), **rendezvous, "NODE_RANK": str(rank)}
        with out.open("w") as stdout, err.open("w") as stderr:
            nodes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr))
    try:
        deadline = time.monotonic() + 150
        exit_statuses = [node.wait(timeout=max(deadline - time.monotonic(), 1)) for node in nodes]
    finally:  # one node waiting for a peer that never comes must not outlive the test
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert exit_statuses == [0, 0], [err.read_text()[-2000:] for _, err in logs]
    assert [out.read_text().count("run folder:") for out, _ in logs] == [1, 0]  # rank 0 alone reports
    two_nodes = json.loads((run / "result.json").read_text())
    assert two_nodes["status"] == "completed" and two_nodes["device"] == "2 x cpu"

    one = fit(make_config(*recipe, "dataset.batch_size=64", output_dir=tmp_path / "one-process"))
    # Equal up to rounding: each node's mean gradient over 32 examples, averaged, instead of one mean over 64.
    for key in ("train_loss", "train_acc", "test_acc"):
        assert two_nodes[key] == pytest.approx(getattr(one, key), abs=1e-12), key
    weights = [torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True) for folder in (run, one.output_dir)]
    assert weights[0]["global_step"] == weights[1]["global_step"] == 2 * TINY_TRAIN // 64
    torch.testing.assert_close(weights[0]["state_dict"], weights[1]["state_dict"], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep_in_parallel_processes(run_cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
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
def test_multirun_with_reexecuting_ddp_fails_fast_with_the_fix(run_cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    done = run_cli(
        "-m",
        "trainer=ddp",
        "accelerator=cpu",
        "trainer.devices=2",
        "lr=0.1,0.3",
        f"hydra.sweep.dir={sweep}",
        timeout=120,
    )
    assert time.monotonic() - start < 120
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # then where the summary is
    assert len(errors) == 1 and errors[0].startswith("error: the ddp strategy re-runs the command")
    assert "trainer=ddp_cpu" in errors[0]
    assert "Traceback" not in done.stderr
    assert not list(sweep.rglob("*.ckpt")) and not list(sweep.rglob("events.out.tfevents.*"))
