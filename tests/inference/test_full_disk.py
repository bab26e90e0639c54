"""A full disk for eval, predict and export: one line, exit status 2, no file left behind (issue "Faults at the
edges", kind 2).

On a real full file system: a small tmpfs of the test's own (mounting needs root; skipped without it). A disk
already full is refused by the check before any work; one that fills while the output is written (another
process took the space after the check) is shown by lowering the check's thresholds to nothing, so that the
command starts and meets the full disk in its writes: TensorBoard's, Pillow's, ONNX's, TorchScript's and the CSV's.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lenet_lightning.inference import outputs
from lenet_lightning.runs import disk
from lenet_lightning.runs.layout import LAST_CHECKPOINT
from tests.conftest import fill_up, small_tmpfs
from tests.inference.conftest import md5, one_error_line, run_tool

ARGUMENTS = {  # what each command needs besides ckpt_path and output=, and the output's name
    "eval": (["accelerator=cpu"], "results"),
    "predict": ([], "predictions.csv"),  # inputs= added by the test
    "export torchscript": (["format=torchscript"], "model.pt"),
    "export onnx": (["format=onnx"], "model.onnx"),
}


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs filled to the last byte by a file ``filler``."""
    with small_tmpfs(tmp_path / "disk", "4m") as mount:
        fill_up(mount)
        yield mount


def command_line(command: str, run: Path, disk: Path, picture: Path) -> tuple[str, Path, list[str]]:
    """(module, output on the disk, arguments) of one of the four commands."""
    module = command.split()[0]
    arguments, name = ARGUMENTS[command]
    extra = [f"inputs={picture}"] if module == "predict" else []
    return module, disk / name, [f"ckpt_path={run}", f"output={disk / name}", *arguments, *extra]


@pytest.mark.parametrize(  # one check for all four: the edit loop runs it through predict
    "command", [c if c == "predict" else pytest.param(c, marks=pytest.mark.slow) for c in ARGUMENTS]
)
def test_a_full_disk_is_one_line_before_any_work(
    monkeypatch, capsys, run_a: Path, full_disk: Path, picture: Path, command: str
) -> None:
    checkpoint = md5(run_a / LAST_CHECKPOINT)
    module, output, arguments = command_line(command, run_a, full_disk, picture)
    assert run_tool(monkeypatch, module, *arguments) == 2
    line = one_error_line(capsys.readouterr())
    assert line.startswith(f"error: cannot write output={output}: no space is left in {full_disk}"), line
    assert line.endswith("free some space or pass output= another place")
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"]
    assert md5(run_a / LAST_CHECKPOINT) == checkpoint


@pytest.mark.parametrize(
    ("command", "room"),
    [
        pytest.param("eval", 0, marks=pytest.mark.slow),  # its first file
        ("eval", 20_000),  # a figure, written by Pillow
        pytest.param("eval", 100_000, marks=pytest.mark.slow),  # the events, written by TensorBoard's own thread
        ("export torchscript", 0),
        pytest.param("export onnx", 0, marks=pytest.mark.slow),
    ],
)
def test_a_disk_that_fills_while_writing_is_one_line_and_leaves_nothing(
    monkeypatch, capsys, run_a: Path, full_disk: Path, picture: Path, command: str, room: int
) -> None:
    monkeypatch.setattr(disk, "PROBE_BYTES", 0)  # the check passes: the space went after it
    monkeypatch.setattr(outputs, "MIN_FREE_BYTES", 0)
    filler = full_disk / "filler"
    os.truncate(filler, filler.stat().st_size - room)
    module, output, arguments = command_line(command, run_a, full_disk, picture)
    assert run_tool(monkeypatch, module, *arguments) == 2
    line = one_error_line(capsys.readouterr())  # TensorBoard's writer thread prints no traceback of its own
    assert line.startswith("error: cannot write ") and str(output) in line, line
    assert "no space is left (No space left on device); free some space or pass output= another place" in line
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"], "no temporary or half-written file"


def test_a_disk_that_fills_after_predictions_were_printed_is_one_line(
    monkeypatch, capsys, run_a: Path, full_disk: Path, picture: Path
) -> None:
    """The CSV is written last: a full disk then is one line after the printed table, not a traceback."""
    monkeypatch.setattr(disk, "PROBE_BYTES", 0)
    monkeypatch.setattr(outputs, "MIN_FREE_BYTES", 0)
    output = full_disk / "predictions.csv"
    assert run_tool(monkeypatch, "predict", f"ckpt_path={run_a}", f"inputs={picture}", f"output={output}") == 2
    captured = capsys.readouterr()
    assert str(picture) in captured.out  # the predictions were printed before the disk was met
    assert f"error: cannot write output={output}: no space is left" in one_error_line(captured)
    assert not output.exists() and not any(name.startswith(".") for name in os.listdir(full_disk))
