"""Shared fixtures: tiny IDX data sets on disk, Hydra composition of the real configs, and the real commands.

``run_command`` calls a command's entry point in this process (its ``@hydra.main`` function, ``sys.argv`` set,
output captured, ``SystemExit`` caught): what a user sees of a command, without a Python process per test.
``run_cli`` starts the real process, for the tests where the process is what is under test (tests/cli/).
"""

import contextlib
import copy
import errno
import functools
import gc
import importlib
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from lenet_lightning.data.datamodule import TensorBatches


REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
REAL_DATA_DIR = os.environ.get("LENET_DATA_DIR")  # CI points it at ../shared/datasets
TINY_TRAIN, TINY_TEST = 512, 128
CONFIG_GROUPS = frozenset(path.name for path in CONFIG_DIR.iterdir() if path.is_dir())
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets its share of the cores, and so do the processes its tests start.

    Every worker and every command it starts would otherwise run as many torch threads as the machine has
    cores; on two cores two workers' training then spends more time waiting for threads than computing.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch  # here, not at the top: xdist's controlling process trains nothing and need not load it

        torch.set_num_threads(int(threads))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave the objects alive now to the end of the process, which then takes a tenth of the time.

    A process holding torch and Lightning spends over a second of its exit in garbage collection; pytest-xdist's
    controlling process waits for each worker's exit. Everything the tests made was closed before this hook.
    """
    gc.freeze()


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, which must see the added slow marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """real_data tests are slow too and need LENET_DATA_DIR; gpu tests need CUDA: both are skipped without."""
    import torch

    for item in items:
        if item.get_closest_marker("real_data"):
            item.add_marker(pytest.mark.slow)
            if not REAL_DATA_DIR:
                item.add_marker(pytest.mark.skip(reason="set LENET_DATA_DIR to a folder with MNIST/ and FashionMNIST/"))
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
    # Longest first, so that parallel workers end together: a real-data run started last would run on alone.
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("real_data") else 1 if item.get_closest_marker("slow") else 2
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format torchvision reads (big-endian header, one dim per int)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: each class lights up its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images, labels.astype(np.uint8)


def write_tiny_dataset(root: Path, folder: str, n_train: int = TINY_TRAIN, n_test: int = TINY_TEST) -> Path:
    """Write the four IDX files of one data set under ``root/folder/raw`` and return that raw folder."""
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_tiny_split(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def rank_shards(size: int, world_size: int, batch_size: int, seed: int | None = None) -> list["TensorBatches"]:
    """Every rank's share of ``size`` blank examples labelled 0..size-1 (shuffled from ``seed`` when given)."""
    import torch

    from lenet_lightning.data.datamodule import TensorBatches

    images = torch.zeros(size, 28, 28, dtype=torch.uint8)
    return [
        TensorBatches(
            images,
            torch.arange(size),
            batch_size,
            generator=None if seed is None else torch.Generator().manual_seed(seed),
            rank=rank,
            world_size=world_size,
        )
        for rank in range(world_size)
    ]


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """``make(folder)`` once in a test session, by whichever pytest-xdist worker asks first; the others wait for it.

    The tests that share such a folder only read it. Two workers training the same tiny run would cost each of
    the machine's cores the same second of work; the worker that waits leaves its core to the other.
    """
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the folder the workers of this session share
    folder, done = root / name, root / f"{name}.done"
    with FileLock(f"{folder}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half-way left
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding tiny MNIST and FashionMNIST copies in torchvision's layout."""

    def write(root: Path) -> None:
        for folder in ("MNIST", "FashionMNIST"):
            write_tiny_dataset(root, folder)

    return made_once(tmp_path_factory, "tiny_data", write)


def chooses_config_files(override: Override) -> bool:
    """Whether an override changes which files Hydra composes (a group's option, a Hydra setting), not only a value."""
    key = override.key_or_group
    return key.startswith("hydra") or ("." not in key and key.split("/")[0] in CONFIG_GROUPS)


@functools.cache
def _composed_files(config_name: str, choices: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(choices))


def compose_config(config_name: str, *overrides: str) -> DictConfig:
    """``compose(config_name, overrides)`` of the real configs, the files read once per set of group choices.

    Hydra composes in two steps: it merges the files its defaults list names, then applies the command line's
    ``key=value``, ``+key=value`` and ``~key`` to the result (``ConfigLoaderImpl._apply_overrides_to_config``).
    The first step is most of the 0.1 s a composition takes; here it runs once per worker for each set of
    group choices and the second step, Hydra's own function, runs on a copy: the same config and the same errors
    (tests/config/test_composition.py holds the two ways against each other).
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices = tuple(override.input_line for override in parsed if chooses_config_files(override))
    cfg = copy.deepcopy(_composed_files(config_name, choices))
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not chooses_config_files(o)], cfg)
    return cfg


@pytest.fixture
def make_config(tiny_data_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real ``conf/train.yaml`` with overrides, pointed at tiny data and at ``tmp_path/run``.

    The end-of-run figures are left out (they take most of a tiny run's time) unless an override names
    ``callbacks.error_analysis`` or the test asks for them with ``figures=True``.
    """

    def _compose(
        *overrides: str, data_dir: Path = tiny_data_dir, output_dir: Path = tmp_path / "run", figures: bool = False
    ) -> DictConfig:
        if not figures and not any("callbacks.error_analysis" in override for override in overrides):
            overrides = (*overrides, "~callbacks.error_analysis")
        cfg = compose_config("train", f"data_dir={data_dir}", *overrides)
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
        return cfg

    return _compose


def cli_env(data_dir: Path | None) -> dict[str, str]:
    """Environment for a CLI subprocess: this checkout's package first, offline data, no colour codes."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]  # keep the rest
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HYDRA_FULL_ERROR": "0"}
    if data_dir is not None:
        env["LENET_DATA_DIR"] = str(data_dir)
    return env


def run_module(
    module: str, *args: str, cwd: Path, data_dir: Path | None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` in a subprocess from ``cwd``, with this checkout's package."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_cli(tiny_data_dir: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m <module> <args>`` in a subprocess with tiny data and outputs under ``tmp_path``."""

    def _run(
        *args: str, module: str = "lenet_lightning.train", data_dir: Path | None = tiny_data_dir, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        return run_module(module, *args, cwd=tmp_path, data_dir=data_dir, timeout=timeout)

    return _run


def forget_hydra_run() -> None:
    """Clear what a ``@hydra.main`` call leaves in Hydra's singletons, as the end of its process would."""
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


# The function each console script (pyproject.toml's [project.scripts]) and ``python -m`` calls.
ENTRY_POINTS = {
    "lenet_lightning.train": "cli",
    "lenet_lightning.eval": "main",
    "lenet_lightning.predict": "main",
    "lenet_lightning.export": "main",
}


def call_command(
    module: str,
    *args: str,
    cwd: Path,
    data_dir: Path | None,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture | None = None,
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from ``cwd``, run in this process: exit status, stdout and stderr as a shell sees.

    ``data_dir`` becomes ``LENET_DATA_DIR`` (None: left as it is, as ``run_module`` does). The logging set-up Hydra
    makes for the command is undone afterwards, so a later command or ``caplog`` starts from pytest's own.
    """
    entry = getattr(importlib.import_module(module), ENTRY_POINTS[module])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    if capfd is not None:
        capfd.readouterr()  # what came before is not this command's output
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [module, *args])
        patch.setenv("HYDRA_FULL_ERROR", "0")  # the command sets it; the context puts it back
        if data_dir is not None:
            patch.setenv("LENET_DATA_DIR", str(data_dir))
        try:
            entry()
            status = 0
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            if exit.code is not None and not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)  # what Python prints for sys.exit("message") as it ends
        finally:
            for handler in set(root.handlers) - set(handlers):
                handler.close()  # the run's train.log, closed as the end of the command's process would
            root.handlers[:], root.level = handlers, level
            forget_hydra_run()
    out, err = capfd.readouterr() if capfd is not None else ("", "")
    return subprocess.CompletedProcess([module, *args], status, out, err)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` for the test (mounting needs root: the test is skipped without it).

    Unmounted lazily, so a file a failed test left open cannot keep the mount behind after the test.
    """
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill_up(folder: Path, chunk: int = 65536) -> None:
    """Write a file ``filler`` into ``folder`` until its disk is full."""
    with (folder / "filler").open("wb", buffering=0) as file, pytest.raises(OSError) as raised:
        while True:
            file.write(b"\0" * chunk)
    assert raised.value.errno == errno.ENOSPC


def train_in_process(monkeypatch: pytest.MonkeyPatch, cwd: Path, *arguments: str) -> int:
    """``python -m lenet_lightning.train <arguments>`` from ``cwd``, run in this process; its exit status."""
    return call_command("lenet_lightning.train", *arguments, cwd=cwd, data_dir=None, monkeypatch=monkeypatch).returncode


@pytest.fixture
def run_command(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli`` in this process: a command's entry point with tiny data, from ``tmp_path``, output captured."""

    def _run(
        *args: str, module: str = "lenet_lightning.train", data_dir: Path | None = tiny_data_dir
    ) -> subprocess.CompletedProcess:
        return call_command(module, *args, cwd=tmp_path, data_dir=data_dir, monkeypatch=monkeypatch, capfd=capfd)

    return _run


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run folder on tiny data as training leaves it: checkpoints/last.ckpt and .hydra/config.yaml.

    Trained once per test session and shared: a test that writes into it takes ``tiny_trained_run_copy``.
    """
    from lenet_lightning.training.run import fit

    def train(folder: Path) -> None:
        cfg = compose_config(
            "train",
            f"data_dir={tiny_data_dir}",
            "epochs=1",
            "accelerator=cpu",
            "callbacks.progress_bar.refresh_rate=0",
            "~callbacks.error_analysis",
        )
        with open_dict(cfg):
            cfg.output_dir = str(folder)
        fit(cfg)
        (folder / ".hydra").mkdir()
        OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")

    return made_once(tmp_path_factory, "tiny_run", train)


@pytest.fixture
def tiny_trained_run_copy(tiny_trained_run: Path, tmp_path: Path) -> Path:
    """A copy of ``tiny_trained_run`` under ``tmp_path`` (``tmp_path/run``), for a test that writes into it."""
    return Path(shutil.copytree(tiny_trained_run, tmp_path / "run"))


@pytest.fixture(autouse=True)
def process_state_restored() -> Iterator[None]:
    """What an in-process command changes for the whole process is put back after each test.

    A command sets Hydra's singletons, the root logger's handlers, ``HYDRA_FULL_ERROR``, ``logging.raiseExceptions``
    and the SIGINT/SIGTERM handlers, as a process it ends would never notice; the next test in the worker would.
    """
    root = logging.getLogger()
    handlers, level, raise_exceptions = list(root.handlers), root.level, logging.raiseExceptions
    signals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    yield
    forget_hydra_run()
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.raiseExceptions = raise_exceptions
    for signum, handler in signals.items():
        signal.signal(signum, handler)
    if full_error is None:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    else:
        os.environ["HYDRA_FULL_ERROR"] = full_error
