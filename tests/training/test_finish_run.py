"""The end of a run can be finished, and a run that writes no checkpoint says so and is never retrained by a resume.

A run stopped after its last checkpoint (killed, or stopped by a signal or a full disk in its end-of-run analysis)
is finished by ``resume=``: analysis, figures and ``result.json`` from the checkpoint, without training. The
training command runs in-process (``cli()`` with ``sys.argv`` set).
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lenet_lightning.runs.layout import RunStatus
from lenet_lightning.runs.record import write_record
from tests.conftest import train_in_process

pytestmark = pytest.mark.slow  # every test trains a run and stops it first

RUN = (
    "epochs=1",
    "accelerator=cpu",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.error_analysis.projector_images=50",
)
END_OF_RUN = ("result.json", "confusion_matrix.png", "misclassified.png", "curves.png", "projector_config.pbtxt")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def completed_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finish") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert (
            train_in_process(monkeypatch, folder.parent, f"data_dir={tiny_data_dir}", *RUN, f"hydra.run.dir={folder}")
            == 0
        )
    return folder


@pytest.mark.parametrize("stopped", ["killed after its last checkpoint", "interrupted", "failed"])
def test_a_run_stopped_before_its_end_was_recorded_is_finished_by_resume(
    stopped: str, completed_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = Path(shutil.copytree(completed_run, tmp_path / "run"))
    expected = json.loads((run / "result.json").read_text())
    for name in END_OF_RUN:
        (run / name).unlink()
    shutil.rmtree(run / "00001")  # the projector's features
    if stopped != "killed after its last checkpoint":  # stopped by a signal, or a full disk, in the analysis
        write_record(run, RunStatus(stopped), f"{stopped} in the end-of-run analysis")
    checkpoint = md5(run / "checkpoints" / "last.ckpt")

    assert train_in_process(monkeypatch, tmp_path, f"resume={run}") == 0
    said = capsys.readouterr().out
    assert "holds all 1 epochs but the run's end was not recorded: finishing it" in said
    assert not any(line.startswith("epoch 1/1") for line in said.splitlines()), "trained again"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"] == 1
    for key in ("train_loss", "train_acc", "test_acc", "examples_per_second"):
        assert result[key] == pytest.approx(expected[key]), key
    assert all((run / name).is_file() for name in END_OF_RUN)
    assert (run / "00001" / "test_features" / "tensors.tsv").is_file()
    assert md5(run / "checkpoints" / "last.ckpt") == checkpoint

    assert train_in_process(monkeypatch, tmp_path, f"resume={run}") == 0  # finished now: nothing left to do
    assert capsys.readouterr().out == f"resume={run}: already complete (epoch 1 of 1); raise epochs= to continue\n"


def test_with_checkpointing_off_no_checkpoint_is_written_and_a_resume_is_refused(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    off = ("callbacks.model_checkpoint=null", "callbacks.error_analysis=null")
    assert train_in_process(monkeypatch, tmp_path, f"data_dir={tiny_data_dir}", *RUN, *off, f"hydra.run.dir={run}") == 0
    assert "no checkpoint is written, so this run cannot be resumed" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt")) and json.loads((run / "result.json").read_text())["status"] == "completed"
    before = {path: md5(path) for path in run.rglob("*") if path.is_file() and path.name != "train.log"}

    assert train_in_process(monkeypatch, tmp_path, f"resume={run}") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: resume={run}: the run was trained with ")
    assert "has no checkpoint to continue from" in error
    assert {path: md5(path) for path in run.rglob("*") if path.is_file() and path.name != "train.log"} == before
