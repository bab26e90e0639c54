"""A named output= replaces nothing the command did not make (issue "Never lose a run, part two", kind 1).

Each rule goes through the real command (its ``main()`` in this process) on real run folders, and the md5 of
every file that used to be lost is compared before and after. The rules themselves are checked function by
function in test_inference_safety.py and ``test_what_counts_as_a_run_record_or_data``; of the command runs, one
of each command and kind of rule is in the edit loop, the other cases are marked slow.
"""

import os
import stat
from pathlib import Path

import pytest

from lenet_lightning.inference.outputs import record_part
from lenet_lightning.runs.layout import EVENT_FILES, LAST_CHECKPOINT, RESULT_FILE, SAVED_OVERRIDES
from tests.inference.conftest import md5, one_error_line, run_tool

QUICK_EVAL = ("accelerator=cpu", "pr_curves=false", "projector_images=0")
NEVER = "which eval, predict and export never write, even with overwrite=true; pass another output="
NOT_OURS = "already exists and was not written by this command; pass overwrite=true to replace it"


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a command might write by mistake lands where the test looks


@pytest.mark.parametrize("overwrite", [pytest.param([], marks=pytest.mark.slow), ["overwrite=true"]])
def test_export_never_replaces_another_runs_checkpoint(
    monkeypatch, capsys, run_a: Path, run_b: Path, overwrite: list[str]
) -> None:
    checkpoint = run_b / LAST_CHECKPOINT
    before = md5(checkpoint)
    arguments = [f"ckpt_path={run_a}", "format=onnx", f"output={checkpoint}", *overwrite]
    assert run_tool(monkeypatch, "export", *arguments) == 2
    assert f"output={checkpoint} is in {checkpoint.parent}, the checkpoints of a run, {NEVER}" in one_error_line(
        capsys.readouterr()
    )
    assert md5(checkpoint) == before
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["last.ckpt"]  # no new file either


@pytest.mark.slow
def test_export_never_writes_into_a_runs_hydra_record(monkeypatch, capsys, run_a: Path) -> None:
    overrides = run_a / SAVED_OVERRIDES  # replaced, the run could not be resumed
    before = md5(overrides)
    assert (
        run_tool(
            monkeypatch, "export", f"ckpt_path={run_a}", "format=torchscript", f"output={overrides}", "overwrite=true"
        )
        == 2
    )
    assert f"is in {overrides.parent}, Hydra's record of a run, {NEVER}" in one_error_line(capsys.readouterr())
    assert md5(overrides) == before


def test_predict_never_replaces_a_runs_result_json(monkeypatch, capsys, run_a: Path, run_b: Path, picture) -> None:
    result = run_b / RESULT_FILE
    before = md5(result)
    arguments = [f"ckpt_path={run_a}", f"inputs={picture}", f"output={result}", "overwrite=true"]
    assert run_tool(monkeypatch, "predict", *arguments) == 2
    assert f"output={result} is a run's record (result.json), {NEVER}" in one_error_line(capsys.readouterr())
    assert md5(result) == before


@pytest.mark.slow
@pytest.mark.parametrize("what", ["train.log", "event file"])
def test_predict_never_replaces_a_runs_log_or_event_file(
    monkeypatch, capsys, run_a: Path, run_b: Path, picture, what: str
) -> None:
    target = run_b / "train.log" if what == "train.log" else next(run_b.glob(EVENT_FILES))
    before = md5(target)
    arguments = [f"ckpt_path={run_a}", f"inputs={picture}", f"output={target}", "overwrite=true"]
    assert run_tool(monkeypatch, "predict", *arguments) == 2
    line = one_error_line(capsys.readouterr())
    assert ("the log of the run" if what == "train.log" else "a TensorBoard event file") in line and NEVER in line
    assert md5(target) == before


@pytest.mark.slow
@pytest.mark.parametrize("where", ["an IDX file of the data set", "an IDX file copied elsewhere", "the data folder"])
def test_predict_never_replaces_a_data_set_file(
    monkeypatch, capsys, run_a: Path, data_dir: Path, tmp_path: Path, picture, where: str
) -> None:
    raw = data_dir / "MNIST" / "raw"
    target = {
        "an IDX file of the data set": raw / "t10k-labels-idx1-ubyte",
        "an IDX file copied elsewhere": tmp_path / "backup" / "t10k-labels-idx1-ubyte",
        "the data folder": raw / "notes.txt",  # any file there, not only the four predict does not even read
    }[where]
    target.parent.mkdir(exist_ok=True)
    if not target.exists():
        target.write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    before = md5(target)
    arguments = [f"ckpt_path={run_a}", f"inputs={picture}", f"output={target}", "overwrite=true"]
    assert run_tool(monkeypatch, "predict", *arguments) == 2
    line = one_error_line(capsys.readouterr())
    said = f"in the data set's folder {data_dir / 'MNIST'}" if where == "the data folder" else "a data-set file"
    assert said in line and NEVER in line
    assert md5(target) == before


def test_eval_never_writes_into_another_run_nor_deletes_its_projector(
    monkeypatch, capsys, run_a: Path, run_b: Path
) -> None:
    files = sorted(path for path in run_b.rglob("*") if path.is_file())
    before = {path: md5(path) for path in files}
    assert run_tool(monkeypatch, "eval", f"ckpt_path={run_a}", f"output={run_b}", "overwrite=true", *QUICK_EVAL) == 2
    line = one_error_line(capsys.readouterr())
    assert f"output={run_b} is a training run's folder" in line and f"pass output={run_b / 'eval' / '<name>'}" in line
    assert {path: md5(path) for path in sorted(path for path in run_b.rglob("*") if path.is_file())} == before


@pytest.mark.slow
def test_eval_deletes_no_projector_it_did_not_write(monkeypatch, capsys, run_a: Path, tmp_path: Path) -> None:
    """A copy of a run's TensorBoard logs (no run record): eval would delete its projector to write its own."""
    logs = tmp_path / "logs"
    projector = logs / "00003" / "test_features" / "tensors.tsv"
    projector.parent.mkdir(parents=True)
    projector.write_text("0.1\t0.2\n")
    before = md5(projector)
    assert (
        run_tool(monkeypatch, "eval", f"ckpt_path={run_a}", f"output={logs}", "overwrite=true", "accelerator=cpu") == 2
    )
    line = one_error_line(capsys.readouterr())
    assert f"holds {projector}, which this command would delete without writing it again" in line
    assert md5(projector) == before


@pytest.mark.parametrize("command", ["predict", *(pytest.param(c, marks=pytest.mark.slow) for c in ("export", "eval"))])
def test_an_existing_output_is_replaced_only_with_overwrite(
    monkeypatch, capsys, run_a: Path, tmp_path: Path, picture, command: str
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    output = mine if command == "eval" else mine / "results.csv"
    notes = mine / ("confusion_matrix.png" if command == "eval" else "results.csv")
    notes.write_text("my own notes, not this command's\n")
    before = md5(notes)
    arguments = {
        "predict": [f"inputs={picture}"],
        "export": ["format=torchscript", "data_dir=nowhere"],  # random check images: no test set read
        "eval": list(QUICK_EVAL),
    }[command]
    assert run_tool(monkeypatch, command, f"ckpt_path={run_a}", f"output={output}", *arguments) == 2
    line = one_error_line(capsys.readouterr())
    assert f"output={output} already" in line and "pass overwrite=true" in line
    assert md5(notes) == before

    assert run_tool(monkeypatch, command, f"ckpt_path={run_a}", f"output={output}", "overwrite=true", *arguments) == 0
    assert md5(notes) != before  # replaced, as asked
    assert sorted(path.name for path in mine.iterdir() if path.name.startswith(".")) == []  # no temporary file


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "export", "eval"])
def test_a_commands_own_earlier_output_is_replaced_without_overwrite(
    monkeypatch, capsys, run_a: Path, tmp_path: Path, picture, command: str
) -> None:
    arguments = {
        "predict": [f"inputs={picture}", f"output={tmp_path / 'predictions.csv'}"],
        "export": ["format=torchscript", "data_dir=nowhere"],  # the default: beside the checkpoint
        "eval": list(QUICK_EVAL),  # the default: <run>/eval/last
    }[command]
    for _ in range(2):
        assert run_tool(monkeypatch, command, f"ckpt_path={run_a}", *arguments) == 0, capsys.readouterr().err
    written = {
        "predict": tmp_path / "predictions.csv",
        "export": run_a / "checkpoints" / "last.torchscript.pt",
        "eval": run_a / "eval" / "last" / "eval.json",
    }[command]
    assert written.is_file()
    assert sorted(path.name for path in written.parent.iterdir() if path.name.startswith(".")) == []


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_symbolic_link_is_refused_naming_where_it_points(
    monkeypatch, capsys, run_a: Path, tmp_path: Path, picture, command: str
) -> None:
    target = tmp_path / "kept.csv"
    target.write_text("the file the link names\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    before = md5(target)
    arguments = [f"inputs={picture}"] if command == "predict" else ["format=torchscript"]
    assert run_tool(monkeypatch, command, f"ckpt_path={run_a}", f"output={link}", "overwrite=true", *arguments) == 2
    line = one_error_line(capsys.readouterr())
    assert line == f"error: output={link} is a symbolic link to {target}; name the file itself"
    assert link.is_symlink() and md5(target) == before


@pytest.mark.slow
def test_a_dangling_link_and_a_link_to_a_folder_are_refused(monkeypatch, capsys, run_a: Path, tmp_path: Path) -> None:
    dangling = tmp_path / "model.onnx"
    dangling.symlink_to(tmp_path / "missing" / "model.onnx")
    assert run_tool(monkeypatch, "export", f"ckpt_path={run_a}", f"output={dangling}") == 2
    assert f"is a symbolic link to {tmp_path / 'missing' / 'model.onnx'}; name the file itself" in one_error_line(
        capsys.readouterr()
    )
    results = tmp_path / "results"
    results.symlink_to(run_a)
    assert run_tool(monkeypatch, "eval", f"ckpt_path={run_a}", f"output={results}", *QUICK_EVAL) == 2
    assert f"is a symbolic link to {run_a}; name the folder itself" in one_error_line(capsys.readouterr())
    assert dangling.is_symlink() and results.is_symlink() and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_eval_never_writes_through_a_link_in_its_own_folder(monkeypatch, capsys, run_a: Path, tmp_path: Path) -> None:
    """Its earlier results, with one of the files eval writes there (Lightning's hparams.yaml) now a link."""
    assert run_tool(monkeypatch, "eval", f"ckpt_path={run_a}", *QUICK_EVAL) == 0
    capsys.readouterr()
    notes = tmp_path / "notes.yaml"
    notes.write_text("my notes\n")
    before = md5(notes)
    linked = run_a / "eval" / "last" / "hparams.yaml"
    linked.unlink()
    linked.symlink_to(notes)
    assert run_tool(monkeypatch, "eval", f"ckpt_path={run_a}", *QUICK_EVAL) == 2
    assert one_error_line(capsys.readouterr()) == (
        f"error: the default output {linked.parent}: its hparams.yaml is a symbolic link to {notes}; "
        "pass another output="
    )
    assert md5(notes) == before and linked.is_symlink()


@pytest.mark.slow
def test_predict_never_replaces_dev_stdout(monkeypatch, capsys, run_a: Path, picture) -> None:
    """As root, a rename over /dev/stdout once replaced the system's link with a file of predictions."""
    if not os.path.islink("/dev/stdout"):
        pytest.skip("/dev/stdout is not a symbolic link on this system")
    pointed = os.readlink("/dev/stdout")
    assert run_tool(monkeypatch, "predict", f"ckpt_path={run_a}", f"inputs={picture}", "output=/dev/stdout") == 2
    assert one_error_line(capsys.readouterr()) == (
        f"error: output=/dev/stdout is a symbolic link to {pointed}; name the file itself"
    )
    assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == pointed


@pytest.mark.slow
@pytest.mark.parametrize("special", ["a named pipe (FIFO)", "a character device", "a socket"])
def test_a_special_file_is_refused_by_what_it_is(
    monkeypatch, capsys, run_a: Path, tmp_path: Path, picture, special: str
) -> None:
    if special == "a named pipe (FIFO)":
        output = tmp_path / "pipe"
        os.mkfifo(output)
    elif special == "a socket":
        import socket

        output = tmp_path / "sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(output))
        server.close()
    else:
        output = Path("/dev/null")
    kind = stat.S_IFMT(output.lstat().st_mode)
    arguments = [f"ckpt_path={run_a}", f"inputs={picture}", f"output={output}", "overwrite=true"]
    assert run_tool(monkeypatch, "predict", *arguments) == 2
    assert one_error_line(capsys.readouterr()) == (
        f"error: output={output} is {special}, not a regular file; name a file: output=<file>"
    )
    assert stat.S_IFMT(output.lstat().st_mode) == kind  # still what it was, not a file of predictions


def test_what_counts_as_a_run_record_or_data(run_a: Path, data_dir: Path, tmp_path: Path) -> None:
    """The rules' table in one place; a folder merely named ``checkpoints`` holding no checkpoint is the user's."""
    checkpoints = run_a / "checkpoints"
    user_folder = tmp_path / "checkpoints"
    user_folder.mkdir()
    assert record_part(checkpoints / "new.onnx") == f"in {checkpoints}, the checkpoints of a run"
    assert record_part(checkpoints / "new.onnx", home=checkpoints) is None  # export's default: beside its checkpoint
    assert record_part(run_a / ".hydra" / "x.yaml", home=checkpoints).startswith("in ")
    assert record_part(run_a / "sub" / ".." / "result.json") == "a run's record (result.json)"
    assert record_part(run_a / "train.log") == f"the log of the run {run_a}"
    assert record_part(tmp_path / "notes" / "train.log") is None  # a log beside no run is the user's
    assert record_part(data_dir / "MNIST" / "anything.csv", [data_dir / "MNIST"]).startswith("in the data set's")
    assert record_part(tmp_path / "x" / "train-images-idx3-ubyte.gz") == "a data-set file (named like an IDX file)"
    assert record_part(user_folder / "model.onnx") is None
    assert record_part(run_a / "predictions.csv") is None
