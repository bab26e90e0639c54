"""Checkpoint files that survive crashes and never run code when loaded.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside its target and renames it into
  place, so a kill during a save leaves the previous ``last.ckpt`` intact.
- :func:`load_checkpoint_safely` is the one check every checkpoint a user names goes through: it exists, it is
  a zip archive whose CRCs match (bit rot that leaves finite numbers is caught here), it is a Lightning
  checkpoint, and it loads with ``weights_only=True`` (a pickle payload is refused).
"""

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lenet_lightning.errors import UserError
from lenet_lightning.runs.atomic import replaced_on_success


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the target's folder, fsync, then rename over the target.

    Lightning's own save stages the file in the system temp folder and falls back to a non-atomic copy
    when that folder is on another file system (common with a local /tmp and a network output folder).
    The file gets the permissions any new file gets (the umask's), like the rest of the run folder.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        with replaced_on_success(target) as temporary, temporary.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always ``weights_only=True``: a checkpoint holds tensors and plain containers, nothing to execute.

        Also reads the bare weights files ``ddp_spawn`` passes back to the launching process.
        """
        return load_weights_only(path, map_location=map_location)


def load_checkpoint_safely(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``, or raise a one-line :class:`UserError` naming it.

    Refuses missing files, files that are not checkpoints, and checkpoints that would need to run code
    (arbitrary pickled objects) to load.
    """
    checkpoint = load_weights_only(path, map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def load_weights_only(path: _PATH, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` of any file ``torch.save`` wrote, with one-line errors naming it."""
    file = Path(path)
    if not file.is_file():
        what = "a folder, not a checkpoint file" if file.is_dir() else "no such file"
        raise UserError(f"checkpoint {file}: {what}")
    if not zipfile.is_zipfile(file):  # torch.save writes zip archives; anything else is damaged or something else
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (not a zip archive written by torch.save)")
    damaged = damaged_member(file)
    if damaged:
        raise UserError(
            f"checkpoint {file} is damaged ({damaged} fails its CRC check): the file changed after it was written; "
            "use another checkpoint or train again"
        )
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UserError(
                f"checkpoint {file} was refused: it holds pickled objects other than tensors and plain "
                "containers, which could run code when loaded; only load checkpoints from sources you trust"
            ) from None
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (or is damaged): {error}") from None
    except Exception as error:  # torch.load raises whatever its parser trips on for a non-checkpoint file
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"checkpoint {file} is not a PyTorch checkpoint (or is damaged): {first_line}") from None


def finished_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs a checkpoint holds: Lightning saves it at the end of an epoch, under that epoch's 0-based index."""
    return int(checkpoint.get("epoch", -1)) + 1


def damaged_member(file: Path) -> str | None:
    """The first entry of the checkpoint's zip archive whose bytes no longer match their CRC, if any.

    ``torch.load`` does not check the CRCs, so a flipped bit in a tensor would load as a slightly other weight.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"its archive ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
