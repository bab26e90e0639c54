"""Real run folders for eval, predict and export, and a way to run those commands in this process."""

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _pytest.capture import CaptureResult
from omegaconf import OmegaConf
from PIL import Image

from lenet_lightning.runs.layout import RESULT_FILE, RUN_CONFIG, SAVED_OVERRIDES
from lenet_lightning.runs.record import write_result_json
from tests.conftest import call_command


def run_tool(monkeypatch: pytest.MonkeyPatch, command: str, *arguments: str) -> int:
    """``python -m lenet_lightning.<command> <arguments>`` from the current folder, in this process; its exit status.

    Its output stays in pytest's capture for the test to read.
    """
    module = f"lenet_lightning.{command}"
    return call_command(module, *arguments, cwd=Path.cwd(), data_dir=None, monkeypatch=monkeypatch).returncode


def md5(path: Path) -> str:
    """The file's md5, as ``md5sum`` prints it: what the tests compare before and after a command."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def one_error_line(captured: CaptureResult[str]) -> str:
    """The single ``error: ...`` line a refused command prints (nothing else on stderr, no traceback)."""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-3000:]
    return lines[0]


def copy_run(trained: Path, folder: Path, data_dir: Path) -> Path:
    """A copy of a trained run as training leaves it (record, log, events), reading its data from ``data_dir``."""
    shutil.copytree(trained, folder)
    config = OmegaConf.load(folder / RUN_CONFIG)
    config.data_dir = str(data_dir)
    OmegaConf.save(config, folder / RUN_CONFIG)
    (folder / SAVED_OVERRIDES).write_text("- epochs=1\n")
    write_result_json(folder / RESULT_FILE, {"status": "completed", "test_acc": 0.5})
    (folder / "train.log").write_text("[2025-01-01 12:00:00] epoch 1: train loss 2.30\n")
    return folder


@pytest.fixture
def data_dir(tiny_data_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of the tiny MNIST, to protect."""
    shutil.copytree(tiny_data_dir / "MNIST", tmp_path / "data" / "MNIST")
    return tmp_path / "data"


@pytest.fixture
def run_a(tiny_trained_run: Path, data_dir: Path, tmp_path: Path) -> Path:
    """The run whose checkpoint the command uses."""
    return copy_run(tiny_trained_run, tmp_path / "run_a", data_dir)


@pytest.fixture
def run_b(tiny_trained_run: Path, data_dir: Path, tmp_path: Path) -> Path:
    """Another run, with a projector of its last epoch: what a command using run A must leave alone."""
    folder = copy_run(tiny_trained_run, tmp_path / "run_b", data_dir)
    projector = folder / "00001" / "test_features"
    projector.mkdir(parents=True)
    for name in ("tensors.tsv", "metadata.tsv", "sprite.png"):
        (projector / name).write_text(f"run B's {name}\n")
    (folder / "projector_config.pbtxt").write_text('embeddings {\n  tensor_name: "test_features:00001"\n}\n')
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC a decoder checks."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def digit_png(path: Path) -> Path:
    """A 28 x 28 picture like the tiny data set's: one bright band of rows on black."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[8:10, 4:24] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    return digit_png(tmp_path / "seven.png")
