"""Where eval, predict and export may write: never over a file they read or a file the user made, only where it works.

Checked before any work, so a refused output costs a second and leaves nothing behind. The rule: nothing a user
made is overwritten unless they asked for exactly that. Naming ``output=`` counts as asking, except when it
names a file the command reads (the checkpoint, the run config, a data file, a picture): that is always
refused, whatever the path looks like (symbolic links and hard links are compared as the files they are). A
default output that already exists is replaced only when it is this tool's own earlier output.
"""

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from lenet_lightning.errors import UserError

# (what it is, the file), e.g. ("the checkpoint", Path("run/checkpoints/last.ckpt"))
FilesRead = Iterable[tuple[str, Path]]


def same_file(a: Path, b: Path) -> bool:
    """True when both paths reach one file on disk, through symbolic links, hard links or ``..`` alike."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (or cannot be reached): then nothing there can be overwritten
        return False


def described(path: Path, named: bool) -> str:
    """How an error names an output: as the user typed it, or as the default the command chose."""
    return f"output={path}" if named else f"the default output {path}"


def refuse_inputs(path: Path, files_read: FilesRead, where: str) -> None:
    """Raise when writing ``path`` would replace a file the command reads."""
    for role, read in files_read:
        if same_file(path, read):
            raise UserError(f"{where} would overwrite {role} {read}, which this command reads; pass another output=")


def check_writable(folder: Path, where: str) -> None:
    """Raise unless files can be created in ``folder`` (or in the nearest folder above it that exists).

    A probe file says it for every cause at once (permissions, a read-only mount, root squashing on a network
    share), where ``os.access`` can be wrong; it is never linked into the folder, so nothing is left behind.
    """
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {where}: {existing} is a file, not a folder; pass another output=")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write {where}: {existing} is not writable ({error.strerror}); pass output= a writable place"
        ) from None


def check_output_file(
    path: Path, files_read: FilesRead, named: bool, is_own_output: Callable[[Path], bool] | None = None
) -> None:
    """Refuse, before any work, an output that is no regular file, an input, someone else's file, or unwritable.

    ``named``: the user typed this path as ``output=``. An existing file at a default path is replaced only
    when ``is_own_output`` recognises it as this command's earlier output.
    """
    where = described(path, named)
    if path.is_dir():
        raise UserError(f"{where} is a folder; name a file: output={path}/<file>")
    if path.exists() and not path.is_file():  # renaming a file over /dev/null or a pipe would replace the device
        raise UserError(f"{where} is not a regular file (a device, pipe or socket); name a file: output=<file>")
    refuse_inputs(path, files_read, where)
    if not named and path.exists() and (is_own_output is None or not is_own_output(path)):
        raise UserError(
            f"{where} already exists and was not written by this command; pass output={path} to replace it, "
            "or another output=<file>"
        )
    check_writable(path.parent, where)


def check_output_folder(folder: Path, names: Iterable[str], files_read: FilesRead, named: bool) -> None:
    """Refuse, before any work, an output folder that is a file, would replace an input, or is unwritable.

    ``names`` are the files the command writes there, relative to ``folder`` (some in sub-folders of their own).
    """
    where = described(folder, named)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{where} is a file, but this command writes a folder of results; pass output=<folder>")
    files_read = list(files_read)
    for name in names:
        path = folder / name
        refuse_inputs(path, files_read, f"{where} (its {name})")
        blocking = next((folder / part for part in Path(name).parents if (folder / part).is_file()), None)
        if blocking is not None:
            raise UserError(f"{where}: its {name} cannot be written, {blocking} is a file; pass another output=")
        if path.is_dir():
            raise UserError(f"{where}: its {name} cannot be written, it is a folder; pass another output=")
    check_writable(folder, where)
