"""Wherever Ctrl-C or SIGTERM lands, the training command ends with one line, 130 or 143, and an honest record.

Real signals sent to a real process, timed by what the process has done (its folder, its output), not by sleeps.
"""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import cli_env

pytestmark = pytest.mark.slow
TINY_RUN = ("epochs=1", "accelerator=cpu", "callbacks.progress_bar.refresh_rate=0")


def interrupt(folder: Path, data_dir: Path, signum: int, when: Callable[[Path, str], bool]) -> tuple[int, str]:
    """Train into ``folder``, send ``signum`` once ``when(folder, stdout so far)`` holds; exit status and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lenet_lightning.train", *TINY_RUN, f"hydra.run.dir={folder}"],
        cwd=folder.parent,
        env=cli_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = ""
    deadline = time.monotonic() + 120
    while not when(folder, output) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if when.__name__ == "after_training":  # read what it printed so far, one line at a time
            output += process.stdout.readline()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def at_start_up(folder: Path, output: str) -> bool:
    """Half a second in: the interpreter runs the command's code, which is still importing and composing.

    (A signal in the interpreter's own first milliseconds, before any line of the project runs, ends it as
    Python does: no project code can answer it.)
    """
    time.sleep(0.5)
    return True


def before_training(folder: Path, output: str) -> bool:
    return (folder / ".hydra" / "overrides.yaml").is_file()  # Hydra has written the run's record


def after_training(folder: Path, output: str) -> bool:
    return "epoch 1/1" in output  # the last epoch is logged; the end-of-run analysis runs next


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_start_up_ends_with_one_line_and_leaves_no_folder(
    tiny_data_dir: Path, tmp_path: Path, signum: int
) -> None:
    status, stderr = interrupt(tmp_path / "run", tiny_data_dir, signum, at_start_up)
    assert status == 128 + signum
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr and "interrupted by" in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_sigterm_after_the_record_is_written_marks_the_run_interrupted_with_its_resume_command(
    tiny_data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    status, stderr = interrupt(folder, tiny_data_dir, signal.SIGTERM, before_training)
    assert status == 143
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert json.loads((folder / "result.json").read_text())["status"] == "interrupted"
    assert f"resume={folder}" in lines[0]


def test_ctrl_c_after_training_ends_in_one_line_and_keeps_the_trained_epoch(
    tiny_data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    status, stderr = interrupt(folder, tiny_data_dir, signal.SIGINT, after_training)
    assert status in (0, 130)  # the run may have finished before the signal arrived
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 1, stderr
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((folder / "result.json").read_text())["status"] in ("completed", "interrupted")
