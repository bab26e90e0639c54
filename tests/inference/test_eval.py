"""eval on real checkpoints of a real training run: same test acc as the run logged, a per-class table, clear errors."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.errors import UserError
from lenet_lightning.inference.checkpoint import load_checkpoint
from lenet_lightning.inference.evaluate import evaluate
from tests.conftest import TINY_TEST


@pytest.fixture
def run_dir(tiny_trained_run_copy: Path) -> Path:
    """This test's copy of the shared one-epoch run: run folder with .hydra/, event file and checkpoints/last.ckpt."""
    return tiny_trained_run_copy


def logged_test_acc(folder: Path) -> float:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator.Scalars("test/acc")[-1].value


@pytest.mark.slow
def test_eval_cli_reproduces_the_runs_test_accuracy_with_a_per_class_table(run_dir: Path, run_command) -> None:
    done = run_command(f"ckpt_path={run_dir}/checkpoints/last.ckpt", module="lenet_lightning.eval")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run_dir / "eval" / "last" / "eval.json").read_text())
    assert report["test_acc"] == logged_test_acc(run_dir)  # same float32 value, not merely close
    assert report["dataset"] == "mnist" and report["test_examples"] == TINY_TEST
    assert sum(row["total"] for row in report["per_class"]) == TINY_TEST
    assert f"test acc {report['test_acc']:.4f} on {TINY_TEST} test images" in done.stdout
    for row in report["per_class"]:
        numbers = f"{row['correct']} +{row['total']} +{row['accuracy']:.4f} +{row['average_precision']:.4f}"
        line = rf"^{re.escape(row['class'])} +{numbers}$"
        assert re.search(line, done.stdout, re.M), line
    assert "0 - zero" in done.stdout and "9 - nine" in done.stdout
    assert f"projector: {run_dir / 'eval' / 'last' / '00000' / 'test_features'}" in done.stdout
    assert report["projector"] and (run_dir / "eval" / "last" / "projector_config.pbtxt").is_file()


@pytest.mark.slow
def test_checkpoint_outside_its_run_folder_is_recognised_by_its_class_names(
    tiny_trained_run: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "shared" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(tiny_trained_run / "checkpoints" / "last.ckpt", alone)
    result = evaluate(str(alone), data_dir=str(tiny_data_dir), accelerator="cpu")
    assert result["dataset"] == "mnist"
    assert result["test_acc"] == logged_test_acc(tiny_trained_run)
    assert Path(result["output_dir"]) == tmp_path / "shared" / "eval" / "model"


def test_run_folder_as_ckpt_path_means_its_last_checkpoint(tiny_trained_run: Path) -> None:
    assert load_checkpoint(str(tiny_trained_run)).path == tiny_trained_run / "checkpoints" / "last.ckpt"


def test_invalid_checkpoints_get_a_message_naming_the_problem(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"not a checkpoint")
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(3)}, plain)
    untrusted = tmp_path / "untrusted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": Path("x")}}, untrusted)
    expected = {
        None: "no checkpoint given",
        str(tmp_path / "missing.ckpt"): "checkpoint not found: .*missing.ckpt; pass ckpt_path=outputs/runs/",
        str(truncated): "is not a PyTorch checkpoint",
        str(plain): "is not a Lightning checkpoint",
        str(untrusted): "was refused: it holds pickled objects",
    }
    for ckpt_path, message in expected.items():
        with pytest.raises(UserError, match=message):
            load_checkpoint(ckpt_path)
