"""Export a trained LeNet to ONNX or TorchScript and check the file against PyTorch.

Exports the trained LeNet (N x 1 x 28 x 28 images in [0, 1] -> N x 10 logits, any batch size N) and
then runs the exported file with onnxruntime or ``torch.jit.load`` on test images, comparing its logits
with PyTorch's. The class names travel inside the file (ONNX metadata ``class_names``, TorchScript extra
file ``class_names.json``). Torch is imported only once a checkpoint is exported, so ``--help`` stays quick.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lenet_lightning.config.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from lenet_lightning.inference.checkpoint import LoadedCheckpoint

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
CHECK_BATCH = 256  # test images compared after export
SECOND_BATCH = 7  # a batch size other than CHECK_BATCH, to show the batch dimension is dynamic
EXPORT_EXTRA_HINT = "pip install 'lenet-lightning[export]'"


class ExportCheckError(Exception):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    path: Path
    format: str
    checked_on: str  # what the check ran on, in words
    max_abs_difference: float
    tolerance: float

    def summary_lines(self) -> list[str]:
        return [
            f"exported {self.format} model: {self.path}",
            f"check: {self.format} vs PyTorch logits on {self.checked_on}: "
            f"max abs difference {self.max_abs_difference:.3g} (tolerance {self.tolerance:g}): OK",
        ]


def export_onnx(net: "nn.Module", example: "Tensor", path: Path, class_names: list[str]) -> None:
    """ONNX with a dynamic batch dimension, input ``images`` and output ``logits``, in one self-contained file."""
    import torch

    try:
        program = torch.onnx.export(
            net,
            (example,),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        import onnx
    except ImportError as error:
        raise UserError(
            f"ONNX export needs the onnx and onnxscript packages ({error.name} is missing): {EXPORT_EXTRA_HINT}"
        ) from error
    model = program.model_proto
    onnx.helper.set_model_props(model, {"class_names": json.dumps(class_names)})
    onnx.save(model, path)


def run_onnx(path: Path, images: "Tensor") -> "Tensor":
    import torch

    try:
        import onnxruntime
    except ImportError as error:
        raise UserError(f"checking the ONNX export needs onnxruntime: {EXPORT_EXTRA_HINT}") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def export_torchscript(net: "nn.Module", path: Path, class_names: list[str]) -> None:
    import torch

    with warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export, but it is still what libtorch (C++) loads.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        scripted = torch.jit.script(net)
        torch.jit.save(scripted, str(path), _extra_files={"class_names.json": json.dumps(class_names)})


def run_torchscript(path: Path, images: "Tensor") -> "Tensor":
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        scripted = torch.jit.load(str(path))
    with torch.inference_mode():
        return scripted(images)


def check_images(loaded: "LoadedCheckpoint", data_dir: str | None) -> tuple["Tensor", str]:
    """The first test images of the run's data set, or seeded random images when the data is not on disk."""
    import torch

    from lenet_lightning.data.datamodule import to_network_input

    datamodule = loaded.datamodule(data_dir)
    if datamodule.missing_files():
        generator = torch.Generator().manual_seed(0)
        return torch.rand(
            CHECK_BATCH, 1, 28, 28, generator=generator
        ), f"{CHECK_BATCH} random images (no test set on disk)"
    datamodule.setup()
    images = datamodule.splits["test"][0][:CHECK_BATCH]
    return to_network_input(images), f"{len(images)} {datamodule.dataset_class.__name__} test images"


def export(
    ckpt_path: str | None,
    format: str = "onnx",
    output: str | None = None,
    data_dir: str | None = None,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export the checkpoint's network, run the exported file on test images and compare with PyTorch."""
    import torch

    from lenet_lightning.inference.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt_path)
    net = loaded.module.net.eval()
    path = Path(output) if output else loaded.path.with_suffix(FORMATS[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    images, checked_on = check_images(loaded, data_dir)
    with torch.inference_mode():
        expected = net(images)
    if format == "onnx":
        export_onnx(net, images[:2], path, loaded.class_names)
        # The full check batch and a second size: both differ from the 2-image example used to export.
        actual = run_onnx(path, images)
        second = run_onnx(path, images[:SECOND_BATCH])
        difference = max((actual - expected).abs().max(), (second - expected[:SECOND_BATCH]).abs().max())
        checked_on += f" and a batch of {SECOND_BATCH}"
    else:
        export_torchscript(net, path, loaded.class_names)
        difference = (run_torchscript(path, images) - expected).abs().max()
    result = ExportResult(path, format, checked_on, float(difference), tolerance)
    if result.max_abs_difference > tolerance:
        raise ExportCheckError(
            f"the exported {format} model's logits differ from PyTorch's by {result.max_abs_difference:.3g} "
            f"on {checked_on}, more than the tolerance {tolerance:g}"
        )
    return result
