"""Where a run writes: a fresh folder of its own, or the folder of the run it resumes, checked writable first.

Hydra names run folders by the second they start in, so two runs started in the same second would
share (and overwrite) one folder; :func:`reserve_run_folder` claims a name with an atomic ``mkdir``
instead. :func:`check_writable` writes a probe before anything is trained, so a read-only or full disk
is reported at start-up rather than when the first checkpoint is saved.
"""

import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from lenet_lightning.config.errors import UserError

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
    """The saved overrides of a resumed run, then the given ones; a key given now replaces its saved value."""
    given_keys = {override.split("=", 1)[0].lstrip("+~") for override in given}
    kept = [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in given_keys | {"resume", "ckpt_path"}]
    return kept + given


def quoted(value: str) -> str:
    """Quote a value for a Hydra override, so paths with spaces, commas or quotes pass through unchanged."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
