"""The search's parts in-process: its space, storage and study refuse bad input in one line; a dead worker's trial
is marked failed; the objective is a validation metric only."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lenet_lightning.errors import UserError
from lenet_lightning.search.objective import objective_value, outcome
from lenet_lightning.search.space import search_space
from lenet_lightning.search.storage import check_storage, open_storage
from lenet_lightning.search.study import WORKER_ATTR, check_study, fail_orphaned_trials, open_study, study_rows


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "nothing to search"),
        ({"lr": "interval(3, 0.1)"}, "is empty"),
        ({"lr": "tag(log, interval(0, 1))"}, "must start above 0"),
        ({"epochs": "range(5, 1)"}, "is empty"),
        ({"lr": "interval(0.1"}, "cannot be read"),
        ({"lr": "0.3"}, "nothing to search"),
    ],
)
def test_an_empty_or_impossible_space_is_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        search_space(params)


def test_a_space_reads_hydras_sweep_grammar() -> None:
    space, fixed = search_space(
        {
            "lr": "tag(log, interval(0.01, 3))",
            "dataset.batch_size": "choice(64, 128)",
            "epochs": "range(1, 4)",
            "seed": 3,
        }
    )
    assert space["lr"] == optuna.distributions.FloatDistribution(0.01, 3.0, log=True)
    assert space["dataset.batch_size"].choices == (64, 128)
    assert space["epochs"].choices == (1, 2, 3)
    assert fixed == {"seed": 3}


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("sqlit:///x.db", "no SQLAlchemy driver"),
        ("sqlite:///{tmp}/missing/x.db", "does not exist"),
        ("sqlite://", "in-memory"),
        ("{tmp}/missing/search.journal", "does not exist"),
        ("{tmp}", "is a folder"),
        ("postgresql://user@127.0.0.1:1/db", "cannot be opened"),  # no driver installed, or no server on port 1
    ],
)
def test_a_storage_that_cannot_work_is_one_line(tmp_path: Path, storage: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as refused:
        open_storage(storage.format(tmp=tmp_path))
    assert "\n" not in str(refused.value)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a journal\n")
    with pytest.raises(UserError, match="not an Optuna journal file"):
        open_storage(str(tmp_path / "notes.txt"))
    check_storage(str(tmp_path / "new.journal"))  # a new file in an existing folder is fine


def test_a_study_made_for_the_other_direction_is_refused(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'search.db'}")
    open_study(storage, "s", "val/loss", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    with pytest.raises(UserError, match=r"set to minimize, but hydra\.sweeper\.objective=val/acc needs maximize"):
        check_study(storage, "s", "val/acc")


def test_the_objective_is_a_validation_metric_only() -> None:
    done = outcome("completed", 0.8, 0.5, 2, Path("run"))
    assert not [key for key in done if key.startswith("test")], "a trial's outcome carries no test metric"
    assert objective_value(done, "val/acc") == 0.8
    assert objective_value(done, "val/loss") == 0.5
    assert objective_value(outcome("completed", math.nan, math.nan, 2, Path("run")), "val/acc") is None
    assert objective_value(math.nan, "val/acc") is None  # a job that failed returns NaN
    with pytest.raises(UserError, match="validation split only"):
        objective_value(done, "test/acc")


def test_a_killed_workers_trial_is_marked_failed_and_the_study_goes_on(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "search.journal"))
    study = open_study(storage, "s", "val/acc", optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a worker that died (kill -9) while its trial ran
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1)})
    orphan.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead.pid}")
    alive = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1)})
    alive.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")

    assert fail_orphaned_trials(study) == [orphan.number]
    states = {trial.number: trial.state for trial in study.get_trials()}
    assert states == {orphan.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    study.tell(alive, 0.7)
    (chosen, failed) = study_rows(study, "val/acc")
    assert (chosen.number, chosen.chosen, failed.status) == (alive.number, True, "failed")
