"""What the console shows: our log lines, the progress, and warnings a user can act on; not dependencies' noise.

Hydra's logging configs (``conf/hydra/job_logging``, ``conf/hydra/hydra_logging``) send INFO to stdout and
WARNING and above to stderr through :class:`BelowLevel`; loading that filter imports this module, so the
noise filters below are in place in every command's process before torch or Lightning is imported.
Only the standard library is imported here: ``--help`` and bad overrides stay quick.
"""

import logging
import warnings
from typing import Any

log = logging.getLogger(__name__)

LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
TORCH_SPAWN_LOGGER = "torch.multiprocessing.spawn"
ADVERT_MARKER = "💡 Tip:"  # how Lightning 2.6 starts its litlogger and litmodels adverts


class BelowLevel(logging.Filter):
    """Pass records below ``level`` only: INFO goes to stdout while WARNING and above go to stderr alone."""

    def __init__(self, level: str = "WARNING") -> None:
        super().__init__()
        self.level = logging.getLevelName(level)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def is_not_advert(record: logging.LogRecord) -> bool:
    """Logging filter: drop Lightning's adverts for its cloud products (litlogger, litmodels)."""
    return not record.getMessage().startswith(ADVERT_MARKER)


def is_not_termination_notice(record: logging.LogRecord) -> bool:
    """Logging filter: drop torch's notice that it stops the other processes after one of them died."""
    return not record.getMessage().startswith("Terminating process")


def without_final_newline(record: logging.LogRecord) -> bool:
    """Logging filter: a captured warning's text ends with a newline; logging adds one, leaving a blank line."""
    record.msg, record.args = record.getMessage().rstrip("\n"), None
    return True


def quiet_dependency_noise() -> None:
    """Install precise filters for dependencies' messages that nobody running this project can act on.

    Filters live in the process that installs them: this runs when the module is imported, which every
    Hydra job does through its logging config and every ``ddp_spawn`` process through the training callbacks.
    """
    # Lightning 2.6's own pytree helper builds torch's deprecated LeafSpec; fixed by upgrading Lightning, not here.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Metrics are logged once per epoch, never per step, so Lightning's per-step logging interval does not apply.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Lightning advertises litlogger and litmodels on every run; the filter matches the advert lines only.
    logging.getLogger(LIGHTNING_RANK_ZERO_LOGGER).addFilter(is_not_advert)
    # When a ddp_spawn process dies torch stops the others and says so; the run's one line names the dead process.
    logging.getLogger(TORCH_SPAWN_LOGGER).addFilter(is_not_termination_notice)


def route_to_logging() -> None:
    """Once logging is configured (the root logger has handlers), send Lightning's lines and warnings through it.

    Importing ``lightning`` adds its own stderr handler ("INFO: ..." lines) to the ``lightning`` logger,
    after Hydra configured logging; removed here, Lightning's lines go where the logging config says
    (its INFO lines to the log file only). Python warnings are logged too, so the log file holds them.
    Without configured logging (a plain script) Lightning keeps its own handler.
    """
    root_handlers = logging.getLogger().handlers
    if not root_handlers:
        return
    for name in ("lightning", "lightning.pytorch"):  # lightning.pytorch adds one when imported before any config
        logger = logging.getLogger(name)
        for handler in [handler for handler in logger.handlers if handler not in root_handlers]:
            logger.removeHandler(handler)
        if not logger.handlers:
            logger.propagate = True
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(without_final_newline)


def configure_spawned_process(job_logging: dict[str, Any] | None, verbose: bool | str | list[str]) -> None:
    """Give a process started without it (``ddp_spawn``) the run's logging: same console, same log file.

    The log file is opened for appending, so the launching process and its workers write one file. Does
    not touch a process whose logging is configured already (the launching process, in-process tests).
    """
    if job_logging is not None and not logging.getLogger().handlers:
        from hydra.core.utils import configure_log
        from omegaconf import OmegaConf

        verbose_config = OmegaConf.create(verbose) if isinstance(verbose, list) else verbose
        configure_log(OmegaConf.create(job_logging), verbose_config)  # as Hydra does it, hydra.verbose included
    route_to_logging()


quiet_dependency_noise()  # at import: the logging configs and every training process import this module
