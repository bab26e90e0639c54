"""``hydra/sweeper=lenet_optuna``: an Optuna search that asks its study for trials and launches them as Hydra jobs.

Each worker (this command, started in as many shells or machines as wanted) asks the shared study for a trial,
launches it through the configured Hydra launcher (in-process, joblib, SLURM), and tells the study how it ended.
The trial number travels to the job as ``hydra.sweeper.trial``, where the pruning callback finds its trial in
the storage (``lenet_lightning/search/pruning.py``) and the run folder takes its name.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import parse_overrides
from lenet_lightning.search.objective import direction_of
from lenet_lightning.search.space import as_override, extremes, search_space
from lenet_lightning.search.storage import check_storage, open_storage, storage_exists, storage_of

log = logging.getLogger(__name__)


@dataclass
class LenetOptunaSweeperConf:
    """The keys of ``hydra.sweeper``; the search configs in ``conf/hparams_search/`` set them."""

    _target_: str = "hydra_plugins.lenet_optuna_sweeper.sweeper.LenetOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner are built here and in each job, from their configs
    storage: str | None = None  # a journal file, a database URL; null: a journal file in the sweep folder
    study_name: str = "search"
    n_trials: int = 12  # trials this worker runs (others may add theirs to the same study)
    n_jobs: int = 1  # trials launched together, for launchers that run jobs side by side
    objective: str = "val/acc"  # or val/loss; a search never chooses on the test set
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    params: dict[str, Any] = field(default_factory=dict)  # key: interval(...) | range(...) | choice(...)
    trial: int | None = None  # set by the sweeper for each job: the trial it runs


ConfigStore.instance().store(group="hydra/sweeper", name="lenet_optuna", node=LenetOptunaSweeperConf, provider="lenet")


class LenetOptunaSweeper(Sweeper):
    """Ask, launch, tell: ``n_trials`` trials of the shared study, ``n_jobs`` at a time."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create({key: value for key, value in settings.items() if key != "_recursive_"})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        from lenet_lightning.search import study as studies

        settings, sweep_dir = self.settings, Path(self.config.hydra.sweep.dir)
        params, base = split_arguments(settings.params, arguments)
        space, fixed = search_space(params)
        storage = open_storage(storage_of(settings.storage, sweep_dir))
        study = studies.open_study(
            storage, settings.study_name, settings.objective, self._sampler(0), instantiate(settings.pruner)
        )
        for number in studies.fail_orphaned_trials(study):
            log.warning("trial %d was running in a worker of this machine that is gone: marked failed", number)
        base = [item for item in base if _key(item) not in fixed]
        fixed_overrides = [as_override(key, value) for key, value in fixed.items()]
        returns: list[JobReturn] = []
        while len(returns) < settings.n_trials:
            size = min(settings.n_jobs, settings.n_trials - len(returns))
            batch = [studies.ask(study, space, self._sampler) for _ in range(size)]
            jobs = [
                [
                    *base,
                    *fixed_overrides,
                    *_params(trial.params),
                    f"hydra.sweeper.trial={trial.number}",
                ]
                for trial in batch
            ]
            try:
                done = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
            except BaseException:  # Ctrl-C, SIGTERM, a job that ended the command: the trials do not stay running
                for trial in batch:
                    studies.tell(study, trial, None, settings.objective, None)
                raise
            self.job_idx += len(batch)
            for trial, job in zip(batch, done, strict=True):
                result, run_dir = _outcome_of(job)
                status = studies.tell(study, trial, result, settings.objective, run_dir)
                log.info("[search] trial %d %s: %s", trial.number, status, " ".join(_params(trial.params)))
            returns.extend(done)
        self._report(study, base, sweep_dir)
        return returns

    def _sampler(self, trial_number: int) -> Any:
        """The configured sampler, seeded from the trial number (see ``search.study.ask``)."""
        seed = self.settings.sampler.get("seed")
        return instantiate(self.settings.sampler, seed=None if seed is None else int(seed) + trial_number)

    def _report(self, study: Any, base: list[str], sweep_dir: Path) -> None:
        """The whole study so far, every worker's trials: table, counts, the chosen trial and its command."""
        from lenet_lightning.search import study as studies

        objective = self.settings.objective
        rows = studies.study_rows(study, objective)
        studies.write_study_summary(rows, objective, sweep_dir)
        counts = {status: sum(row.status == status for row in rows) for status in dict.fromkeys(r.status for r in rows)}
        log.info(
            "\nStudy %r, %d trials (%s), ranked by %s on the validation split; test acc is information only:\n\n%s",
            study.study_name,
            len(rows),
            ", ".join(f"{count} {status}" for status, count in counts.items()),
            objective,
            studies.markdown_table(rows, objective).rstrip(),
        )
        command = studies.chosen_command(rows, base)
        chosen = next((row for row in rows if row.chosen), None)
        if chosen is None or command is None:
            log.info("no trial has completed yet, so none is chosen")
            return
        log.info(
            "chosen: trial %d, %s %.4f; its run folder: %s", chosen.number, objective, chosen.value, chosen.run_dir
        )
        log.info("train the chosen hyper-parameters on the whole training set: %s", command)
        log.info("saved %s, %s in %s", studies.STUDY_CSV, studies.STUDY_MARKDOWN, sweep_dir)

    @staticmethod
    def check_before_sweep(config: DictConfig, check_job: Any) -> None:
        """Every check that can refuse the search, before its sweep folder, storage or study is written.

        ``check_job(overrides)`` composes and checks one job's config; it is run for the extremes of every searched
        key, so a range that leaves the schema (``lr`` from -1) is refused now, not in trial 7.
        """
        settings = config.hydra.sweeper
        for key in ("n_trials", "n_jobs"):
            if settings[key] < 1:
                raise UserError(f"hydra.sweeper.{key}={settings[key]} must be 1 or more")
        direction_of(settings.objective)
        if int(config.dataset.val_size) <= 0:
            raise UserError(
                f"dataset.val_size={config.dataset.val_size}: a search chooses on a validation split held out of "
                "the training set; give dataset.val_size=5000 (the search configs' default)"
            )
        params, base = split_arguments(settings.params, [str(item) for item in config.hydra.overrides.task])
        space, fixed = search_space(params)
        base = [item for item in base if _key(item) not in fixed]
        fixed_overrides = [as_override(key, value) for key, value in fixed.items()]
        for key, distribution in space.items():
            for value in extremes(distribution):
                try:
                    check_job([*base, *fixed_overrides, as_override(key, value)])
                except UserError as error:
                    raise UserError(f"the search space {key}={params[key]} reaches {error}") from None
        if settings.storage is not None:
            check_storage(settings.storage)
            if storage_exists(settings.storage):
                from lenet_lightning.search.study import check_study

                check_study(open_storage(settings.storage), settings.study_name, settings.objective)


def split_arguments(params: DictConfig, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The search space, ``hydra.sweeper.params`` with the ranges given on the command line (``'lr=interval(0.1,
    1)'``, ``batch=32,64``) added or replacing theirs, and the other overrides, which every trial gets."""
    space = dict(params)
    base = []
    for item in parse_overrides(arguments):
        if item.is_sweep_override():
            space[item.key_or_group] = item.input_line.partition("=")[2]
        else:
            base.append(item.input_line)
    return space, base


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _params(params: dict[str, Any]) -> list[str]:
    return [as_override(key, value) for key, value in params.items()]


def _outcome_of(job: JobReturn) -> tuple[Any, Path | None]:
    """What the job returned (None when it raised) and its run folder."""
    run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir) if job.hydra_cfg is not None else None
    try:
        return job.return_value, run_dir
    except Exception as error:  # the job raised: JobReturn raises it again here
        log.error("trial job failed: %s: %s", type(error).__name__, str(error).strip().splitlines()[:1])
        return None, run_dir
