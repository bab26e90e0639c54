"""A checkpoint's own record (its class names) is the truth, checked against the run folder it sits in."""

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from lenet_lightning.inference.checkpoint import CheckpointError, load_checkpoint


def test_a_checkpoint_of_another_data_set_in_a_run_folder_is_refused(tiny_trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_trained_run, tmp_path / "mnist-run"))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = list(FashionMNIST.classes)  # a Fashion-MNIST model
    torch.save(checkpoint, run / "checkpoints" / "fashion.ckpt")
    with pytest.raises(CheckpointError, match=r"was trained on fashion, but its run folder .* is a run of mnist"):
        load_checkpoint(str(run / "checkpoints" / "fashion.ckpt"))
    assert load_checkpoint(str(run)).dataset_name == "mnist"  # the run's own checkpoint still loads
