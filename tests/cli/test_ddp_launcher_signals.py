"""A supervisor's Ctrl-C or SIGTERM sent to the launching process of a ``ddp_spawn`` run stops the whole run.

The launcher trains nothing and Lightning handles no signal in it; it passes the signal on to its workers, which
stop at the next batch, and ends with one line, 130 or 143, ``interrupted`` in ``result.json`` and no worker left.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env

pytestmark = pytest.mark.slow


def children_of(pid: int) -> set[int]:
    """The processes ``pid`` started (Linux's /proc), so the test can tell they are gone afterwards."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def running(pid: int) -> bool:
    """Still running: it exists and is no zombie (a container's first process may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_signal_to_the_launcher_stops_every_process_and_records_the_run(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C, the signal Python otherwise turns into a KeyboardInterrupt; SIGTERM takes the same way on to the
    workers (``tests/config/test_signal_forwarding.py`` sends both to a launcher in process)."""
    signum = signal.SIGINT
    folder = tmp_path / "run"
    arguments = ["trainer=ddp_cpu", "epochs=50", "dataset.batch_size=16", "callbacks.error_analysis=null"]
    process = subprocess.Popen(
        [sys.executable, "-m", "lenet_lightning.train", *arguments, f"hydra.run.dir={folder}"],
        cwd=tmp_path,
        env=cli_env(tiny_data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300  # a loaded 2-core machine spawns slowly
    while not (folder / "checkpoints" / "last.ckpt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()[1]
    workers = children_of(process.pid)
    assert workers, "the launcher should have started its training processes"
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(process.communicate()[1]) from None
    assert process.returncode == 128 + signum
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"interrupted by {signum.name}" in lines[0] and "resume=" in lines[0], stderr
    assert json.loads((folder / "result.json").read_text())["status"] == "interrupted"
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends once it sees its parent gone
    while [pid for pid in workers if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)], "no training process may outlive the run"
