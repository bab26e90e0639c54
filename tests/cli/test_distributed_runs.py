"""One run over several processes (Lightning DDP on the CPU) and over two nodes, as real processes.

``trainer=ddp_cpu`` spawns its training processes, ``trainer=ddp`` starts the command again per process, and
``trainer=ddp_multinode`` is started once per node: each is a real ``python -m lenet_lightning.train``.
"""

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import multiclass_accuracy

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.reporting.per_class_accuracy import PER_CLASS_TAG
from lenet_lightning.runs.layout import LAST_CHECKPOINT
from lenet_lightning.training.run import fit
from tests.conftest import TINY_TRAIN, cli_env, make_tiny_split, write_idx, write_tiny_dataset
from tests.reliability_faults import NO_FIGURES
from tests.reporting.test_tensorboard_insight import NAMES, checkpoint_outputs, scalars, tiny_test_set

pytestmark = pytest.mark.slow  # every test starts several training processes
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
def noisy_odd_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MNIST with 101 test images, a third of their labels drawn at random: each class is then partly right,
    differently in each process's share."""
    root = tmp_path_factory.mktemp("noisy_odd_data")
    raw = write_tiny_dataset(root, "MNIST", n_test=ODD_TEST_SIZE)
    _, labels = make_tiny_split(ODD_TEST_SIZE, seed=1)
    rng = np.random.default_rng(0)
    relabelled = rng.random(ODD_TEST_SIZE) < 1 / 3
    labels[relabelled] = rng.integers(0, 10, relabelled.sum())
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    return root


def test_two_cpu_processes_train_one_run_with_synced_metrics_and_per_class_accuracy(
    run_cli, noisy_odd_data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    done = run_cli(
        "trainer=ddp_cpu",
        "epochs=2",
        "dataset.batch_size=32",
        "model.activation=relu",  # learns within the 16 steps, so the accuracy compared below is not chance
        "lr=0.1",
        NO_FIGURES,
        f"+callbacks.shard_recorder._target_={__name__}.ShardRecorder",
        f"hydra.run.dir={run}",
        data_dir=noisy_odd_data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert PER_CLASS_TAG not in done.stderr  # no warning about them (such as Lightning's sync_dist advice)

    # One run folder, written by rank 0 only: one event file, one checkpoint, one result, one summary.
    assert sorted(path.name for path in tmp_path.rglob("events.out.tfevents.*")) == [
        next(run.glob("events.out.tfevents.*")).name
    ]
    assert sorted(path.relative_to(run).as_posix() for path in run.rglob("*.ckpt")) == ["checkpoints/last.ckpt"]
    assert done.stdout.count("run folder:") == 1
    result = json.loads((run / "result.json").read_text())
    assert result["device"] == "2 x cpu" and result["examples_per_second"] > 0

    # The logged test accuracy is that of the final weights on the whole test set, each image counted once.
    datamodule = MNISTDataModule(data_dir=str(noisy_odd_data_dir))
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

    # Per-class accuracy counts every process's share: weighted by the class sizes it adds up to test/acc.
    images, labels = tiny_test_set(noisy_odd_data_dir)
    counts = torch.bincount(labels, minlength=10).double()
    curves = scalars(run)
    for epoch in (1, 2):
        accuracies = torch.tensor([curves[f"{PER_CLASS_TAG}/{name}"][epoch] for name in NAMES], dtype=torch.float64)
        assert float((accuracies * counts).sum() / ODD_TEST_SIZE) == pytest.approx(curves["test/acc"][epoch], abs=1e-6)
    _, probabilities = checkpoint_outputs(run, images)
    predicted = probabilities.argmax(dim=1)
    per_class = [float((predicted[labels == index] == index).double().mean()) for index in range(10)]
    final = [curves[f"{PER_CLASS_TAG}/{name}"][2] for name in NAMES]
    assert final == pytest.approx(per_class, abs=1e-6)
    assert any(0 < value < 1 for value in final), final  # a process's share alone would not give these

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


def test_resume_of_a_run_over_several_processes(run_cli, tmp_path: Path) -> None:
    """The extra ddp processes compose the resumed config too; only rank 0 claims the folder and logs."""
    run = tmp_path / "run"
    ddp = ("trainer=ddp", "accelerator=cpu", "trainer.devices=2", NO_FIGURES)
    started = run_cli(*ddp, "epochs=1", f"hydra.run.dir={run}")
    assert started.returncode == 0, started.stderr[-3000:]
    resumed = run_cli(f"resume={run}", "epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / LAST_CHECKPOINT, weights_only=True)["epoch"] + 1 == 2


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
