"""A run folder belongs to one run, and resuming is safe: what a refused or pointless command leaves untouched.

The command-line tests start the real CLI on tiny data, with real files, signals and concurrent processes;
the fast ones call the pieces (lock, quoting, checkpoint checks) directly.
"""

import hashlib
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, read_write
from torchvision.datasets import MNIST, FashionMNIST

from lenet_lightning.errors import NothingToDo, UserError
from lenet_lightning.runs.checkpoint_files import AtomicCheckpointIO
from lenet_lightning.runs.checkpoint_fit import check_checkpoint_fits
from lenet_lightning.runs.commands import hydra_safe_arguments, override, shell_word
from lenet_lightning.runs.folder import claim_run_folder, hold_run_folder, refuse_used_folder, release_run_folder
from lenet_lightning.runs.layout import LAST_CHECKPOINT, LOCK_FILE
from lenet_lightning.runs.resume import merge_overrides
from lenet_lightning.training.preflight import PrepareRun
from tests.conftest import CONFIG_DIR, call_command
from tests.reliability_faults import NO_FIGURES

HOST = socket.gethostname()
# A finished run of a model and data set other than the defaults, so that mismatches have something to show.
FINISHED = ("dataset=fashion", "model=lenet_bn", "epochs=1", "dataset.batch_size=128", "accelerator=cpu", NO_FIGURES)
FOLDER_NAMES = [
    "outputs/runs/2024-05-01/12-00-00",
    "outputs/multirun/2024-05-01/12-00-00/epochs=2,lr=0.3",  # a sweep job
    "my runs/résumé",
    "it's",
    'say "hi"',
    "back\\slash\\",
    "~/runs",
    "a#b$c!d`e",
]


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` with its content hash and modification time."""
    return {
        path.relative_to(folder).as_posix(): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def epochs_in(run: Path) -> int:
    return torch.load(run / LAST_CHECKPOINT, weights_only=True)["epoch"] + 1


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed one-epoch run of LeNet with batch norm on Fashion-MNIST, made by the training command."""
    run = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        done = call_command(
            "lenet_lightning.train", *FINISHED, f"hydra.run.dir={run}", cwd=run.parent, data_dir=tiny_data_dir,
            monkeypatch=monkeypatch,
        )  # fmt: skip
    assert done.returncode == 0
    return run


# --- The folder a new run writes into -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_new_run_never_writes_into_a_folder_that_holds_files(run_command, finished_run: Path, tmp_path: Path) -> None:
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    one_line_error(run_command("epochs=1", f"hydra.run.dir={run}"), f"{run} already holds a run", f"resume={run}")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    one_line_error(run_command("epochs=1", f"hydra.run.dir={notes}"), f"{notes} is not empty (todo.txt)")
    # A checkpoint from elsewhere does not make another folder the run's own either.
    elsewhere = (f"ckpt_path={finished_run / LAST_CHECKPOINT}", *FINISHED[:2], "epochs=2", f"hydra.run.dir={notes}")
    one_line_error(run_command(*elsewhere), "is not empty")
    one_line_error(run_command("ckpt_path=last", f"hydra.run.dir={notes}"), "is not empty")  # not a run's folder
    assert snapshot(run) == before
    assert os.listdir(notes) == ["todo.txt"]


def test_a_folder_is_claimed_under_its_lock_and_left_as_it_was_when_refused(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "run"

    def refuse() -> None:
        raise UserError("refused")

    with pytest.raises(UserError, match="refused"):
        claim_run_folder(folder, continues_its_run=False, check=refuse)
    assert not (tmp_path / "new").exists(), "the folders made for the run are removed again"
    claim_run_folder(folder, continues_its_run=False, check=lambda: None)
    assert (folder / LOCK_FILE).read_text() == f"{os.getpid()} {HOST}\n"
    release_run_folder(folder)
    assert os.listdir(folder) == []


def test_files_of_the_other_processes_of_a_distributed_run_do_not_count(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("rank 1 started first")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    with pytest.raises(UserError, match="already holds a run"):
        refuse_used_folder(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: every process composes and writes .hydra/ and its log
    refuse_used_folder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="already holds a run"):
        refuse_used_folder(tmp_path)


# --- Resuming a run that has all its epochs, or training no epoch ------------------------------------------


@pytest.mark.slow
def test_resuming_a_complete_run_says_so_and_touches_nothing(run_command, finished_run: Path, tmp_path: Path) -> None:
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    new_folder = tmp_path / "new"
    checkpoint = f"ckpt_path={run / LAST_CHECKPOINT}"
    commands = [
        (f"resume={run}", [f"resume={run}"]),
        (checkpoint, [checkpoint, *FINISHED, f"hydra.run.dir={new_folder}"]),  # a new run from it: nothing to train
    ]
    for named, args in commands:
        done = run_command(*args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout == f"{named}: already complete (epoch 1 of 1); raise epochs= to continue\n"
        assert "diverged" not in done.stdout + done.stderr
    assert snapshot(run) == before
    assert not new_folder.exists() and not (tmp_path / "outputs").exists()


def crafted_checkpoint(path: Path, epoch: int, classes: list[str], net: dict) -> Path:
    torch.save({"state_dict": {}, "epoch": epoch, "hyper_parameters": {"net": net, "class_names": classes}}, path)
    return path


def test_a_checkpoint_is_checked_against_the_config_before_anything_runs(make_config, tmp_path: Path) -> None:
    cfg = make_config("epochs=3")
    lenet = OmegaConf.to_container(cfg.model)
    mnist, fashion = list(MNIST.classes), list(FashionMNIST.classes)
    fits = crafted_checkpoint(tmp_path / "fits.ckpt", 1, mnist, lenet)
    check_checkpoint_fits(fits, cfg, "ckpt_path=fits.ckpt")

    fashion_run = crafted_checkpoint(tmp_path / "fashion.ckpt", 1, fashion, lenet)
    expected = "^resume=r: the checkpoint was trained on dataset=fashion, not mnist; give dataset=fashion$"
    with pytest.raises(UserError, match=expected):
        check_checkpoint_fits(fashion_run, cfg, "resume=r")
    check_checkpoint_fits(fashion_run, make_config("epochs=3", "dataset=fashion"), "resume=r")

    batch_norm = crafted_checkpoint(tmp_path / "bn.ckpt", 1, mnist, {**lenet, "batch_norm": True})
    with pytest.raises(UserError, match=r"another model \(model.batch_norm=true\) .*; give model.batch_norm=true$"):
        check_checkpoint_fits(batch_norm, cfg, "resume=r")

    complete = crafted_checkpoint(tmp_path / "complete.ckpt", 2, mnist, lenet)
    with pytest.raises(NothingToDo, match=r"^resume=r: already complete \(epoch 3 of 3\); raise epochs= to continue$"):
        check_checkpoint_fits(complete, cfg, "resume=r")
    with pytest.raises(NothingToDo, match=r"\(3 epochs, more than the 2 asked for\)"):
        check_checkpoint_fits(complete, make_config("epochs=2"), "resume=r")


# --- A resume refused for another model or data set leaves the run as it was ------------------------------


@pytest.mark.slow
def test_a_resume_with_another_model_or_data_set_is_refused_before_anything_is_written(
    run_command, finished_run: Path, tmp_path: Path
) -> None:
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    refusals = {
        "model=lenet": "give model.activation=relu model.batch_norm=true model.pooling=max",
        "dataset=mnist": "trained on dataset=fashion, not mnist; give dataset=fashion",
    }
    for given, fix in refusals.items():
        one_line_error(run_command(f"resume={run}", given, "epochs=2"), f"resume={run}: the checkpoint", fix)
        assert snapshot(run) == before, "saved overrides, checkpoint and result are as they were"
    resumed = run_command(f"resume={run}", "epochs=2")  # the plain resume still works: nothing was rewritten
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_in(run) == 2


@pytest.mark.slow
def test_a_run_without_saved_overrides_is_told_apart_by_its_checkpoint(
    run_command, finished_run: Path, tmp_path: Path
) -> None:
    """resume= needs the saved overrides and says so; a new run from the checkpoint is checked against it."""
    run = copy_of(finished_run, tmp_path)
    (run / ".hydra" / "overrides.yaml").unlink()
    before = snapshot(run)
    one_line_error(run_command(f"resume={run}", "epochs=2"), "overrides.yaml is missing", "ckpt_path=")
    checkpoint, new = f"ckpt_path={run / LAST_CHECKPOINT}", tmp_path / "new"
    given = (checkpoint, "epochs=2", f"hydra.run.dir={new}")
    one_line_error(run_command(*given), "trained on dataset=fashion, not mnist")
    one_line_error(run_command(*given, "dataset=fashion"), "model.batch_norm=true")
    assert snapshot(run) == before
    resumed = run_command(*given, *FINISHED[:2], "dataset.batch_size=128", NO_FIGURES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_in(new) == 2


# --- One writer per folder -----------------------------------------------------------------------------------


def test_the_lock_refuses_a_live_holder_and_takes_over_from_a_dead_one(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_FILE
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(f"{sleeper.pid} {HOST}\n")
        with pytest.raises(UserError, match=rf"in use by another run \(process {sleeper.pid} {HOST}, lock file"):
            hold_run_folder(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    hold_run_folder(tmp_path)  # its process is gone: the lock is stale and taken over
    assert lock.read_text() == f"{os.getpid()} {HOST}\n"
    release_run_folder(tmp_path)
    assert not lock.exists()
    for holder in ("1 another-host", ""):  # processes of other hosts cannot be seen; a damaged lock names no one
        lock.write_text(holder)
        with pytest.raises(UserError, match="delete the lock file only if no run uses it"):
            hold_run_folder(tmp_path)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_two_sweeps_started_in_the_same_second_get_folders_of_their_own(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    sweeps = [composed(), composed()]
    for cfg in sweeps:  # the folder Hydra names both when they start in the same second
        with read_write(cfg.hydra):
            cfg.hydra.sweep.dir = "outputs/multirun/2024-01-01/12-00-00"
        PrepareRun().on_multirun_start(config=cfg)
    assert [cfg.hydra.sweep.dir for cfg in sweeps] == [f"outputs/multirun/2024-01-01/12-00-00{s}" for s in ("", "-1")]
    # Each job's config is composed again from the sweep's overrides: it names the claimed folder too.
    job = composed(*sweeps[1].hydra.overrides.hydra, "lr=0.1")
    assert job.hydra.sweep.dir == "outputs/multirun/2024-01-01/12-00-00-1"


# --- resume= and what cannot go with it ----------------------------------------------------------------------


@pytest.mark.slow
def test_resume_is_refused_in_a_sweep_and_in_another_folder(run_command, finished_run: Path, tmp_path: Path) -> None:
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    swept = run_command("-m", f"resume={run}", "lr=0.1,0.3")
    one_line_error(swept, "cannot be part of a sweep", f"ckpt_path={run / LAST_CHECKPOINT}")
    assert not (tmp_path / "outputs").exists()
    other = tmp_path / "other"
    moved = run_command(f"resume={run}", "epochs=2", f"hydra.run.dir={other}")
    one_line_error(moved, "continues the run in its own folder", f"hydra.run.dir={other}")
    assert not other.exists()
    assert snapshot(run) == before
    one_line_error(run_command("resume="), "resume= names no run folder")
    assert not (tmp_path / "outputs").exists()


def test_a_resumed_search_trial_is_a_single_run() -> None:
    saved = ["hparams_search=lr_optuna", "lr=0.5", "resume=old"]
    assert merge_overrides(saved, ["resume=new"]) == ["lr=0.5", "resume=new"]


# --- Commands that paste back ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_printed_overrides_survive_the_shell_and_hydra(name: str) -> None:
    argument = override("resume", name)
    (parsed,) = OverridesParser.create().parse_overrides([argument])
    assert parsed.value() == name
    echoed = subprocess.run(["bash", "-c", f"printf %s {shell_word(argument)}"], capture_output=True, text=True)
    assert echoed.stdout == argument
    if name == FOLDER_NAMES[0]:
        assert shell_word(argument) == f"resume={name}", "plain names stay plain"


def test_folder_names_are_taken_literally_on_the_command_line() -> None:
    typed = [
        "-m",
        "lr=0.1,0.3",
        "resume=a/lr=0.3,epochs=2",
        "ckpt_path=x.ckpt",
        "hydra.run.dir=my runs/é",
        "resume='q'",
    ]
    expected = ["-m", "lr=0.1,0.3", "resume='a/lr=0.3,epochs=2'", "ckpt_path=x.ckpt", "hydra.run.dir='my runs/é'"]
    assert hydra_safe_arguments(typed) == [*expected, "resume='q'"]


# --- Permissions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path: Path, umask: int, mode: int) -> None:
    target = tmp_path / LAST_CHECKPOINT
    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "epoch": 0}, target)
        (tmp_path / "plain.txt").write_text("any new file")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


@pytest.mark.slow
def test_a_run_folder_has_one_set_of_permissions(finished_run: Path) -> None:
    modes = {stat.S_IMODE((finished_run / name).stat().st_mode) for name in (LAST_CHECKPOINT, "hparams.yaml")}
    assert len(modes) == 1, modes
