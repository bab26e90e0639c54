"""eval, predict and export take file and folder names literally (issue "Never lose a run, part two", kind 9).

A sweep job's folder is named by its overrides (``lr=0.1,epochs=1``), which Hydra's override grammar would
read as a sweep over two values; a path with spaces or ``#`` must reach the command as typed, too.
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.inference.conftest import copy_run, digit_png, run_tool

QUICK_EVAL = ("accelerator=cpu", "pr_curves=false", "projector_images=0")


@pytest.mark.parametrize(
    ("folder", "named"),
    [
        ("multirun/2025-01-01/12-00-00/lr=0.1,epochs=1", "the folder"),  # a sweep job's folder
        ("my runs/run one #2", "its checkpoint, relative"),
    ],
)
@pytest.mark.slow  # eval runs whole; the edit loop gives predict and export a sweep job folder and spaced names
def test_eval_takes_a_sweep_job_folder_or_a_path_with_spaces_as_ckpt_path(
    monkeypatch, capsys, tiny_trained_run: Path, tiny_data_dir: Path, tmp_path: Path, folder: str, named: str
) -> None:
    run = copy_run(tiny_trained_run, tmp_path / folder, tiny_data_dir)
    monkeypatch.chdir(tmp_path)
    ckpt_path = run if named == "the folder" else Path(folder) / "checkpoints" / "last.ckpt"
    assert run_tool(monkeypatch, "eval", f"ckpt_path={ckpt_path}", *QUICK_EVAL) == 0, capsys.readouterr().err
    written = json.loads((run / "eval" / "last" / "eval.json").read_text())
    assert Path(written["checkpoint"]).resolve() == (run / "checkpoints" / "last.ckpt").resolve()
    assert "error" not in capsys.readouterr().err


def test_predict_and_export_take_outputs_and_data_folders_with_commas_and_spaces(
    monkeypatch, capsys, tiny_trained_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data, copied"
    shutil.copytree(tiny_data_dir / "MNIST", data / "MNIST")
    run = copy_run(tiny_trained_run, tmp_path / "sweep" / "lr=0.1,epochs=1", data)
    out = tmp_path / "results, v2"
    out.mkdir()
    (tmp_path / "pictures").mkdir()
    picture = digit_png(tmp_path / "pictures" / "my digit.png")  # inputs= may be a list: a comma there splits it
    monkeypatch.chdir(tmp_path)

    predictions = out / "predictions one.csv"
    assert run_tool(monkeypatch, "predict", f"ckpt_path={run}", f"inputs={picture}", f"output={predictions}") == 0
    assert predictions.read_text().splitlines()[1].startswith(f"{picture},")

    model = out / "model one.pt"
    arguments = [f"ckpt_path={run}", "format=torchscript", f"output={model}", f"data_dir={data}"]
    assert run_tool(monkeypatch, "export", *arguments) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"exported torchscript model: {model}" in printed and "MNIST test images" in printed  # read from data
