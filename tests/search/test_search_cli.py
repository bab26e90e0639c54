"""Optuna searches through the real command: pruning, choosing on validation data only, two workers on one study,
trials launched by the submitit launcher (the SLURM launcher's code, run locally)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from lenet_lightning.search.storage import open_storage
from tests.conftest import cli_env, write_idx, write_tiny_dataset

pytestmark = pytest.mark.slow
SEARCH = ("hparams_search=lr_optuna", "model.activation=relu", "dataset.val_size=128", "accelerator=cpu")
QUIET = ("callbacks.progress_bar.refresh_rate=0", "callbacks.error_analysis=null")


@pytest.fixture(scope="module")
def unrelated_test_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MNIST whose test labels are shuffled: test accuracy says nothing about a trial, validation does."""
    root = tmp_path_factory.mktemp("shuffled_test")
    raw = write_tiny_dataset(root, "MNIST")
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.random.default_rng(7).permutation(labels))
    return root


def study_of(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_search_prunes_and_chooses_on_validation_only(run_command, tmp_path: Path, unrelated_test_labels: Path) -> None:
    done = run_command(
        *SEARCH, *QUIET, "epochs=3", "hydra.sweeper.n_trials=5", "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=1", "hydra.sweeper.storage=search.journal",
        data_dir=unrelated_test_labels,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = study_of(str(tmp_path / "search.journal"), "lr_search")
    states = [trial.state for trial in study.trials]
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 2, states
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    for trial in study.trials:
        run_dir = sweep_dir / f"trial{trial.number}"
        result = json.loads((run_dir / "result.json").read_text())
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        if trial.state == TrialState.PRUNED:
            assert result["status"] == "pruned" and result["epochs"] < 3
            assert result["reason"] == f"pruned by the search after epoch {result['epochs']}"
        else:  # the study's value is the run's validation accuracy, never its test accuracy
            assert result["status"] == "completed" and trial.value == result["val_acc"] != result["test_acc"]
        assert trial.intermediate_values[result["epochs"]] == result["val_acc"]
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert study.best_trial.number == best.number

    rows = read_csv(sweep_dir / "study.csv")
    assert rows[0]["chosen"] == "yes" and rows[0]["trial"] == str(best.number)
    assert {row["trial"]: row["status"] for row in rows} == {
        str(t.number): {TrialState.PRUNED: "pruned", TrialState.COMPLETE: "completed"}[t.state] for t in study.trials
    }
    assert "| val/acc (chooses) | test acc (information) |" in done.stdout
    assert f"python -m lenet_lightning.train model.activation=relu accelerator=cpu {QUIET[0]}" in done.stdout
    assert f"lr={best.params['lr']!r}" in done.stdout.split("train the chosen hyper-parameters")[1]
    assert [row["status"] for row in read_csv(sweep_dir / "summary.csv")].count("pruned") == states.count(
        TrialState.PRUNED
    ), "the folder summary agrees, and pruned runs are no failures (exit 0)"


def test_two_workers_add_their_trials_to_one_study(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Two workers started at the same moment on one journal file: 2 x 2 distinct trials, each in its own folder."""
    command = [
        sys.executable, "-m", "lenet_lightning.train", *SEARCH, *QUIET, "epochs=1", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.storage=shared.journal", "hydra.sweeper.study_name=shared",
    ]  # fmt: skip
    env = {**cli_env(tiny_data_dir), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    study = study_of(str(tmp_path / "shared.journal"), "shared")
    assert sorted(trial.number for trial in study.trials) == [0, 1, 2, 3]
    assert all(trial.state == TrialState.COMPLETE for trial in study.trials)
    assert len({trial.user_attrs["worker"] for trial in study.trials}) == 2
    assert len({trial.params["lr"] for trial in study.trials}) == 4, "workers started together sample apart"
    folders = {trial.user_attrs["run_dir"] for trial in study.trials}
    assert len(folders) == 4 and all((tmp_path / folder / "result.json").is_file() for folder in folders)
    assert any("Study 'shared', 4 trials (4 completed)" in stdout for stdout, _ in outputs), "the whole study"


def test_a_search_runs_its_trials_through_the_submitit_launcher(run_cli, tmp_path: Path) -> None:
    """``hydra/launcher=submitit_local`` runs the SLURM launcher's code (pickled jobs, submitit's own processes):
    two trials launched together, each reporting its epochs to the study from its own process."""
    done = run_cli(
        *SEARCH, *QUIET, "epochs=2", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "hydra.sweeper.storage=search.journal",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = study_of(str(tmp_path / "search.journal"), "lr_search")
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(trial.intermediate_values) == [1, 2] for trial in study.trials), "reported from the jobs"
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert sorted(path.name for path in sweep_dir.glob("trial*")) == ["trial0", "trial1"]
    assert list(sweep_dir.glob(".submitit/*/*_0_log.out")), "the jobs ran under submitit"
