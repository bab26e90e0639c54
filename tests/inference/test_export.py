"""export: ONNX and TorchScript files that give PyTorch's logits, at batch sizes other than the exported one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lenet_lightning.inference.checkpoint import load_checkpoint
from lenet_lightning.inference.export import export

TOLERANCE = 1e-4  # float32 logits of a 61k-parameter net; observed differences are around 1e-6


@pytest.fixture(scope="module")
def checkpoint(tiny_trained_run: Path) -> Path:
    return tiny_trained_run / "checkpoints" / "last.ckpt"


def pytorch_logits(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return load_checkpoint(str(checkpoint)).module(images).numpy()


@pytest.mark.slow
def test_onnx_matches_pytorch_at_any_batch_size(checkpoint: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    import onnx  # here: loading ONNX and its runtime costs every test process half a second at collection
    import onnxruntime

    path = tmp_path / "lenet.onnx"
    result = export(str(checkpoint), "onnx", str(path), data_dir=str(tiny_data_dir), tolerance=TOLERANCE)
    assert result.max_abs_difference <= TOLERANCE
    assert "MNIST test images and a batch of 7" in result.checked_on

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 28, 28]
    for batch_size in (1, 33):
        images = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(batch_size))
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        np.testing.assert_allclose(logits, pytorch_logits(checkpoint, images), rtol=0, atol=TOLERANCE)
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["class_names"])[0] == "0 - zero"


def test_torchscript_matches_pytorch(checkpoint: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "lenet.torchscript.pt"
    result = export(str(checkpoint), "torchscript", str(path), data_dir=str(tiny_data_dir), tolerance=TOLERANCE)
    assert result.max_abs_difference <= TOLERANCE
    extra = {"class_names.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["class_names.json"])[-1] == "9 - nine"
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_allclose(scripted(images).numpy(), pytorch_logits(checkpoint, images), rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_cli_writes_beside_the_checkpoint_and_prints_the_check(tiny_trained_run_copy: Path, run_command) -> None:
    checkpoint = tiny_trained_run_copy / "checkpoints" / "last.ckpt"
    done = run_command(f"ckpt_path={checkpoint}", "format=onnx", module="lenet_lightning.export")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (checkpoint.parent / "last.onnx").is_file()
    assert f"exported onnx model: {checkpoint.parent / 'last.onnx'}" in done.stdout
    assert "check: onnx vs PyTorch logits on 128 MNIST test images and a batch of 7: max abs difference" in done.stdout
    assert "(tolerance 0.0001): OK" in done.stdout


def test_unknown_format_is_one_line_and_exit_2(checkpoint: Path, run_command) -> None:
    done = run_command(f"ckpt_path={checkpoint}", "format=tflite", module="lenet_lightning.export")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: format=tflite is not one of onnx, torchscript"]
