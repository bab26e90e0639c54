"""Checkpoints hold only tensors and plain containers, load with weights_only=True, refuse pickle payloads,
and are written atomically so a kill during a save keeps the previous one."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lenet_lightning.errors import UserError
from lenet_lightning.runs.checkpoint_files import AtomicCheckpointIO, load_checkpoint_safely
from tests.conftest import REPO_ROOT


class Payload:
    """Unpickling this creates a file: the harmless stand-in for code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class FailsHalfway:
    """Pickling this raises, after torch.save has already written part of the file."""

    def __reduce__(self):
        raise OSError("disk went away mid-save")


def only_plain_values(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and only_plain_values(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(only_plain_values(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | torch.Tensor)


@pytest.fixture
def real_checkpoint(tiny_trained_run: Path) -> Path:
    """The checkpoint training wrote: the shared one-epoch tiny run's (read only)."""
    return tiny_trained_run / "checkpoints" / "last.ckpt"


def test_checkpoints_hold_only_tensors_and_plain_containers(real_checkpoint: Path) -> None:
    checkpoint = torch.load(real_checkpoint, weights_only=True)
    assert only_plain_values(checkpoint)
    assert load_checkpoint_safely(real_checkpoint)["epoch"] == 0


def test_checkpoint_with_a_pickle_payload_is_refused_not_executed(tmp_path: Path) -> None:
    marker, crafted = tmp_path / "payload-ran", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "extra": Payload(marker)}, crafted)
    with pytest.raises(UserError, match="refused") as raised:
        load_checkpoint_safely(crafted)
    assert str(crafted) in str(raised.value)
    with pytest.raises(UserError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(crafted, weights_only=False)  # the Trainer's loader ignores the opt-out
    assert not marker.exists()


def test_zip_that_is_not_a_lightning_checkpoint_is_named(tmp_path: Path) -> None:
    tensor_file = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, tensor_file)
    with pytest.raises(UserError, match=f"{tensor_file} is not a Lightning checkpoint"):
        load_checkpoint_safely(tensor_file)


def test_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 1}, target)
    with pytest.raises(OSError, match="mid-save"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "epoch": 2, "x": FailsHalfway()}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1
    assert os.listdir(target.parent) == ["last.ckpt"], "no temporary file left behind"


SAVE_FOREVER = textwrap.dedent(
    """
    import sys, torch
    from lenet_lightning.runs.checkpoint_files import AtomicCheckpointIO
    io, epoch = AtomicCheckpointIO(), 0
    while True:
        io.save_checkpoint({"state_dict": {"w": torch.full((2_000_000,), float(epoch))}, "epoch": epoch}, sys.argv[1])
        epoch += 1
        print(epoch, flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """Saves of an 8 MB checkpoint in a loop, killed at an arbitrary moment, several times over."""
    target = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "1"  # the first save is complete
    time.sleep(0.37)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    checkpoint = torch.load(target, weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["w"], torch.full((2_000_000,), float(checkpoint["epoch"])))
