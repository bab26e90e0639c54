"""The CPU speed settings: the memory_format knob and freed host memory kept for reuse."""

import resource
from pathlib import Path

import pytest
import torch

from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.host_memory import keep_freed_host_memory
from lenet_lightning.training.run import build, fit


def conv2_weight(module) -> torch.Tensor:
    return module.net.features[3].weight  # 16 x 6 x 5 x 5: its two layouts have different strides


def test_channels_last_lays_weights_out_so_and_saves_plain_weights(make_config) -> None:
    cfg = make_config("accelerator=cpu", "epochs=1", "memory_format=channels_last")
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    weight = conv2_weight(module)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    checkpoint = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    plain = LeNet()
    plain.load_state_dict({key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()})
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(plain.eval()(images), module.net.eval()(images))


def test_default_memory_format_keeps_the_default_layout(make_config) -> None:
    datamodule, module, trainer = build(make_config("accelerator=cpu", "epochs=1"))
    trainer.fit(module, datamodule=datamodule)
    assert conv2_weight(module).is_contiguous()


def test_channels_last_trains_the_same_model_as_the_default_layout(make_config, tmp_path: Path) -> None:
    """Only the order of floating-point sums differs between the layouts, so the metrics agree closely."""
    runs = [
        fit(make_config("accelerator=cpu", "epochs=3", f"memory_format={layout}", output_dir=tmp_path / layout))
        for layout in ("channels_last", "contiguous")
    ]
    channels_last, contiguous = runs
    assert channels_last.train_loss == pytest.approx(contiguous.train_loss, rel=1e-3)
    assert channels_last.train_acc == pytest.approx(contiguous.train_acc, abs=0.02)
    assert channels_last.test_acc == pytest.approx(contiguous.test_acc, abs=0.02)


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    """Twenty 8 MB activations allocated and freed in turn: kept for reuse, all of them together fault in fewer
    pages than one block has (with glibc's defaults a fresh process faulted in about eight blocks' worth)."""
    if not keep_freed_host_memory():
        pytest.skip("needs glibc's malloc")
    block = 2**21  # float32 elements: 8 MB, below the kept-memory threshold like LeNet's activations
    torch.ones(block)  # the first block may grow the heap once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(block)  # written in full, so every page of it is touched
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < block * 4 // resource.getpagesize()
