"""Bad input fails fast: one line on stderr, exit status 2, before any data is read or a run folder is made.

A single training run's config is checked, and its folder claimed, by the ``PrepareRun`` Hydra
callback after Hydra composes the config and before it writes anything; the fast tests call it directly.
"""

import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, read_write

from lenet_lightning.config.command import StopBeforeRun
from lenet_lightning.errors import UserError
from lenet_lightning.runs.resume import merge_overrides, resume_arguments
from lenet_lightning.training.preflight import PrepareRun
from tests.conftest import CONFIG_DIR

ONE_LINE_LIMIT_S = 10


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def run_timed(run_command, *args: str):
    start = time.perf_counter()
    result = run_command(*args)
    return result, time.perf_counter() - start


def composed(*overrides: str) -> DictConfig:
    """The train config as Hydra hands it to its callbacks: with the ``hydra`` node."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def prepare(cfg: DictConfig) -> None:
    """What Hydra runs before a single run: the callback; what stops the command is raised as itself."""
    try:
        PrepareRun().on_run_start(config=cfg)
    except StopBeforeRun as stop:
        raise stop.reason from None


def test_bad_value_is_refused_before_a_run_folder_is_made(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^epochs=0 is not allowed: epochs must be an integer >= 1$"):
        prepare(composed("epochs=0"))
    assert not (tmp_path / "outputs").exists(), "no run folder for a command line that cannot run"


def test_two_runs_started_in_the_same_second_get_folders_of_their_own(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = composed(), composed()
    for cfg in (first, second):  # the folder name Hydra gives both when they start in the same second
        with read_write(cfg.hydra.run):
            cfg.hydra.run.dir = "outputs/runs/2024-01-01/12-00-00"
    prepare(first)
    prepare(second)
    assert first.hydra.run.dir != second.hydra.run.dir
    assert Path(first.hydra.run.dir).is_dir() and Path(second.hydra.run.dir).is_dir()
    assert second.hydra.run.dir == f"{first.hydra.run.dir}-1"


def test_a_run_folder_given_on_the_command_line_is_used_as_it_is(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = composed(f"hydra.run.dir={tmp_path / 'mine'}")
    prepare(cfg)
    assert cfg.hydra.run.dir == str(tmp_path / "mine")
    assert not (tmp_path / "outputs").exists()


def test_resume_becomes_the_saved_overrides_in_the_saved_folder_before_composing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    saved = ["model.activation=relu", "epochs=1", "+trainer.gradient_clip_val=0.5", "resume=old", "ckpt_path=x.ckpt"]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {override}\n" for override in saved))

    given = [f"resume={run}", "epochs=3"]
    arguments = resume_arguments(["-cn", "train", *given])
    expected = ["model.activation=relu", "+trainer.gradient_clip_val=0.5", *given]
    assert arguments == ["-cn", "train", *expected, f"hydra.run.dir='{run}'"]

    cfg = composed(*arguments[2:])  # composed once, with them all: it runs, in the saved folder
    prepare(cfg)
    assert (cfg.model.activation, cfg.epochs, cfg.hydra.run.dir) == ("relu", 3, str(run))


def test_merge_overrides_reads_keys_as_hydra_parses_them() -> None:
    saved = ["+a.b=1", "~c", "dataset=fashion", "x='p,q'", "resume=r", "ckpt_path=k"]
    assert merge_overrides(saved, ["a.b=2", "c=3"]) == ["dataset=fashion", "x='p,q'", "a.b=2", "c=3"]
    with pytest.raises(UserError, match="cannot parse the overrides"):
        merge_overrides(["lr=("], [])


BAD_OVERRIDES = [
    ("lrr=0.1", ("'lrr'", "did you mean 'lr'")),
    ("model.optimizer.lrr=0.1", ("'model.optimizer.lrr'", "did you mean 'optimizer.lr'")),
    ("dataset=fashon", ("'fashon'", "fashion, mnist", "dataset=fashion")),
    ("lr=abc", ("lr=abc", "a number > 0")),
    ("epochs=0", ("epochs=0", "an integer >= 1")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "fragments"), BAD_OVERRIDES, ids=[case[0] for case in BAD_OVERRIDES])
def test_bad_override_on_the_command_line_is_one_line_exit_2(run_command, tmp_path: Path, override, fragments) -> None:
    result, seconds = run_timed(run_command, override)
    assert_one_line_error(result, *fragments)
    assert seconds < ONE_LINE_LIMIT_S
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_sweep_values_without_multirun_are_explained(run_command, tmp_path: Path) -> None:
    result = run_command("lr=0.1,0.3")
    assert_one_line_error(result, "lr=0.1,0.3", "add -m")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_without_gpu_says_use_cpu_or_auto(run_command, tmp_path: Path) -> None:
    result, seconds = run_timed(run_command, "accelerator=gpu")
    assert_one_line_error(result, "no GPU is visible", "accelerator=cpu", "accelerator=auto")
    assert seconds < ONE_LINE_LIMIT_S
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_missing_checkpoint_is_named(run_command, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "last.ckpt"
    result, seconds = run_timed(run_command, f"ckpt_path={missing}")
    assert_one_line_error(result, str(missing), "no such file")
    assert seconds < ONE_LINE_LIMIT_S
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_file_that_is_not_a_checkpoint_is_named(run_command, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    result, seconds = run_timed(run_command, f"ckpt_path={notes}")
    assert_one_line_error(result, str(notes), "not a checkpoint")
    assert seconds < ONE_LINE_LIMIT_S


@pytest.mark.slow
def test_resume_of_a_folder_that_is_not_a_run_is_named(run_command, tmp_path: Path) -> None:
    result = run_command(f"resume={tmp_path / 'no-such-run'}")
    assert_one_line_error(result, "no-such-run", "not a run folder")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_help_still_works(run_command) -> None:
    result = run_command("--help")
    assert result.returncode == 0
    assert "lr" in result.stdout
