"""Bad input fails fast: one line on stderr, exit status 2, before any data is read or a run folder is made."""

import time
from pathlib import Path

import pytest
import torch

from lenet_lightning.config.errors import UserError
from lenet_lightning.train import prepare_command_line

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


def run_timed(run_cli, *args: str):
    start = time.perf_counter()
    result = run_cli(*args)
    return result, time.perf_counter() - start


BAD_OVERRIDES = [
    # typos: the key and the nearest valid one
    ("lrr=0.1", ("'lrr'", "did you mean 'lr'")),
    ("model.optimizer.lrr=0.1", ("'model.optimizer.lrr'", "did you mean 'optimizer.lr'")),
    ("datset=fashion", ("'datset'", "did you mean 'dataset'")),
    # unknown data set: the available ones
    ("dataset=fashon", ("'fashon'", "fashion, mnist", "dataset=fashion")),
    # wrong type or range: the key, the value given, what is allowed
    ("lr=abc", ("lr='abc'", "a number > 0")),
    ("lr=0", ("lr=0", "a number > 0")),
    ("lr=-1", ("lr=-1", "a number > 0")),
    ("epochs=0", ("epochs=0", "an integer >= 1")),
    ("epochs=-5", ("epochs=-5", "an integer >= 1")),
    ("epochs=2.5", ("epochs=2.5", "an integer >= 1")),
    ("dataset.batch_size=0", ("dataset.batch_size=0", "an integer >= 1")),
    ("seed=abc", ("seed='abc'", "an integer >= 0")),
    ("memory_format=nhwc", ("memory_format='nhwc'", "contiguous, channels_last")),
]


@pytest.mark.parametrize(("override", "fragments"), BAD_OVERRIDES)
def test_bad_override_is_explained_before_anything_runs(monkeypatch, tmp_path: Path, override, fragments) -> None:
    """The start-up check the CLI runs first, called directly (the CLI tests below cover the same path end to end)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        prepare_command_line([override])
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "outputs").exists(), "no run folder for a command line that cannot run"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [BAD_OVERRIDES[0], BAD_OVERRIDES[1], BAD_OVERRIDES[3], BAD_OVERRIDES[4], BAD_OVERRIDES[7]],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_override_on_the_command_line_is_one_line_exit_2(run_cli, tmp_path: Path, override, fragments) -> None:
    result, seconds = run_timed(run_cli, override)
    assert_one_line_error(result, *fragments)
    assert seconds < ONE_LINE_LIMIT_S
    assert not (tmp_path / "outputs").exists()


def test_sweep_values_without_multirun_are_explained(run_cli) -> None:
    result = run_cli("lr=0.1,0.3")
    assert_one_line_error(result, "lr=0.1,0.3", "add -m")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_without_gpu_says_use_cpu_or_auto(run_cli, tmp_path: Path) -> None:
    result, seconds = run_timed(run_cli, "accelerator=gpu")
    assert_one_line_error(result, "no GPU is visible", "accelerator=cpu", "accelerator=auto")
    assert seconds < ONE_LINE_LIMIT_S
    assert not (tmp_path / "outputs").exists()


def test_missing_checkpoint_is_named(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "last.ckpt"
    result, seconds = run_timed(run_cli, f"ckpt_path={missing}")
    assert_one_line_error(result, str(missing), "no such file")
    assert seconds < ONE_LINE_LIMIT_S


def test_file_that_is_not_a_checkpoint_is_named(run_cli, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    result, seconds = run_timed(run_cli, f"ckpt_path={notes}")
    assert_one_line_error(result, str(notes), "not a checkpoint")
    assert seconds < ONE_LINE_LIMIT_S


def test_resume_of_a_folder_that_is_not_a_run_is_named(run_cli, tmp_path: Path) -> None:
    result = run_cli(f"resume={tmp_path / 'no-such-run'}")
    assert_one_line_error(result, "no-such-run", "not a run folder")


def test_help_still_works(run_cli) -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "lr" in result.stdout
