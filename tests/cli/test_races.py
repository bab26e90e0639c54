"""Training processes that race for a folder: runs and sweeps started together, and a second writer to a live run.

The processes are real and run at once; how one of them names its folder when another took it is tested in
process too (tests/config/test_bad_input.py, tests/runs/test_run_folder_claims.py).
"""

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lenet_lightning.runs.layout import LAST_CHECKPOINT, LOCK_FILE
from tests.conftest import cli_env
from tests.reliability_faults import NO_FIGURES

pytestmark = pytest.mark.slow  # every test starts several training processes
HOST = socket.gethostname()
TRAIN = (sys.executable, "-m", "lenet_lightning.train")


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def epochs_in(run: Path) -> int:
    return torch.load(run / LAST_CHECKPOINT, weights_only=True)["epoch"] + 1


def test_runs_and_sweeps_started_together_keep_their_own_folders_and_their_jobs_resume(
    run_command, tmp_path: Path, tiny_data_dir: Path
) -> None:
    """Two single runs and two sweeps, all four started at once: the runs ask for the same dated folder name when
    they start in the same second, and both sweeps ask for one fixed folder (from a config, as Hydra's ${now:} one)."""
    extra = tmp_path / "extra"
    (extra / "sweep_at").mkdir(parents=True)
    (extra / "sweep_at" / "fixed.yaml").write_text("# @package _global_\nhydra:\n  sweep:\n    dir: sweeps/same\n")
    common = ["epochs=1", "accelerator=cpu", NO_FIGURES]
    sweep = ["-m", "--config-dir", str(extra), "+sweep_at=fixed", *common]
    commands = [[*TRAIN, *common, f"seed={seed}"] for seed in (1, 2)]
    commands += [[*TRAIN, *sweep, f"lr={lrs}"] for lrs in ("0.1,0.2", "0.3")]
    processes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=cli_env(tiny_data_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]

    runs = sorted(path.parent for path in (tmp_path / "outputs" / "runs").glob("*/*/result.json"))
    assert len(runs) == 2
    seeds = sorted((run / ".hydra" / "overrides.yaml").read_text().split("seed=")[1].strip() for run in runs)
    assert seeds == ["1", "2"], "each folder holds its own run, nothing overwritten"

    folders = sorted((tmp_path / "sweeps").iterdir())
    assert [folder.name for folder in folders] == ["same", "same-1"]
    summaries = []
    for folder in folders:
        with (folder / "summary.csv").open(newline="") as file:
            summaries.append(tuple(sorted(row["lr"] for row in csv.DictReader(file))))
    assert sorted(summaries) == [("0.1", "0.2"), ("0.3",)], "each summary holds its own sweep's runs only"

    (job,) = (tmp_path / "sweeps").glob("*/*lr=0.3*")  # named like +sweep_at=fixed,accelerator=cpu,epochs=1,lr=0.3,...
    assert "=" in job.name and "," in job.name
    resumed = run_command("--config-dir", str(extra), f"resume={job}", "epochs=2")  # typed as it is, no quoting
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_in(job) == 2


def test_a_run_still_training_refuses_a_second_writer_until_it_is_gone(
    run_command, tmp_path: Path, tiny_data_dir: Path
) -> None:
    run = tmp_path / "run"
    training = subprocess.Popen(
        [*TRAIN, "epochs=10000", "accelerator=cpu", NO_FIGURES, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=cli_env(tiny_data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / LAST_CHECKPOINT).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (run / LOCK_FILE).read_text() == f"{training.pid} {HOST}\n"
        one_line_error(run_command(f"resume={run}", "epochs=20000"), f"in use by another run (process {training.pid}")
        assert training.poll() is None, "the run goes on undisturbed"
    finally:
        training.kill()
        training.wait()
    assert (run / LOCK_FILE).exists(), "SIGKILL left the lock file behind"
    resumed = run_command(f"resume={run}", f"epochs={epochs_in(run) + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run / LOCK_FILE).exists(), "released when the process ended"
