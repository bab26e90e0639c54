"""Where a run writes: a fresh folder of its own, or the folder of the run it resumes, checked writable first.

Hydra names run folders by the second they start in, so two runs started in the same second would
share (and overwrite) one folder; :func:`reserve_run_folder` claims a name with an atomic ``mkdir``
instead. :func:`check_writable` writes a probe before anything is trained, so a read-only or full disk
is reported at start-up rather than when the first checkpoint is saved. :class:`PrepareRunFolder`, a
Hydra callback of ``conf/train.yaml``, does both after Hydra composes the config and before it makes
the folder, for single runs only: a sweep (``-m``, or ``hydra.mode: MULTIRUN`` as in ``hparams_search``)
gets Hydra's sweep folder.
"""

import os
import shutil
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from lenet_lightning.config.command import RunAgain, stops_the_command
from lenet_lightning.config.errors import UserError
from lenet_lightning.config.schema import check_config

MIN_FREE_BYTES = 20 * 2**20  # a LeNet run writes ~2 MB (checkpoint, its temporary copy, event files)
PROBE_BYTES = 2**20


def reserve_run_folder(folder: Path) -> Path:
    """Create ``folder``, or ``folder-1``, ``folder-2``... if taken; the one created belongs to this run alone."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output folder {folder.parent}: {error.strerror or error}") from None
    for attempt in range(1000):
        candidate = folder if attempt == 0 else folder.with_name(f"{folder.name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(f"cannot create the run folder {candidate}: {error.strerror or error}") from None
    raise UserError(f"cannot find a free run folder name next to {folder}")


def check_writable(folder: Path) -> None:
    """Raise a one-line :class:`UserError` unless ``folder`` can be created and written, with room to spare."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            with probe.open("wb") as file:
                file.write(b"\0" * PROBE_BYTES)
                file.flush()
                os.fsync(file.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot write to the output folder {folder}: {error.strerror or error}; "
            "free some space or choose another folder with hydra.run.dir=..."
        ) from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"only {free / 2**20:.1f} MB free in {folder} (a run needs about {MIN_FREE_BYTES / 2**20:.0f} MB); "
            "free some space or choose another folder with hydra.run.dir=..."
        )


def overrides_of_run(folder: Path) -> list[str]:
    """The command-line overrides a run folder was started with (Hydra saves them in ``.hydra/overrides.yaml``)."""
    saved = folder / ".hydra" / "overrides.yaml"
    if not (folder / "checkpoints").is_dir() and not saved.is_file():
        raise UserError(f"resume={folder}: not a run folder (no .hydra/overrides.yaml or checkpoints/ in it)")
    if not saved.is_file():
        return []
    return [str(item) for item in OmegaConf.load(saved)]


def merge_overrides(saved: list[str], given: list[str]) -> list[str]:
    """The saved overrides of a resumed run, then the given ones; a key given now replaces its saved value.

    ``resume`` and ``ckpt_path`` of the saved run are dropped: they said where that run started from.
    """
    given_keys = set(_keys(given)) | {"resume", "ckpt_path"}
    return [override for override, key in zip(saved, _keys(saved), strict=True) if key not in given_keys] + given


def _keys(overrides: list[str]) -> list[str]:
    """The key (or config group) of each override, as Hydra parses it: ``+a.b=1`` and ``~a.b`` both mean ``a.b``."""
    try:
        return [override.key_or_group for override in OverridesParser.create().parse_overrides(overrides)]
    except OverrideParseException as error:
        raise UserError(f"cannot parse the overrides {overrides}: {str(error).splitlines()[0]}") from None


def quoted(value: str) -> str:
    """Quote a value for a Hydra override, so paths with spaces, commas or quotes pass through unchanged."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PrepareRunFolder(Callback):
    """Before a single training run starts: bring back a resumed run's overrides, check the config, claim a folder.

    Runs after Hydra composed the config and before it makes the run folder or writes into it, so a
    command line that cannot run leaves nothing behind.
    """

    @stops_the_command
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.resume:
            self._resume(config, Path(config.resume))
            check_config(config)
            check_writable(Path(config.resume))
            return
        check_config(config)
        if "hydra.run.dir" in _keys(list(config.hydra.overrides.hydra)):
            check_writable(Path(config.hydra.run.dir))  # chosen on the command line (also by Lightning's ddp)
            return
        folder = reserve_run_folder(Path(config.hydra.run.dir))
        try:
            check_writable(folder)
        except UserError:
            folder.rmdir()
            raise
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(folder)

    @stops_the_command
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.sweep.dir).parent)

    @staticmethod
    def _resume(config: DictConfig, folder: Path) -> None:
        """Run again with the resumed run's overrides, in its folder, unless this composition already has them."""
        given = [str(override) for override in config.hydra.overrides.task]
        overrides = merge_overrides(overrides_of_run(folder), given)
        if overrides != given or Path(config.hydra.run.dir) != folder:
            raise RunAgain(given, [*overrides, f"hydra.run.dir={quoted(str(folder))}"])
