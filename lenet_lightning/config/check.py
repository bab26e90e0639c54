"""When a config is checked against its schema: before a single run starts, or as each job of a sweep starts.

A single run is checked right after Hydra composes the config and before it makes a folder or writes a
file, so bad input leaves nothing behind: by the :class:`CheckConfig` Hydra callback (``hydra.callbacks`` of
``conf/{eval,predict,export}.yaml``), or for training by ``PrepareRun`` before it claims the run folder.
An error in Hydra's per-job hook would end a whole sweep, so each sweep job checks itself in its task
(:func:`check_sweep_job`), where a training sweep records the failed job and goes on with the others.
"""

from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lenet_lightning.config.command import stops_the_command
from lenet_lightning.config.schema import check_config


class CheckConfig(Callback):
    """Check a single run's composed config before anything runs; a :class:`UserError` ends the command."""

    @stops_the_command
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_config(config)


def check_sweep_job(cfg: DictConfig, *more_checks: Callable[[DictConfig], None]) -> None:
    """Check the config of a sweep job, which :class:`CheckConfig` does not see; single runs were checked already.

    ``more_checks`` are a command's rules across keys (training's ``check_run_rules``), run after the schema's.
    """
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        check_config(cfg)
        for check in more_checks:
            check(cfg)
