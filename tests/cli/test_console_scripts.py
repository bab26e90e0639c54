"""Each command through the console script pyproject.toml installs, as a user runs it, in a process of its own.

One run that works per command (train, then eval, predict and export of what it trained) and one bad input per
command: one line on stderr, exit status 2, nothing written. Everything else about the commands is tested in
process (``run_command``), where it costs no Python start-up.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli_env

pytestmark = pytest.mark.slow  # every test starts the console scripts
SCRIPTS = Path(sys.executable).parent  # the environment's bin/, where pip put lenet-train and the others


def script(name: str, *args: str, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """Run the console script ``name`` from ``cwd`` with this checkout's package, as a shell would."""
    return subprocess.run(
        [str(SCRIPTS / name), *args], cwd=cwd, env=cli_env(data_dir), capture_output=True, text=True, timeout=300
    )


def test_each_console_script_runs_its_command(tiny_data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = script(
        "lenet-train", "epochs=1", "accelerator=cpu", "~callbacks.error_analysis", f"hydra.run.dir={run}",
        cwd=tmp_path, data_dir=tiny_data_dir,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert "test acc" in trained.stdout

    evaluated = script("lenet-eval", f"ckpt_path={run}", "accelerator=cpu", cwd=tmp_path, data_dir=tiny_data_dir)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test acc" in evaluated.stdout and (run / "eval" / "last" / "eval.json").is_file()

    picture = tmp_path / "seven.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(picture)
    predicted = script(
        "lenet-predict", f"ckpt_path={run}", f"inputs={picture}", "output=preds.csv", cwd=tmp_path, data_dir=None
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "preds.csv").read_text().count("\n") == 2  # the header and the one picture

    exported = script("lenet-export", f"ckpt_path={run}", "format=torchscript", cwd=tmp_path, data_dir=tiny_data_dir)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "exported torchscript model" in exported.stdout


@pytest.mark.parametrize(
    ("name", "args", "line"),
    [
        ("lenet-train", ("lr=nan",), "error: lr=nan"),
        ("lenet-eval", ("accelerator=tpu",), "error: accelerator=tpu"),
        ("lenet-predict", ("inputs=a.png", "batch_size=0"), "error: batch_size=0"),
        ("lenet-export", ("format=tflite",), "error: format=tflite is not one of onnx, torchscript"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(
    tiny_data_dir: Path, tmp_path: Path, name: str, args: tuple[str, ...], line: str
) -> None:
    done = script(name, *args, cwd=tmp_path, data_dir=tiny_data_dir)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert list(tmp_path.iterdir()) == [], "bad input leaves nothing behind"
