"""Data lives on the training device and batches are built there; the CUDA run is skipped without a GPU."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.training.run import build


def test_splits_and_batches_stay_on_the_trainers_device(tiny_data_dir: Path) -> None:
    """The "meta" device stands in for a GPU: any tensor left on the host would show up as cpu here."""
    datamodule = MNISTDataModule(data_dir=str(tiny_data_dir), download=False, batch_size=64)
    datamodule.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0, world_size=1
    )
    datamodule.setup("fit")
    assert {tensor.device.type for split in datamodule.splits.values() for tensor in split} == {"meta"}
    train_loader = datamodule.train_dataloader()
    assert train_loader.indices().device.type == "meta"
    images, labels = next(iter(train_loader))
    assert images.device.type == labels.device.type == "meta"
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    test_images, _ = next(iter(datamodule.val_dataloader()[0]))
    assert test_images.device.type == "meta"


@pytest.mark.gpu
def test_gpu_run_keeps_the_data_set_on_the_gpu(make_config) -> None:
    datamodule, module, trainer = build(make_config("accelerator=gpu", "epochs=1"))
    trainer.fit(module, datamodule=datamodule)
    assert all(tensor.is_cuda for split in datamodule.splits.values() for tensor in split)


@pytest.mark.gpu
def test_gpu_speed_knobs_train_and_save_plain_weights(make_config) -> None:
    from lenet_lightning.training.run import fit

    cfg = make_config("accelerator=gpu", "epochs=1", "compile=default", "trainer.precision=bf16-mixed")
    result = fit(cfg)
    checkpoint = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(key.startswith("net.") for key in checkpoint["state_dict"])
    assert result.status == "completed"
