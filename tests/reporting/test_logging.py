"""The console and the run's log file: plain readable lines, no dependency noise, everything also in train.log."""

import re
from pathlib import Path

import pytest

from tests.conftest import run_module

EPOCHS = 2
NOISE = ("litlogger", "litmodels", "LeafSpec", "FLOPs", "GPU available", "\x1b[", "\r")
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/2: train loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}, \d+\.\d s$", re.M
)
SUMMARY_LINES = (
    re.compile(r"loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}$", re.M),
    re.compile(r"examples/sec on cpu", re.M),
    re.compile(r"run folder: ", re.M),
    re.compile(r"view the curves: tensorboard --logdir ", re.M),
)
TIMESTAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[[\w.]+\]\[(DEBUG|INFO|WARNING|ERROR)\] - ")


@pytest.fixture(scope="module")
def plain_run(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One CLI run, output captured (not a terminal), shared by the tests below: ``run_command`` is per test."""
    cwd = tmp_path_factory.mktemp("plain_run")
    done = run_module(
        "lenet_lightning.train",
        f"epochs={EPOCHS}",
        "accelerator=cpu",
        "hydra.run.dir=run",
        cwd=cwd,
        data_dir=tiny_data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, cwd / "run" / "train.log"


@pytest.mark.slow
def test_console_shows_our_lines_and_no_dependency_noise(plain_run) -> None:
    done, _ = plain_run
    for noise in NOISE:
        assert noise not in done.stdout and noise not in done.stderr, noise
    assert re.search(r"^model: [\d,]+ parameters", done.stdout, re.M)
    for line in SUMMARY_LINES:
        assert line.search(done.stdout), (line.pattern, done.stdout)


@pytest.mark.slow
def test_progress_off_a_terminal_is_one_line_per_epoch(plain_run) -> None:
    done, _ = plain_run
    assert [int(epoch) for epoch in EPOCH_LINE.findall(done.stdout)] == list(range(1, EPOCHS + 1)), done.stdout
    assert all(len(line) < 200 for line in done.stdout.splitlines())


@pytest.mark.slow
def test_run_folder_log_holds_the_console_lines_with_timestamps(plain_run) -> None:
    done, log_file = plain_run
    log = log_file.read_text()
    assert log, "train.log is empty"
    assert all(TIMESTAMP.match(line) for line in log.splitlines() if line.startswith("["))
    assert TIMESTAMP.match(log)
    for line in done.stdout.splitlines():
        assert line in log, line  # every console line, summary included, is in the file
    for line in SUMMARY_LINES:
        assert line.search(log), line.pattern
    assert re.search(TIMESTAMP.pattern + "epoch 2/2: ", log, re.M)
    assert "GPU available: False" in log  # Lightning's device lines go to the file only
    assert not any(noise in log for noise in ("litlogger", "litmodels", "LeafSpec"))


@pytest.mark.slow
@pytest.mark.parametrize("verbose", ["true", "lenet_lightning"])
def test_hydra_verbose_adds_debug_lines_to_the_log(run_command, tmp_path: Path, verbose: str) -> None:
    done = run_command("epochs=1", "accelerator=cpu", f"hydra.verbose={verbose}", "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "[lenet_lightning.data.datamodule][DEBUG] - MNIST loaded from" in log
    assert "MNIST loaded from" in done.stdout  # the console shows them too, as Hydra documents


@pytest.mark.slow
def test_no_debug_lines_without_verbose(plain_run) -> None:
    done, log_file = plain_run
    assert "[DEBUG]" not in log_file.read_text()
    assert "loaded from" not in done.stdout


@pytest.mark.slow
def test_warnings_and_errors_go_to_stderr_only(run_command, tmp_path: Path) -> None:
    run = tmp_path / "stopped-early"  # a run stopped before its first checkpoint: the resume warns, then trains
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- epochs=1\n- accelerator=cpu\n")
    done = run_command(f"resume={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing to resume" in done.stderr and "nothing to resume" not in done.stdout
    assert "[WARNING] - nothing to resume" in (run / "train.log").read_text()
