"""Honest results: strict result.json, the data folder a run read, runs that train no epoch or fill the disk,
batch norm on a last batch of one example, and run records that are damaged."""

import errno
import json
import math
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from lenet_lightning.errors import UserError
from lenet_lightning.reporting.records import read_run
from lenet_lightning.reporting.sweep_summary import write_summary
from lenet_lightning.runs.record import write_result_json
from lenet_lightning.training.preflight import check_run_rules
from lenet_lightning.training.run import OutOfDisk, disk_error_in, fit
from tests.conftest import TINY_TEST, TINY_TRAIN, call_command, small_tmpfs, write_tiny_dataset

NO_FIGURES = "~callbacks.error_analysis"  # rendering the error-analysis figures costs seconds per run
QUICK = ("dataset.batch_size=64", "accelerator=cpu", NO_FIGURES)
MOUNT_SIZE = 24 * 2**20  # above the 20 MB a run checks for at start-up, so the disk fills while training
LEAVE_BYTES = 64 * 2**10  # room for result.json and log lines, not for a checkpoint (~250 kB)


def fill_up(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the disk holding ``folder`` with a file ``filler``, then leave ``leave_bytes`` of it free again."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file:
        with pytest.raises(OSError) as raised:
            while True:
                file.write(b"\0" * 65536)
        assert raised.value.errno == errno.ENOSPC
        os.ftruncate(file.fileno(), max(0, filler.stat().st_size - leave_bytes))


class FillDisk(L.Callback):
    """Fill the disk holding ``folder`` when epoch ``epoch`` (1-based) starts, after the previous epoch's checkpoint;
    ``read_only=true`` remounts it read-only instead. Once per disk, so a resumed run trains on."""

    def __init__(self, folder: str, epoch: int, leave_bytes: int = 0, read_only: bool = False) -> None:
        self.folder, self.epoch, self.leave_bytes, self.read_only = Path(folder), epoch, leave_bytes, read_only

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 != self.epoch or (self.folder / "filler").exists():
            return
        if self.read_only:
            (self.folder / "filler").touch()
            subprocess.run(["mount", "-o", "remount,ro", str(self.folder)], check=True)
        else:
            fill_up(self.folder, self.leave_bytes)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs of its own (needs permission to mount; skipped without it)."""
    with small_tmpfs(tmp_path / "disk", str(MOUNT_SIZE)) as mount:
        yield mount


def fill_disk(mount: Path, epoch: int, **options: object) -> list[str]:
    overrides = [
        "+callbacks.fill_disk._target_=tests.runs.test_result_record.FillDisk",
        f"+callbacks.fill_disk.folder={mount}",
        f"+callbacks.fill_disk.epoch={epoch}",
    ]
    return overrides + [f"+callbacks.fill_disk.{key}={str(value).lower()}" for key, value in options.items()]


def strict_json(path: Path) -> dict:
    """Parse as strict JSON readers do: NaN and Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# 16. result.json is strict JSON -------------------------------------------------------------------------------


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- lr=1e+30\n")
    record = {"status": "diverged", "reason": "loss became nan", "train_loss": math.nan, "test_acc": math.inf}
    write_result_json(tmp_path / "result.json", {**record, "train_acc": 0.25})
    written = strict_json(tmp_path / "result.json")
    assert written["train_loss"] is None and written["test_acc"] is None and written["train_acc"] == 0.25
    run = read_run(tmp_path)
    assert run.status == "diverged" and math.isnan(run.train_loss) and math.isnan(run.test_acc)
    assert run.train_acc == 0.25


def test_a_result_json_that_does_not_fit_leaves_the_previous_one_whole(small_disk: Path) -> None:
    write_result_json(small_disk / "result.json", {"status": "completed", "test_acc": 0.5})
    fill_up(small_disk)
    with pytest.raises(OSError) as raised:
        write_result_json(small_disk / "result.json", {"status": "completed", "test_acc": 0.9, "reason": "x" * 8192})
    assert raised.value.errno == errno.ENOSPC
    assert strict_json(small_disk / "result.json") == {"status": "completed", "test_acc": 0.5}
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "result.json"], "no temporary file left"


@pytest.mark.slow
def test_a_run_writes_strict_json_for_a_diverged_run(run_command, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_command("model.activation=relu", "lr=1e20", "epochs=1", *QUICK, f"hydra.run.dir={run}")
    assert done.returncode == 3, done.stderr[-3000:]
    result = strict_json(run / "result.json")
    assert result["status"] == "diverged" and result["train_loss"] is None


# 15. Damaged run records are rows, never the end of the summary -------------------------------------------------

DAMAGED_RESULTS = {
    "empty": b"",
    "truncated": b'{"status": "completed", "test_acc": 0.9',
    "a list": b"[1, 2]",
    "no status": b'{"test_acc": 0.9}',
    "status not text": b'{"status": 3}',
    "number not a number": b'{"status": "completed", "test_acc": "high"}',
    "reason not text": b'{"status": "failed", "reason": ["a"]}',
    "not utf-8": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("content", DAMAGED_RESULTS.values(), ids=DAMAGED_RESULTS.keys())
def test_a_damaged_result_json_is_an_unreadable_row_with_a_reason(tmp_path: Path, content: bytes) -> None:
    run_dir = tmp_path / "lr=0.3"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- lr=0.3\n")
    (run_dir / "result.json").write_bytes(content)
    run = read_run(run_dir)
    assert run.status == "unreadable" and "result.json" in run.reason and "\n" not in run.reason
    assert run.overrides == {"lr": "0.3"} and math.isnan(run.test_acc)


def test_damaged_overrides_and_deletions_are_read_without_stopping(tmp_path: Path) -> None:
    damaged, deleting = tmp_path / "damaged", tmp_path / "deleting"
    for run_dir, overrides in ((damaged, "- lr: [unclosed\n"), (deleting, "- lr=0.3\n- ~callbacks.error_analysis\n")):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(overrides)
        write_result_json(run_dir / "result.json", {"status": "completed", "test_acc": 0.5})
    assert read_run(damaged).status == "unreadable" and "overrides.yaml" in read_run(damaged).reason
    run = read_run(deleting)
    assert run.status == "completed" and run.overrides == {"lr": "0.3", "callbacks.error_analysis": "~"}


def test_a_run_killed_after_a_checkpoint_is_an_interrupted_row_with_its_resume_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "lr=0.3"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- lr=0.3\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    run = read_run(run_dir)
    assert run.status == "interrupted"
    command = shlex.split(run.reason.split("; ")[-1])  # pasted into a shell, then parsed by Hydra
    assert command[:3] == ["python", "-m", "lenet_lightning.train"]
    (resume,) = OverridesParser.create().parse_overrides(command[3:])
    assert (resume.key_or_group, resume.value()) == ("resume", str(run_dir))


def test_one_damaged_run_does_not_stop_the_summary_of_the_others(tmp_path: Path) -> None:
    for name, content in (("lr=0.1", b""), ("lr=0.3", b'{"status": "completed", "test_acc": 0.8}')):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- {name}\n")
        (tmp_path / name / "result.json").write_bytes(content)
    runs = write_summary(tmp_path)
    assert [(run.name, run.status) for run in runs] == [("lr=0.3", "completed"), ("lr=0.1", "unreadable")]
    assert "| lr=0.1 | unreadable: result.json is empty" in (tmp_path / "summary.md").read_text()


# 6. A disk that fills up while training ---------------------------------------------------------------------


def test_out_of_disk_errors_are_recognised_behind_torch_s_runtime_error() -> None:
    def wrapped(error: OSError) -> RuntimeError:
        try:
            try:
                raise error
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
        except RuntimeError as wrapper:
            wrapper.__context__ = error  # what torch.save leaves: the OSError only as the context
            return wrapper

    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_error_in(wrapped(full)) is full
    assert disk_error_in(OSError(errno.EROFS, "Read-only file system")) is not None
    assert disk_error_in(wrapped(OSError(errno.EACCES, "Permission denied"))) is None
    assert disk_error_in(RuntimeError("something else")) is None


@pytest.mark.slow
def test_disk_full_while_training_ends_in_one_line_with_a_resume_command_that_works(
    run_command, small_disk: Path, tmp_path: Path
) -> None:
    run = small_disk / "run"
    done = run_command("epochs=3", *QUICK, f"hydra.run.dir={run}", *fill_disk(small_disk, 2, leave_bytes=LEAVE_BYTES))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "No space left on device" in line and str(run) in line
    assert strict_json(run / "result.json")["status"] == "failed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0, "epoch 1 is kept"

    os.truncate(small_disk / "filler", 0)  # free the space, then paste the command the message gave
    command = shlex.split(line.split("continue with ")[-1])
    assert command[:3] == ["python", "-m", "lenet_lightning.train"] and command[3].startswith("resume="), line
    resumed = run_command(*command[3:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = strict_json(run / "result.json")
    assert result["status"] == "completed" and result["epochs"] == 3


@pytest.mark.slow
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no traceback from a thread
@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_disk_with_no_room_at_all_fails_the_run_without_a_second_error(
    make_config, small_disk: Path, how: str
) -> None:
    """Not even result.json fits: fit() still ends in the one-line error, the checkpoint of epoch 1 kept."""
    run = small_disk / "run"
    options = {"read_only": True} if how == "read-only" else {"leave_bytes": 0}
    cfg = make_config("epochs=3", *QUICK, *fill_disk(small_disk, 2, **options), output_dir=run)
    with pytest.raises(OutOfDisk) as raised:
        fit(cfg)
    message = str(raised.value)
    assert "\n" not in message and f"resume={run}" in message
    assert ("Read-only file system" if how == "read-only" else "No space left on device") in message
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list(run.glob("*.tmp")) and not list((run / "checkpoints").glob("*.tmp"))


# 10. A run that trains no epoch is not a diverged run ---------------------------------------------------------


@pytest.mark.slow
def test_fit_tells_no_epoch_from_divergence(make_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert fit(make_config("epochs=1", *QUICK, output_dir=run)).status == "completed"
    again = fit(make_config("epochs=1", "ckpt_path=last", *QUICK, output_dir=run))
    assert again.status == "no_epochs" and "already holds all 1 epochs" in again.reason and again.epochs == 1
    assert math.isnan(again.train_loss)
    unchecked = ("model.activation=relu", "lr=1e20", "~callbacks.divergence")  # a real NaN loss, no check on
    diverged = fit(make_config("epochs=1", *unchecked, *QUICK, output_dir=tmp_path / "nan"))
    assert diverged.status == "diverged" and "training loss of epoch 1 is nan" in diverged.reason


@pytest.mark.slow
def test_a_run_that_trains_no_epoch_is_never_reported_as_diverged(run_command, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_command("epochs=1", "+trainer.limit_train_batches=0", *QUICK, f"hydra.run.dir={run}")
    assert done.returncode not in (0, 3), done.stderr[-3000:]
    assert "diverged" not in done.stdout + done.stderr
    assert "no epoch ran: no training batches" in done.stderr
    assert strict_json(run / "result.json")["status"] == "no_epochs"


@pytest.mark.slow
def test_lr_nan_is_refused_before_the_run_starts(run_command, tmp_path: Path) -> None:
    done = run_command("lr=nan", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and done.stderr.startswith("error: lr=nan is not allowed"), done.stderr
    assert not (tmp_path / "run").exists()


# 11. Batch norm and batches of one example -------------------------------------------------------------------


def test_batch_norm_with_batches_of_one_is_refused_before_any_work(make_config, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dataset.batch_size=1 cannot train a model with batch norm"):
        fit(make_config("model=lenet_bn", "dataset.batch_size=1", output_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("trainer", "processes"),
    [((), 1), (("trainer=ddp_cpu", "trainer.devices=2"), 2), (("trainer=ddp_multinode", "trainer.num_nodes=3"), 3)],
    ids=["one process", "two processes", "three nodes"],
)
def test_batch_norm_on_a_share_of_one_training_example_is_refused_before_any_work(
    make_config, tmp_path: Path, trainer: tuple[str, ...], processes: int
) -> None:
    """A training set, or each process's share of it, of a single example cannot fill a batch of two."""
    one_each = make_config("model=lenet_bn", *trainer, f"dataset.val_size={TINY_TRAIN - processes}")
    with pytest.raises(UserError, match="batch norm needs at least 2 examples per batch") as refused:
        fit(one_each)
    assert f"leaves {processes} training example(s)" in str(refused.value)
    assert ("among" in str(refused.value)) == (processes > 1)
    assert not (tmp_path / "run").exists()
    check_run_rules(make_config("model=lenet_bn", *trainer, f"dataset.val_size={TINY_TRAIN - 2 * processes}"))


@pytest.mark.slow
def test_batch_norm_with_batch_size_1_is_one_line_and_exit_2(run_command, tmp_path: Path) -> None:
    done = run_command("model=lenet_bn", "dataset.batch_size=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "dataset.batch_size=2 or more" in errors[0], done.stderr[-3000:]


@pytest.mark.slow
def test_batch_norm_trains_through_a_last_training_batch_of_one_example(run_command, tmp_path: Path) -> None:
    """257 training images in batches of 256: the data module joins the last example to the batch before it."""
    run = tmp_path / "run"
    val_size = TINY_TRAIN - 256 - 1
    done = run_command(
        "experiment=best_mnist", f"dataset.val_size={val_size}", "epochs=2", *QUICK[1:], f"hydra.run.dir={run}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "result.json").read_text())["status"] == "completed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


# 7. The saved config names the data folder the run read ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("given_as", ["LENET_DATA_DIR", "relative data_dir"])
def test_eval_in_another_shell_reads_the_data_the_run_trained_on(
    tmp_path: Path, given_as: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Train in one folder with one LENET_DATA_DIR, evaluate from another with another (the commands in process)."""

    def run_module(module: str, *args: str, cwd: Path, data_dir: Path | None) -> subprocess.CompletedProcess:
        return call_command(module, *args, cwd=cwd, data_dir=data_dir, monkeypatch=monkeypatch, capfd=capfd)

    trained_on, elsewhere = tmp_path / "train_shell" / "data", tmp_path / "eval_shell" / "other_data"
    write_tiny_dataset(trained_on, "MNIST")
    write_tiny_dataset(elsewhere, "MNIST", n_test=TINY_TEST // 2)  # a folder eval must not read
    run = tmp_path / "run"
    train_args = ("epochs=1", *QUICK, f"hydra.run.dir={run}")
    monkeypatch.delenv("LENET_DATA_DIR", raising=False)  # as a shell without it; set per command below
    if given_as == "LENET_DATA_DIR":
        done = run_module("lenet_lightning.train", *train_args, cwd=tmp_path, data_dir=trained_on)
    else:  # relative to the folder training started in
        done = run_module("lenet_lightning.train", *train_args, "data_dir=data", cwd=trained_on.parent, data_dir=None)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert f"data_dir: {trained_on}\n" in saved

    evaluated = run_module("lenet_lightning.eval", f"ckpt_path={run}", cwd=elsewhere.parent, data_dir=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "eval" / "last" / "eval.json").read_text())["test_examples"] == TINY_TEST
