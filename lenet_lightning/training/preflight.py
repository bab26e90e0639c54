"""Every check that can refuse a training command, run before Hydra makes a folder or writes a file.

:class:`PrepareRun` is a Hydra callback (``hydra.callbacks`` of ``conf/train.yaml``). For a single run it checks
the composed config against its schema and the rules that span several keys (:func:`check_run_rules`), checks
the checkpoint the run starts from, then claims the run folder; for a sweep it checks every job's config the
same way before the sweep folder is made. A refusal is one line and exit status 2, and leaves nothing behind.

Torch is imported only once the schema has passed (the rules read data files and may ask for a GPU), so a
mistyped value is refused in about a second.
"""

import math
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from lenet_lightning.config.command import stops_the_command
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.config.schema import check_config
from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import override, override_keys, parse_overrides, quoted, shell_word
from lenet_lightning.runs.folder import (
    check_writable,
    claim_run_folder,
    process_rank,
    release_run_folder,
    reserve_run_folder,
)
from lenet_lightning.runs.layout import LAST_CHECKPOINT, RUN_CONFIG, is_run_folder
from lenet_lightning.runs.resume import start_checkpoint
from lenet_lightning.runs.sweep_folder import check_earlier_job, claim_sweep_folder

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SHARED_BY_JOBS = ("data_dir", "dataset.data_dir")  # what no job's folder name says (override_dirname leaves it out)


def check_run_rules(cfg: DictConfig) -> None:
    """The rules a schema cannot say, because they span several keys or need the training set's size."""
    batch_size, batch_norm = int(cfg.dataset.batch_size), bool(cfg.model.batch_norm)
    if batch_norm and batch_size < 2:
        raise UserError(
            f"dataset.batch_size={batch_size} cannot train a model with batch norm, which needs at least "
            "2 examples per batch; use dataset.batch_size=2 or more, or model.batch_norm=false"
        )
    examples = training_examples(cfg)
    val_size = int(cfg.dataset.val_size)
    if val_size >= examples:
        raise UserError(
            f"dataset.val_size={val_size} leaves no training examples (the training set has {examples}); "
            f"use a dataset.val_size below {examples}"
        )
    processes = training_processes(cfg)
    share = math.ceil((examples - val_size) / processes)  # each process's part of the training set, padded equal
    if batch_norm and share < 2:
        among = f", shared among {processes} training processes" if processes > 1 else ""
        raise UserError(
            f"batch norm needs at least 2 examples per batch, but dataset.val_size={val_size} leaves "
            f"{examples - val_size} training example(s){among}; "
            "use a smaller dataset.val_size or model.batch_norm=false"
        )
    schedule = cfg.scheduler
    if schedule.get("name") == "onecycle":
        full, remainder = divmod(examples - val_size, batch_size)  # a last batch of one joins the one before it
        steps = (full + (1 if remainder > 1 or (remainder == 1 and not full) else 0)) * int(cfg.trainer.max_epochs)
        limit = cfg.trainer.get("limit_train_batches")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            steps = min(limit, steps // int(cfg.trainer.max_epochs)) * int(cfg.trainer.max_epochs)
        if float(schedule.pct_start) * steps - 1 == 0:  # OneCycleLR would divide by zero
            raise UserError(
                f"scheduler=onecycle cannot warm up over exactly one of this run's {steps} optimizer steps "
                f"(scheduler.pct_start={schedule.pct_start}); change scheduler.pct_start, epochs or dataset.batch_size"
            )
    if cfg.cuda_graph:
        from lenet_lightning.speed.cuda_graph import refuse_unsupported_cuda_graph  # asks torch for a GPU

        refuse_unsupported_cuda_graph(cfg)


def training_processes(cfg: DictConfig) -> int:
    """How many processes share the training set: devices (a count or a list) times nodes; ``auto`` counts as one,
    as it is on a CPU (on GPUs it means every visible one, which this torch-free check cannot count)."""
    devices = cfg.trainer.get("devices", 1)
    per_node = len(devices) if isinstance(devices, ListConfig | list) else devices if isinstance(devices, int) else 1
    return max(1, per_node) * max(1, int(cfg.trainer.get("num_nodes", 1) or 1))


def training_examples(cfg: DictConfig) -> int:
    """The training set's size from its label file's header, or the official size when it is still to download."""
    from lenet_lightning.data.datamodule import DATASETS
    from lenet_lightning.data.files import OFFICIAL_COUNTS, check_idx_file

    folder = DATASETS[cfg.dataset.name].__name__
    labels = Path(cfg.dataset.data_dir) / folder / "raw" / "train-labels-idx1-ubyte"
    return check_idx_file(labels, folder) if labels.is_file() else OFFICIAL_COUNTS["train"]


def refuse_undecodable_name(folder: Path, key: str) -> None:
    """A folder name the locale could not decode (non-ASCII under ``LANG=C``): TensorBoard cannot write there."""
    try:
        str(folder).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"{key}={str(folder).encode('utf-8', 'backslashreplace').decode()} has characters this locale cannot "
            "read (LANG/LC_ALL is ASCII); run with LANG=C.UTF-8, or give an ASCII folder name"
        ) from None


def check_job(cfg: DictConfig) -> None:
    """Everything decided from one job's composed config: its schema, then the rules across keys."""
    check_config(cfg)
    check_run_rules(cfg)


class PrepareRun(Callback):
    """Before a training run or sweep starts: check everything, then claim a folder of its own."""

    @stops_the_command
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.resume == "":  # an unset shell variable, say: training afresh instead would hide the mistake
            raise UserError("resume= names no run folder; give resume=outputs/runs/<date>/<time>")
        run_dir = Path(config.hydra.run.dir)
        if config.resume and Path(config.resume).resolve() != run_dir.resolve():
            raise UserError(
                f"{override('resume', config.resume)} must be given on the command line of the train command"
            )
        check_job(config)
        refuse_undecodable_name(run_dir, "hydra.run.dir")
        start = start_checkpoint(config.ckpt_path, config.resume, run_dir)
        if config.resume and start is None and config.callbacks.get("model_checkpoint") is None:
            raise UserError(
                f"{override('resume', config.resume)}: the run was trained with callbacks.model_checkpoint=null, so it "
                "has no checkpoint to continue from; train a new run in a new folder"
            )

        def check_start() -> None:
            if start is not None:
                from lenet_lightning.runs.checkpoint_fit import check_checkpoint_fits  # loads it with torch

                key = "resume" if config.resume else "ckpt_path"
                check_checkpoint_fits(start, config, override(key, str(config[key])), run_dir)

        if process_rank() != 0:  # another process of a distributed run, whose rank 0 claims the folder
            check_start()  # the same answer as rank 0's, so that no process waits for others that stopped
            check_writable(run_dir)
            return
        if config.resume or "hydra.run.dir" in override_keys(overrides_as_given(config.hydra.overrides.hydra)):
            in_folder = start is not None and start.resolve().is_relative_to(run_dir.resolve())
            continues = bool(config.resume) or in_folder or (config.ckpt_path == "last" and is_run_folder(run_dir))
            claim_run_folder(run_dir, continues_its_run=continues, check=check_start)
            return
        check_start()  # a checkpoint from elsewhere, checked before a folder is made for the run
        folder = reserve_run_folder(run_dir)
        try:
            claim_run_folder(folder, continues_its_run=False, check=lambda: None)
        except BaseException:
            folder.rmdir()
            raise
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(folder)

    @stops_the_command
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.resume:
            raise UserError(
                f"{override('resume', config.resume)} continues one run in its own folder and cannot be part of a "
                "sweep (-m, hparams_search): drop -m, or sweep runs that each start from its checkpoint with "
                f"{shell_word(override('ckpt_path', str(Path(config.resume) / LAST_CHECKPOINT)))}"
            )
        jobs = check_sweep_jobs(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        refuse_undecodable_name(sweep_dir, "hydra.sweep.dir")
        if "hydra.sweep.dir" in override_keys(overrides_as_given(config.hydra.overrides.hydra)):
            check_earlier_jobs(sweep_dir, config, jobs)  # before the folder is claimed: a refusal leaves no lock
            claim_sweep_folder(sweep_dir, str(config.hydra.job.name))  # held until the sweep's process ends
            return
        folder = reserve_run_folder(sweep_dir)  # two sweeps started in the same second get folders of their own
        try:
            check_writable(folder)
        except UserError:
            folder.rmdir()
            raise
        with read_write(config.hydra):
            config.hydra.sweep.dir = str(folder)
            # Each job's config is composed again from these overrides: they must name the folder too.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(str(folder))}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_run_folder(Path(config.hydra.sweep.dir))  # also released when the process exits, however it ends


def check_sweep_jobs(config: DictConfig) -> list[tuple[str, DictConfig, str | None]]:
    """Compose and check each job of a grid sweep (``-m a=1,2``) before the sweep makes its folder.

    Returns each job's overrides, config and folder name (``hydra.sweep.subdir``; None when it is known only as the
    job runs). Other sweepers choose their jobs as they go (Optuna): those check the sweep's own config here, and
    each job checks itself as it starts; none is returned. A sweeper class with a
    ``check_before_sweep(config, check_job)`` checks its own settings then (the project's Optuna sweeper: storage,
    study, search space), given a way to check a job.
    """
    target = config.hydra.sweeper.get("_target_")
    if target != BASIC_SWEEPER:
        check_job(config)
        check_own = getattr(get_class(target), "check_before_sweep", None)
        if check_own is not None:
            check_own(config, lambda overrides: check_job(composed_job(config.hydra.job.config_name, overrides)))
        return []
    task = overrides_as_given(config.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(parse_overrides(task), max_batch_size=None)
    jobs = []
    for job in (job for batch in batches for job in batch):
        hydra_overrides = overrides_as_given(config.hydra.overrides.hydra)  # hydra.sweep.subdir=..., say
        composed = composed_job(config.hydra.job.config_name, [*job, *hydra_overrides])
        subdir = job_folder_name(composed)
        with open_dict(composed):
            del composed["hydra"]
        try:
            check_job(composed)
        except UserError as error:
            raise UserError(f"sweep job {' '.join(job)}: {error}") from None
        jobs.append((" ".join(job), composed, None if subdir is None else str(subdir)))
    refuse_shared_job_folders(jobs)
    return jobs


def overrides_as_given(overrides: ListConfig) -> list[str]:
    """Override strings as typed: ``hydra.sweep.subdir=job${hydra.job.num}`` is text here, not resolved."""
    return [str(item) for item in OmegaConf.to_container(overrides, resolve=False)]


def job_folder_name(composed: DictConfig) -> str | None:
    """The job's folder name in the sweep, when the config alone tells it (not for names made of the job's number)."""
    raw = str(OmegaConf.to_container(composed.hydra.sweep, resolve=False).get("subdir"))
    if "job.num" in raw or "job.id" in raw:
        return None  # known only as Hydra launches the job
    return OmegaConf.select(composed, "hydra.sweep.subdir", default=None, throw_on_resolution_failure=False)


def refuse_shared_job_folders(jobs: list[tuple[str, DictConfig, str | None]]) -> None:
    """Two jobs named alike (``hydra.sweep.subdir`` leaves out ``data_dir``) would train into one folder."""
    seen: dict[str, str] = {}
    for job, _, subdir in jobs:
        if subdir is None:
            continue
        if subdir in seen:
            raise UserError(
                f"sweep jobs {seen[subdir]} and {job} would share the run folder {subdir} (folder names leave out "
                "data_dir): sweep one data folder at a time, or give each its own hydra.sweep.dir"
            )
        seen[subdir] = job


def check_earlier_jobs(sweep_dir: Path, config: DictConfig, jobs: list[tuple[str, DictConfig, str | None]]) -> None:
    """In an earlier sweep's folder, every job folder there must hold a run of the config its job trains now.

    A job whose folder name is known is compared whole; otherwise the runs there are compared with the sweep's
    own config on what its jobs share (the data).
    """
    if not sweep_dir.is_dir() or is_run_folder(sweep_dir):
        return  # new, or refused as a run folder when it is claimed
    named = [(job, cfg, sweep_dir / subdir) for job, cfg, subdir in jobs if subdir]
    for job, cfg, folder in named:
        check_earlier_job(folder, cfg, job)
    if len(named) < len(jobs) or not jobs:
        sweep = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        for saved in sorted(sweep_dir.glob(f"*/{RUN_CONFIG}")):
            check_earlier_job(saved.parent.parent, sweep, saved.parent.parent.name, keys=SHARED_BY_JOBS)


def composed_job(config_name: str, overrides: list[str]) -> DictConfig:
    """One sweep job's config with its ``hydra`` node, as Hydra will compose it (from ``conf/`` without Hydra)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
