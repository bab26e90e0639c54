"""Data files: missing, truncated, corrupted or hostile IDX files are caught before training, and
parallel runs sharing an empty data folder download once and both succeed."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.data.files import CorruptDataError, DataUnavailableError, ensure_dataset_files, find_problems
from lenet_lightning.training.run import fit
from tests.conftest import IDX_FILES, REPO_ROOT, write_idx, write_tiny_dataset

OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private, writable copy of the tiny MNIST files."""
    write_tiny_dataset(tmp_path / "data", "MNIST")
    return tmp_path / "data"


def copy_fetch(source: Path):
    """A fetch function that 'downloads' by copying the tiny files, counting its calls."""
    calls = []

    def fetch(dataset_class: type[MNIST], root: Path) -> None:
        calls.append(root)
        shutil.copytree(source / dataset_class.__name__ / "raw", root / dataset_class.__name__ / "raw")

    return fetch, calls


def failing_fetch(dataset_class: type[MNIST], root: Path) -> None:
    raise OSError("[Errno 101] Network is unreachable")


def test_missing_data_offline_is_bounded_and_names_folder_files_and_env(tmp_path: Path, monkeypatch) -> None:
    """The real torchvision download against a refused connection (the CLI's one line: tests/test_cli.py)."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="could not be downloaded") as raised:
        ensure_dataset_files(MNIST, tmp_path / "empty")
    assert time.perf_counter() - start < 10
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_FILES) and "LENET_DATA_DIR" in message


@pytest.mark.parametrize("damage", ["truncated", "empty", "header"])
def test_damaged_file_is_reported_with_its_path_when_offline(data_dir: Path, damage: str) -> None:
    path = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte"
    content = path.read_bytes()
    path.write_bytes({"truncated": content[:-100], "empty": b"", "header": b"\x01" + content[1:]}[damage])
    with pytest.raises(CorruptDataError) as raised:
        ensure_dataset_files(MNIST, data_dir, fetch=failing_fetch)
    message = str(raised.value)
    assert str(path) in message and "Network is unreachable" in message
    assert path.read_bytes() != content, "the damaged file is left for the user to inspect"


def test_damaged_file_with_download_off_is_reported_before_loading(data_dir: Path) -> None:
    path = data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    datamodule = MNISTDataModule(data_dir=str(data_dir), download=False)
    with pytest.raises(CorruptDataError, match=f"{path} is truncated"):
        datamodule.setup("fit")


def test_official_size_file_with_wrong_checksum_is_caught(data_dir: Path) -> None:
    """A file with the official example count must match the published md5; here its bytes are random."""
    raw = data_dir / "MNIST" / "raw"
    labels = np.random.default_rng(0).integers(0, 10, 10_000).astype(np.uint8)
    images = np.zeros((10_000, 28, 28), dtype=np.uint8)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    problems = find_problems(raw, "MNIST", list(IDX_FILES))
    assert "md5" in problems[raw / "t10k-labels-idx1-ubyte"]
    assert "md5" in problems[raw / "t10k-images-idx3-ubyte"]


def test_damaged_file_is_fetched_again_when_network_is_available(data_dir: Path, tiny_data_dir: Path) -> None:
    path = data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:20])
    fetch, calls = copy_fetch(tiny_data_dir)
    ensure_dataset_files(MNIST, data_dir, fetch=fetch)
    assert len(calls) == 1
    assert path.read_bytes() == (tiny_data_dir / "MNIST" / "raw" / path.name).read_bytes()
    assert not [p for p in (data_dir / "MNIST").iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("train-images-idx3-ubyte", (2**31, 28, 28)),  # claims 1.7 TB of images
        ("train-images-idx3-ubyte", (512, 1000, 1000)),  # wrong image shape
        ("train-labels-idx1-ubyte", (60_001,)),  # more than the official set holds
    ],
)
def test_header_with_unexpected_dimensions_is_refused_before_allocating(data_dir: Path, name: str, dims) -> None:
    path = data_dir / "MNIST" / "raw" / name
    body = path.read_bytes()[8 + 4 * (len(dims) - 1) + 4 :]
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + body)
    datamodule = MNISTDataModule(data_dir=str(data_dir), download=False)
    with pytest.raises(CorruptDataError, match="header dimensions") as raised:
        datamodule.setup("fit")
    assert str(path) in str(raised.value)
    assert not datamodule.splits


def out_of_range_labels(raw: Path, split: str, label: int) -> Path:
    """Set one label of a split to ``label``: the file keeps its header and size, only its contents are wrong."""
    path = raw / f"{split}-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[8 + 17] = label
    path.write_bytes(bytes(content))
    return path


def no_examples(raw: Path, split: str) -> Path:
    """Both files of a split with zero examples: header, size and image/label counts all agree."""
    write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8))
    return raw / f"{split}-images-idx3-ubyte"


CONTENT_DAMAGE = {
    "train label 10": (
        lambda raw: out_of_range_labels(raw, "train", 10),
        "label 10 at example 17 (1 of 512 labels outside 0 to 9",
    ),
    "test label 255": (lambda raw: out_of_range_labels(raw, "t10k", 255), "label 255 at example 17 (1 of 128"),
    "no training examples": (lambda raw: no_examples(raw, "train"), "holds no examples"),
    "no test examples": (lambda raw: no_examples(raw, "t10k"), "holds no examples"),
}


@pytest.mark.parametrize("damage", CONTENT_DAMAGE)
def test_files_with_sound_headers_but_bad_contents_are_refused_in_one_line(data_dir: Path, damage: str) -> None:
    """A label the loss cannot take or an empty split: refused with the file's path, not a traceback mid-training."""
    damage_files, expected = CONTENT_DAMAGE[damage]
    path = damage_files(data_dir / "MNIST" / "raw")
    with pytest.raises(CorruptDataError, match=re.escape(expected)) as raised:
        MNISTDataModule(data_dir=str(data_dir), download=False).setup("test")  # what eval runs before testing
    assert str(path) in str(raised.value)
    with pytest.raises(CorruptDataError) as raised:
        ensure_dataset_files(MNIST, data_dir, fetch=failing_fetch)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "delete it to download it again" in message


def test_a_bad_label_stops_training_before_the_trainer_is_built(data_dir: Path, make_config, tmp_path: Path) -> None:
    path = out_of_range_labels(data_dir / "MNIST" / "raw", "train", 255)
    cfg = make_config("accelerator=cpu", "dataset.download=false", data_dir=data_dir, output_dir=tmp_path / "run")
    with pytest.raises(CorruptDataError, match=re.escape(f"{path} holds label 255 at example 17")):
        fit(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


RACE_SCRIPT = textwrap.dedent(
    """
    import shutil, sys, time
    from pathlib import Path
    from torchvision.datasets import MNIST
    from lenet_lightning.data.files import ensure_dataset_files

    source, target, log = map(Path, sys.argv[1:4])

    def slow_fetch(dataset_class, root):
        with log.open("a") as file:
            file.write("download\\n")
        raw = root / dataset_class.__name__ / "raw"
        raw.mkdir(parents=True)
        for path in sorted((source / dataset_class.__name__ / "raw").iterdir()):
            data = path.read_bytes()
            with (raw / path.name).open("wb") as out:  # written slowly, in two halves
                out.write(data[: len(data) // 2]); out.flush(); time.sleep(0.3); out.write(data[len(data) // 2 :])

    with log.open("a") as file:
        file.write("start\\n")
    while log.read_text().count("start") < 2:  # both processes reach the empty folder together
        time.sleep(0.01)
    ensure_dataset_files(MNIST, target, fetch=slow_fetch)
    print(len(MNIST(str(target), train=True).targets))
    """
)


@pytest.mark.slow
def test_two_processes_on_one_empty_data_folder_download_once_and_both_succeed(
    tmp_path: Path, tiny_data_dir: Path
) -> None:
    target, log = tmp_path / "shared-data", tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [sys.executable, "-c", RACE_SCRIPT, str(tiny_data_dir), str(target), str(log)]
    processes = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert stdout.strip() == "512"
    assert log.read_text().count("download") == 1
    raw = target / "MNIST" / "raw"
    assert not find_problems(raw, "MNIST", list(IDX_FILES))
    for name in IDX_FILES:
        assert (raw / name).read_bytes() == (tiny_data_dir / "MNIST" / "raw" / name).read_bytes()
