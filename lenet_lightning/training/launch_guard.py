"""Refuse, before any work, the one launch that cannot work: a Hydra multirun with a re-executing strategy.

Lightning's ``ddp`` starts the extra processes by running the command line again. Inside a multirun
(``-m``) that command is the whole sweep, so each new process would start a sweep of its own and the
run hangs or scatters output folders; Lightning has dropped support for the combination.
"""

from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lenet_lightning.errors import UserError

if TYPE_CHECKING:  # Lightning is imported only when a Trainer is checked, so the CLI starts fast
    import lightning as L


class ReexecutionInMultirunError(UserError):
    """A multirun job asked for a strategy that starts its processes by re-running the command."""


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def refuse_reexecution_in_multirun(trainer: "L.Trainer") -> None:
    """Raise a one-line error when this multirun job would re-run the command to start more processes.

    Asks the Trainer's own launcher, so every way of getting there is caught (``trainer=ddp``,
    ``strategy=auto`` with several devices, ...) and nothing else is: ``ddp_spawn`` and processes
    started by SLURM or torchrun have other launchers or none.
    """
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    if in_multirun() and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ReexecutionInMultirunError(
            "the ddp strategy re-runs the command for each process, which does not work inside a Hydra multirun "
            "(-m); use trainer=ddp_cpu (or trainer.strategy=ddp_spawn on GPUs) to start the processes from each job, "
            "or drop -m / run the sweep with hydra/launcher=slurm"
        )
