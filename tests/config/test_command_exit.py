"""A command's process leaves its last garbage collection out: exit takes a tenth of the time with torch loaded."""

import subprocess
import sys

import pytest

from tests.conftest import cli_env


@pytest.mark.slow  # starts a process: only a process exit shows it
def test_a_command_freezes_the_collector_when_its_process_exits_not_before() -> None:
    # Exit functions run last-registered first: the probe, registered before, runs after the command's.
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "from lenet_lightning.config.command import exit_without_collecting\n"
        "exit_without_collecting()\n"
        "exit_without_collecting()\n"
        "print('frozen while running:', gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(None), capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["frozen while running: False", "frozen at exit: True"], done.stderr
