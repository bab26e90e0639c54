"""The IDX files on disk: check them before loading, and download missing or damaged ones safely.

torchvision only checks that the files exist, so a truncated file fails later with a reshape error, and
its download writes straight into the data folder, so two runs downloading at once can leave a torn
file. Here every file's header is checked against the expected shape before anything is allocated, its
size against its header, a label file's labels against the number of classes (torchvision and the loss
would take any byte), and files with the official example counts against their published md5. A
download happens under a file lock, into a staging folder, and each verified file is renamed into
place, so other processes see a file either complete or not at all. torchvision still does the
download itself (it md5-checks the archives).
"""

import hashlib
import logging
import os
import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from torchvision.datasets import MNIST

from lenet_lightning.errors import UserError

log = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 10  # per network operation: a dead network fails in seconds, never hangs
LOCK_TIMEOUT_S = 600  # another process's download of ~55 MB
IMAGE_SHAPE = (28, 28)
OFFICIAL_COUNTS = {"train": 60_000, "t10k": 10_000}
NUM_CLASSES = 10  # both data sets
IDX_UBYTE = 0x08

# md5 of the uncompressed official files (torchvision lists only the archives' md5s).
KNOWN_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

Fetch = Callable[[type[MNIST], Path], None]
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime) already md5-checked in this process


class DataUnavailableError(UserError):
    """The data set files are not on disk and could not be downloaded."""


class CorruptDataError(UserError):
    """A data file is truncated, damaged or has an unexpected header, and could not be replaced."""


def expected_names(dataset_class: type[MNIST]) -> list[str]:
    """The four uncompressed IDX file names, in torchvision's order."""
    return [Path(url).stem for url, _ in dataset_class.resources]


def check_idx_file(path: Path, dataset_folder: str) -> int:
    """Check one IDX file's header, size, example count, labels and (for official-size files) md5; return the count.

    The header is read on its own first, so a file claiming absurd dimensions is refused before any
    memory is allocated for it. A label file is read whole (one byte per example) for its largest label.
    """
    name = path.name
    split = name.split("-")[0]
    is_images = "images" in name
    expected_tail = IMAGE_SHAPE if is_images else ()
    expected_ndim = 1 + len(expected_tail)
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != IDX_UBYTE or head[3] != expected_ndim:
            raise CorruptDataError(
                f"{path} is not an IDX file of uint8 with {expected_ndim} dimensions "
                f"({size} bytes, header {head.hex() or 'empty'})"
            )
        dims_bytes = file.read(4 * expected_ndim)
    if len(dims_bytes) < 4 * expected_ndim:
        raise CorruptDataError(f"{path} is truncated: {size} bytes, too short for its header")
    dims = struct.unpack(f">{expected_ndim}I", dims_bytes)
    count, tail = dims[0], tuple(dims[1:])
    limit = OFFICIAL_COUNTS.get(split)
    if tail != expected_tail or limit is None or count > limit:
        expected = " x ".join(str(d) for d in (f"N<={limit}", *expected_tail))
        raise CorruptDataError(
            f"{path} has header dimensions {' x '.join(map(str, dims))}, expected {expected}; refusing to load it"
        )
    expected_size = 4 + 4 * expected_ndim + count * (IMAGE_SHAPE[0] * IMAGE_SHAPE[1] if is_images else 1)
    if size != expected_size:
        raise CorruptDataError(
            f"{path} is {'truncated' if size < expected_size else 'too long'}: "
            f"{size} bytes, its header needs {expected_size}"
        )
    if count == 0:
        raise CorruptDataError(f"{path} holds no examples (its header says 0)")
    if not is_images:
        labels = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * expected_ndim)
        largest = int(labels.max())
        if largest >= NUM_CLASSES:
            raise CorruptDataError(
                f"{path} holds label {largest} at example {int(labels.argmax())} "
                f"({int((labels >= NUM_CLASSES).sum())} of {count} labels outside 0 to {NUM_CLASSES - 1}, the classes)"
            )
    known = KNOWN_MD5.get(dataset_folder, {}).get(name)
    if known and count == limit:
        stamp = (str(path.resolve()), size, path.stat().st_mtime_ns)
        if stamp not in _verified:
            actual = md5_of(path)
            if actual != known:
                raise CorruptDataError(f"{path} is corrupted: md5 {actual}, expected {known}")
            log.debug("%s matches the official md5", path)
            _verified.add(stamp)
    return count


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def find_problems(raw_folder: Path, dataset_folder: str, names: list[str]) -> dict[Path, str]:
    """Each missing or bad file of a data set, with what is wrong with it (empty when all four are good)."""
    problems: dict[Path, str] = {}
    counts: dict[str, int] = {}
    for name in names:
        path = raw_folder / name
        if not path.is_file():
            problems[path] = "missing"
            continue
        try:
            counts[name] = check_idx_file(path, dataset_folder)
        except CorruptDataError as error:
            problems[path] = str(error)
    for split in OFFICIAL_COUNTS:
        images, labels = counts.get(f"{split}-images-idx3-ubyte"), counts.get(f"{split}-labels-idx1-ubyte")
        if images is not None and labels is not None and images != labels:
            path = raw_folder / f"{split}-labels-idx1-ubyte"
            problems[path] = f"{path} holds {labels} labels for {images} images"
    return problems


def fetch_with_torchvision(dataset_class: type[MNIST], root: Path) -> None:
    """Download and unpack the four files into ``root/<Class>/raw`` with torchvision (archives md5-checked)."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        dataset_class(str(root), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous_timeout)


def ensure_dataset_files(
    dataset_class: type[MNIST], data_dir: Path, download: bool = True, fetch: Fetch = fetch_with_torchvision
) -> None:
    """Make sure the four IDX files of a data set are on disk and sound, fetching missing or bad ones.

    Raises :class:`DataUnavailableError` when files are missing and cannot be fetched, and
    :class:`CorruptDataError` when a damaged file cannot be replaced; both name the files and the fix.
    """
    folder = dataset_class.__name__
    raw_folder = data_dir / folder / "raw"
    names = expected_names(dataset_class)
    if not find_problems(raw_folder, folder, names):
        return  # the common case needs no lock, so read-only data folders work
    if not download:
        _raise_for(find_problems(raw_folder, folder, names), raw_folder, folder, names, "download=false")
    try:
        raw_folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(raw_folder.parent / ".download.lock"), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except OSError as error:
        _raise_for(find_problems(raw_folder, folder, names), raw_folder, folder, names, f"cannot write there: {error}")
    except Timeout:
        raise DataUnavailableError(
            f"waited {LOCK_TIMEOUT_S} s for another process downloading into {raw_folder}; "
            f"remove {raw_folder.parent / '.download.lock'} if no such process runs"
        ) from None
    try:
        problems = find_problems(raw_folder, folder, names)  # another process may have fetched them meanwhile
        if problems:
            log.info(
                "downloading %s into %s: %d of %d files missing or damaged",
                folder,
                raw_folder,
                len(problems),
                len(names),
            )
            reason = _fetch_into_place(dataset_class, data_dir, raw_folder, names, fetch)
            problems = find_problems(raw_folder, folder, names)
            if problems:
                _raise_for(problems, raw_folder, folder, names, reason or "the downloaded files are bad too")
    finally:
        lock.release()


def _fetch_into_place(
    dataset_class: type[MNIST], data_dir: Path, raw_folder: Path, names: list[str], fetch: Fetch
) -> str | None:
    """Fetch into a staging folder and rename each sound file into place; return why it failed, if it did."""
    folder = dataset_class.__name__
    staging_root = data_dir / folder / f".staging-{os.getpid()}"
    shutil.rmtree(staging_root, ignore_errors=True)
    try:
        fetch(dataset_class, staging_root)
        staged = staging_root / folder / "raw"
        staged_problems = find_problems(staged, folder, names)
        for name in names:
            if (staged / name) not in staged_problems:
                os.replace(staged / name, raw_folder / name)
        return None if not staged_problems else "; ".join(staged_problems.values())
    except (OSError, RuntimeError) as error:
        details = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        return f"download failed: {details[:300]}"
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def _raise_for(problems: dict[Path, str], raw_folder: Path, folder: str, names: list[str], reason: str) -> None:
    """One line naming the bad files, why they were not replaced, and how to fix it."""
    fix = f"copy the files there or point LENET_DATA_DIR at a folder that holds {folder}/raw/"
    missing = [path for path, problem in problems.items() if problem == "missing"]
    damaged = {path: problem for path, problem in problems.items() if problem != "missing"}
    if damaged:
        details = "; ".join(damaged.values())
        raise CorruptDataError(f"{details} (not replaced: {reason}); delete it to download it again, or {fix}")
    if missing:
        how = "are missing (download=false)" if reason == "download=false" else f"could not be downloaded ({reason})"
        raise DataUnavailableError(f"{folder} files {how}: expected {', '.join(names)} in {raw_folder}; {fix}")
