"""A named sweep folder is checked like a named run folder, and an earlier sweep in it is continued, not redone.

The training command runs in-process (``cli()`` with ``sys.argv`` set, Hydra's ``-m`` included); the one test of a
sweep killed with -9 runs it as a process, since the process is what is killed.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenet_lightning.runs.folder import hold_run_folder, release_run_folder
from tests.conftest import cli_env, train_in_process

pytestmark = pytest.mark.slow  # every test trains a sweep's jobs first

JOB = ("epochs=1", "accelerator=cpu", "callbacks.error_analysis=null", "callbacks.progress_bar.refresh_rate=0")
JOBS = ("lr=0.1,0.9",)


def md5_sums(folder: Path) -> dict[str, str]:
    """Every file a job's run wrote and a re-run must leave alone: checkpoint, result, events, figures."""
    return {
        str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.parent != folder and ".hydra" not in path.parts and path.name != "train.log"
    }


@pytest.fixture(scope="module")
def earlier_sweep(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed two-job sweep into a named folder, as the command line leaves it."""
    folder = tmp_path_factory.mktemp("sweep") / "sweep"
    with pytest.MonkeyPatch.context() as monkeypatch:
        arguments = ("-m", f"data_dir={tiny_data_dir}", *JOB, *JOBS, f"hydra.sweep.dir={folder}")
        assert train_in_process(monkeypatch, folder.parent, *arguments) == 0
    return folder


@pytest.fixture
def sweep(earlier_sweep: Path, tmp_path: Path) -> Path:
    """A copy of the earlier sweep that a test may run again into."""
    return Path(shutil.copytree(earlier_sweep, tmp_path / "sweep"))


def test_a_sweep_run_again_skips_its_completed_jobs_and_touches_none_of_their_files(
    sweep: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    before = md5_sums(sweep)
    assert sum(name.endswith("result.json") for name in before) == 2 and any("last.ckpt" in name for name in before)
    arguments = ("-m", f"data_dir={tiny_data_dir}", *JOB, *JOBS, f"hydra.sweep.dir={sweep}")
    assert train_in_process(monkeypatch, tmp_path, *arguments) == 0
    assert md5_sums(sweep) == before
    said = capsys.readouterr().out
    assert said.count("run skipped:") == 2 and "holds this job's completed run (test acc 0.102)" in said
    assert not (sweep / ".lock").exists()


def test_a_sweep_with_other_data_is_refused_in_an_earlier_sweeps_folder(
    sweep: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    other_data = Path(shutil.copytree(tiny_data_dir, tmp_path / "other_data"))
    before = md5_sums(sweep)
    for how in ((f"data_dir={other_data}",), ()):  # on the command line, or from the environment
        monkeypatch.setenv("LENET_DATA_DIR", str(other_data))
        assert train_in_process(monkeypatch, tmp_path, "-m", *how, *JOB, *JOBS, f"hydra.sweep.dir={sweep}") == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: sweep job ")
        assert f"not data_dir={other_data}" in error and "give hydra.sweep.dir a new folder" in error
    assert md5_sums(sweep) == before


@pytest.mark.parametrize("kind", ["run folder", "user's files", "locked"])
def test_a_named_sweep_folder_must_be_new_empty_or_an_earlier_sweep(
    kind: str, earlier_sweep: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = tmp_path / "folder"
    if kind == "run folder":
        shutil.copytree(next(earlier_sweep.glob("*lr=0.1")), folder)
        says = "holds a run (.hydra, checkpoints"
    elif kind == "user's files":
        folder.mkdir()
        for name in ("summary.md", "summary.csv", "multirun.yaml"):
            (folder / name).write_text("my own notes\n")
        says = "holds no earlier sweep of this command"
    else:
        folder = Path(shutil.copytree(earlier_sweep, folder))
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        (folder / ".lock").write_text(f"{holder.pid} {os.uname().nodename}\n")  # another sweep writes it now
        says = "is in use by another run"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    try:
        assert (
            train_in_process(
                monkeypatch, tmp_path, "-m", f"data_dir={tiny_data_dir}", *JOB, *JOBS, f"hydra.sweep.dir={folder}"
            )
            == 2
        )
    finally:
        if kind == "locked":
            holder.kill()
            holder.wait()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and says in error, error
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_the_sweep_folder_is_held_while_the_sweep_writes_it(sweep: Path) -> None:
    """Two sweeps into one folder: the second is refused while the first holds the folder's lock."""
    from lenet_lightning.runs.sweep_folder import claim_sweep_folder

    claim_sweep_folder(sweep, "train")
    try:
        assert (sweep / ".lock").read_text().split()[0] == str(os.getpid())
    finally:
        release_run_folder(sweep)
    assert not (sweep / ".lock").exists()
    hold_run_folder(sweep)  # free again
    release_run_folder(sweep)


def test_a_sweep_killed_with_sigkill_continues_its_interrupted_job_from_its_checkpoint(
    tiny_data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sweep"
    arguments = ["-m", *JOB[1:], "epochs=6", "dataset.batch_size=4", "lr=0.1", f"hydra.sweep.dir={folder}"]
    command = [sys.executable, "-m", "lenet_lightning.train", *arguments]
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=cli_env(tiny_data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    checkpoint, seen = None, []
    deadline = time.monotonic() + 120
    while checkpoint is None and time.monotonic() < deadline and sweep.poll() is None:
        found = list(folder.glob("*/checkpoints/last.ckpt"))
        seen.append(epochs_in(found[0]) if found else -1)
        if seen[-1] >= 2:
            checkpoint = found[0]
        time.sleep(0.02)
    assert checkpoint is not None, (
        seen[-20:],
        sweep.stderr.read().decode()[-3000:] if sweep.poll() is not None else "",
    )
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    done_before = epochs_in(checkpoint)
    assert done_before < 6 and not (checkpoint.parent.parent / "result.json").exists()
    again = subprocess.run(
        command, cwd=tmp_path, env=cli_env(tiny_data_dir), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing this job's interrupted run from" in again.stdout + again.stderr
    assert f"resuming from {checkpoint}" in again.stdout + again.stderr
    result = json.loads((checkpoint.parent.parent / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"] == 6
    first_epoch = next(line for line in again.stdout.splitlines() if line.startswith("epoch "))
    assert first_epoch.startswith(f"epoch {done_before + 1}/6"), first_epoch


def epochs_in(checkpoint: Path) -> int:
    """Epochs a checkpoint holds; 0 while it is being replaced."""
    import torch

    try:
        return int(torch.load(checkpoint, weights_only=True)["epoch"]) + 1
    except Exception:
        return 0
