"""Export a trained LeNet to ONNX or TorchScript and check the file against PyTorch.

Exports the trained LeNet (N x 1 x 28 x 28 images in [0, 1] -> N x 10 logits, any batch size N) and
then runs the exported file with onnxruntime or ``torch.jit.load`` on test images, comparing its logits
with PyTorch's. The class names travel inside the file (ONNX metadata ``class_names``, TorchScript extra
file ``class_names.json``). Torch is imported only once a checkpoint is exported, so ``--help`` stays quick.

The file is written beside its target under a temporary name and renamed into place only once its check
passed, so a file that failed (or an interrupted export) never sits under the name users load. The target
follows the rules of ``outputs.py``: it replaces an earlier export of this tool (recognised by its class
names), and another file only when named with ``overwrite``, never a run's record or a data set. A full disk
ends in one line with the temporary file removed; the file is written by Python, never by TorchScript's C++
writer, which aborts the process on a full disk.
"""

import io
import json
import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lenet_lightning.errors import UserError
from lenet_lightning.inference.outputs import check_output_file, written_in_full
from lenet_lightning.runs.atomic import replaced_on_success

if TYPE_CHECKING:
    from torch import Tensor, nn

    from lenet_lightning.data.datamodule import MNISTDataModule

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
CHECK_BATCH = 256  # test images compared after export
SECOND_BATCH = 7  # a batch size other than CHECK_BATCH, to show the batch dimension is dynamic
EXPORT_EXTRA_HINT = "pip install 'lenet-lightning[export]'"


class ExportCheckError(Exception):
    """The exported model's logits differ from PyTorch's by more than the tolerance, or by NaN."""


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


def missing_onnx(error: ImportError) -> UserError:
    """The one-line fix for a missing ONNX package, wherever it is first needed."""
    return UserError(
        f"ONNX export needs the onnx and onnxscript packages ({error.name} is missing): {EXPORT_EXTRA_HINT}"
    )


def import_onnx() -> ModuleType:
    """``onnx``, imported only for ONNX exports (an optional extra)."""
    try:
        import onnx
    except ImportError as error:
        raise missing_onnx(error) from error
    return onnx


def export_onnx(net: "nn.Module", example: "Tensor", path: Path, class_names: list[str]) -> None:
    """ONNX with a dynamic batch dimension, input ``images`` and output ``logits``, in one self-contained file."""
    import torch

    onnx = import_onnx()
    try:
        program = torch.onnx.export(
            net,
            (example,),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    except ImportError as error:
        raise missing_onnx(error) from error
    model = program.model_proto
    onnx.helper.set_model_props(model, {"class_names": json.dumps(class_names)})
    onnx.save(model, path, format="protobuf")  # not guessed from the (temporary) file name


def is_earlier_export(path: Path, format: str) -> bool:
    """Whether ``path`` is a model this tool exported: ONNX with ``class_names`` metadata, TorchScript with the file."""
    if format == "onnx":
        from google.protobuf.message import DecodeError  # protobuf comes with onnx

        onnx = import_onnx()
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError):
            return False
        return any(prop.key == "class_names" for prop in model.metadata_props)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/extra/class_names.json") for name in archive.namelist())


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
        archive = io.BytesIO()  # torch.jit.save to a path aborts the process (C++) when the disk is full
        torch.jit.save(scripted, archive, _extra_files={"class_names.json": json.dumps(class_names)})
    path.write_bytes(archive.getvalue())


def run_torchscript(path: Path, images: "Tensor") -> "Tensor":
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        scripted = torch.jit.load(str(path))
    with torch.inference_mode():
        return scripted(images)


def check_images(datamodule: "MNISTDataModule") -> tuple["Tensor", str]:
    """The first test images of the run's data set, or seeded random images when the data is not on disk."""
    import torch

    from lenet_lightning.data.datamodule import to_network_input

    if datamodule.missing_files():
        generator = torch.Generator().manual_seed(0)
        return torch.rand(
            CHECK_BATCH, 1, 28, 28, generator=generator
        ), f"{CHECK_BATCH} random images (no test set on disk)"
    datamodule.setup()
    images = datamodule.splits["test"][0][:CHECK_BATCH]
    return to_network_input(images), f"{len(images)} {datamodule.dataset_class.__name__} test images"


def largest_difference(pairs: list[tuple["Tensor", "Tensor"]]) -> float:
    """The largest absolute difference over all (actual, expected) pairs; NaN when any value is NaN.

    Taken in one tensor reduction, which propagates NaN: Python's ``max`` would silently drop a NaN.
    """
    import torch

    return float(torch.cat([(actual - expected).abs().flatten() for actual, expected in pairs]).max())


def within_tolerance(difference: float, tolerance: float) -> bool:
    """NaN and infinity are never within tolerance (``nan > tolerance`` is False, so that test would pass them)."""
    return math.isfinite(difference) and difference <= tolerance


def export(
    ckpt_path: str | None,
    format: str = "onnx",
    output: str | None = None,
    data_dir: str | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
) -> ExportResult:
    """Export the checkpoint's network, run the exported file on test images and compare with PyTorch.

    ``overwrite`` lets a named ``output`` replace a file this tool did not export.
    """
    import torch

    from lenet_lightning.inference.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt_path)
    net = loaded.module.net.eval()
    datamodule = loaded.datamodule(data_dir)
    path = Path(output) if output else loaded.path.with_suffix(FORMATS[format])
    check_output_file(
        path,
        loaded.files_read(datamodule),
        named=bool(output),
        is_own_output=lambda p: is_earlier_export(p, format),
        overwrite=overwrite,
        data_folders=loaded.data_folders(datamodule),
        home=loaded.path.parent,
    )
    images, checked_on = check_images(datamodule)
    with torch.inference_mode():
        expected = net(images)
    with written_in_full(f"the {format} model to {path}"), replaced_on_success(path) as staged:
        if format == "onnx":
            export_onnx(net, images[:2], staged, loaded.class_names)
            # The full check batch and a second size: both differ from the 2-image example used to export.
            pairs = [
                (run_onnx(staged, images), expected),
                (run_onnx(staged, images[:SECOND_BATCH]), expected[:SECOND_BATCH]),
            ]
            checked_on += f" and a batch of {SECOND_BATCH}"
        else:
            export_torchscript(net, staged, loaded.class_names)
            pairs = [(run_torchscript(staged, images), expected)]
        result = ExportResult(path, format, checked_on, largest_difference(pairs), tolerance)
        if not within_tolerance(result.max_abs_difference, tolerance):
            raise ExportCheckError(
                f"the exported {format} model's logits differ from PyTorch's by {result.max_abs_difference:.3g} "
                f"on {checked_on}, more than the tolerance {tolerance:g}; {path} was left as it was"
            )
    return result
