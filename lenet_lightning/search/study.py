"""One study shared by every worker of a search: opened or created, its trials scored, and its summary.

The storage is the search's record: each trial carries its own outcome as user attributes (run folder, status,
validation metrics, and the test accuracy as information), so any worker, on any machine, summarises the whole
study so far, not only the trials it ran itself.
"""

import csv
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import train_command
from lenet_lightning.runs.layout import RESULT_FILE
from lenet_lightning.runs.record import UnreadableRecord, read_result
from lenet_lightning.search.objective import direction_of, objective_value
from lenet_lightning.search.space import Value, as_override
from lenet_lightning.search.storage import study_directions

WORKER_ATTR = "worker"  # "<host>:<pid>" of the sweeper process that asked for the trial
# Left out of the command that trains the chosen trial: it trains on the whole training set, outside the search.
NOT_IN_CHOSEN_COMMAND = frozenset({"hparams_search", "dataset.val_size"})
STUDY_CSV, STUDY_MARKDOWN = "study.csv", "study.md"


def check_study(storage: optuna.storages.BaseStorage, study_name: str, objective: str) -> None:
    """Refuse a study of that name that optimises in the other direction (it was made for another metric)."""
    directions = study_directions(storage, study_name)
    wanted = direction_of(objective)
    if directions is not None and [direction.name.lower() for direction in directions] != [wanted]:
        found = ", ".join(direction.name.lower() for direction in directions)
        raise UserError(
            f"study {study_name!r} in this storage is set to {found}, but hydra.sweeper.objective={objective} needs "
            f"{wanted}; give another hydra.sweeper.study_name, or the objective that study was made for"
        )


def open_study(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    objective: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study of that name, created when it is new; workers started together all get the same one."""
    check_study(storage, study_name, objective)
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction_of(objective),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Trials still running for a worker of this machine whose process is gone (killed): marked failed.

    Workers on other machines cannot be checked from here; their trials stay running until one of their own
    workers starts there again.
    """
    host = socket.gethostname()
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            trial_id = _trial_id(study, trial.number)
            study._storage.set_trial_user_attr(trial_id, "status", "failed")
            study._storage.set_trial_user_attr(trial_id, "reason", f"its worker (pid {pid}) died while it ran")
            study.tell(trial.number, state=TrialState.FAIL)
            orphans.append(trial.number)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _trial_id(study: optuna.Study, number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def ask(
    study: optuna.Study,
    space: Mapping[str, optuna.distributions.BaseDistribution],
    make_sampler: Any,
) -> optuna.trial.Trial:
    """A new trial with its hyper-parameters sampled.

    The sampler is seeded from the trial's number, which the storage hands out once: workers started at the same
    moment sample different values, and a worker alone samples the same values on every rerun.
    """
    trial = study.ask()
    study.sampler = make_sampler(trial.number)
    trial.set_user_attr(WORKER_ATTR, this_worker())
    for key, distribution in space.items():
        _suggest(trial, key, distribution)
    return trial


def _suggest(trial: optuna.trial.Trial, key: str, distribution: optuna.distributions.BaseDistribution) -> Value:
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, log=distribution.log)
    assert isinstance(distribution, optuna.distributions.CategoricalDistribution)
    return trial.suggest_categorical(key, distribution.choices)


def tell(study: optuna.Study, trial: optuna.trial.Trial, outcome: Any, objective: str, run_dir: Path | None) -> str:
    """Score a finished trial from what its job returned; its run's test accuracy is kept as information only.

    Returns the trial's status: ``completed`` and ``pruned`` are results, anything else failed.
    """
    status = str(outcome.get("status", "failed")) if isinstance(outcome, dict) else "failed"
    value = objective_value(outcome, objective)
    record = _result_of(run_dir)
    reason = str(record.get("reason", "")) if record else "the job returned no result (see its log)"
    if status == "completed" and value is None:
        status, reason = "failed", f"no {objective} to score (is dataset.val_size 0?)"
    attrs = {
        "status": status,
        "reason": reason,
        "run_dir": _display(run_dir) if run_dir is not None else "",
        "epochs": outcome.get("epochs", 0) if isinstance(outcome, dict) else 0,
        "test_acc": _finite(record.get("test_acc")) if record else None,  # information, set after scoring
    }
    for key, attr in attrs.items():
        trial.set_user_attr(key, attr)
    if status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif status == "completed":
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState.FAIL)
    return status


def _result_of(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        return read_result(run_dir / RESULT_FILE)
    except UnreadableRecord:
        return None


def _display(path: Path) -> str:
    """Relative to the working directory when below it, as users type it; absolute otherwise."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class StudyRow:
    """One trial of the study as the summary shows it."""

    number: int
    status: str
    params: dict[str, Value]
    value: float | None  # the objective: the last reported value for a pruned trial
    test_acc: float | None
    epochs: int
    run_dir: str
    chosen: bool


def study_rows(study: optuna.Study, objective: str) -> list[StudyRow]:
    """Every trial of the study, every worker's: the chosen one first, then results by the objective, then the rest."""
    trials = study.get_trials(deepcopy=False)
    best = _best_number(study)
    rows = [_row(trial, trial.number == best) for trial in trials]
    sign = -1.0 if direction_of(objective) == "maximize" else 1.0
    order = {"completed": 0, "pruned": 1, "running": 2, "waiting": 2}
    return sorted(
        rows,
        key=lambda row: (
            not row.chosen,
            order.get(row.status, 3),
            sign * row.value if row.value is not None else math.inf,
            row.number,
        ),
    )


def _best_number(study: optuna.Study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no completed trial yet
        return None


def _row(trial: FrozenTrial, chosen: bool) -> StudyRow:
    state = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    status = state.get(trial.state, trial.state.name.lower())
    if trial.state == TrialState.FAIL:
        status = str(trial.user_attrs.get("status", "failed"))
    value = trial.value
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return StudyRow(
        number=trial.number,
        status=status,
        params=dict(trial.params),
        value=value,
        test_acc=trial.user_attrs.get("test_acc"),
        epochs=int(trial.user_attrs.get("epochs", len(trial.intermediate_values))),
        run_dir=str(trial.user_attrs.get("run_dir", "")),
        chosen=chosen,
    )


def markdown_table(rows: list[StudyRow], objective: str) -> str:
    """The table people read: the objective column chose; the test column did not."""
    keys = list(dict.fromkeys(key for row in rows for key in row.params))
    header = ["trial", "status", *keys, f"{objective} (chooses)", "test acc (information)", "epochs", "run folder"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(keys) + 3) + "---|"]
    for row in rows:
        cells = [
            f"{row.number} (chosen)" if row.chosen else str(row.number),
            row.status,
            *(_shown(row.params.get(key)) for key in keys),
            _shown(row.value),
            _shown(row.test_acc),
            str(row.epochs),
            row.run_dir,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_summary(rows: list[StudyRow], objective: str, folder: Path) -> None:
    """``study.csv`` (full precision) and ``study.md`` in the worker's sweep folder."""
    keys = list(dict.fromkeys(key for row in rows for key in row.params))
    with (folder / STUDY_CSV).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trial", "status", *keys, objective, "test_acc", "epochs", "run_dir", "chosen"])
        for row in rows:
            writer.writerow(
                [
                    row.number,
                    row.status,
                    *(row.params.get(key, "") for key in keys),
                    "" if row.value is None else repr(row.value),
                    "" if row.test_acc is None else repr(row.test_acc),
                    row.epochs,
                    row.run_dir,
                    "yes" if row.chosen else "",
                ]
            )
    (folder / STUDY_MARKDOWN).write_text(f"# Study, ranked by {objective}\n\n" + markdown_table(rows, objective))


def chosen_command(rows: list[StudyRow], base_overrides: list[str]) -> str | None:
    """The command that trains the chosen hyper-parameters, with this worker's other overrides; None before any."""
    chosen = next((row for row in rows if row.chosen), None)
    if chosen is None:
        return None
    left_out = NOT_IN_CHOSEN_COMMAND | set(chosen.params)
    kept = [item for item in base_overrides if item.split("=", 1)[0].lstrip("+~") not in left_out]
    return train_command(*kept, *(as_override(key, value) for key, value in chosen.params.items()))


def _shown(value: Value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)
