"""Where eval, predict and export may write: the one place that says which outputs are allowed, and how.

Checked before any work, so a refused output costs a second and leaves nothing behind. Strictest first:

- never a file the command reads (the checkpoint, the run config, a data file, a picture), however it is
  reached (symbolic links and hard links are compared as the files they are);
- never a symbolic link or a special file (a device, a pipe, a socket): a rename over it would replace the
  link or the device itself, not write to what it names;
- never, even with ``overwrite=true``, part of a run's record or of a data set: anything in a ``.hydra/``
  folder or in another run's ``checkpoints/``, a ``result.json``, a run's log or lock, TensorBoard event
  files, a data-set file (named like an IDX file, or anywhere in the data set's folder); eval never writes
  into a run folder itself, where its events and projector would mix with the run's;
- an output that exists and is not this command's own earlier output, only with ``overwrite=true``;
- only where a probe can be written and the free space training asks for is there.

A command deletes only files it writes itself: an output folder holding a file eval would delete without
writing it (a projector of another step) is refused. A disk that fills while the output is written ends in
one line too (:func:`written_in_full`), with the files the command had created removed.
"""

import contextlib
import errno
import fnmatch
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lenet_lightning.errors import UserError
from lenet_lightning.runs.disk import (
    DISK_ERRORS,
    MIN_FREE_BYTES,
    disk_errors_of_threads,
    free_bytes_after_probe,
    is_disk_error,
)
from lenet_lightning.runs.layout import (
    CHECKPOINT_DIR,
    EVENT_FILES,
    HYDRA_DIR,
    LOCK_FILE,
    RESULT_FILE,
    is_run_folder,
)

# (what it is, the file), e.g. ("the checkpoint", Path("run/checkpoints/last.ckpt"))
FilesRead = Iterable[tuple[str, Path]]
IsOwnOutput = Callable[[Path], bool]
IDX_NAMES = ("*-idx?-ubyte", "*-idx?-ubyte.gz")  # MNIST's files, as torchvision keeps them
NEVER = "which eval, predict and export never write, even with overwrite=true; pass another output="


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


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (a device, a pipe...), else None."""
    try:
        mode = path.lstat().st_mode
    except OSError:  # nothing there
        return None
    kinds = {
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), None)


def refuse_link_or_special(path: Path, where: str, what: str = "file", fix: str = "") -> None:
    """Raise when ``path`` is a symbolic link (named with its target) or a special file (named by its kind)."""
    kind = special_kind(path)
    if kind == "a symbolic link":
        raise UserError(f"{where} is a symbolic link to {os.readlink(path)}; {fix or f'name the {what} itself'}")
    if kind is not None:
        raise UserError(f"{where} is {kind}, not a regular {what}; {fix or f'name a {what}: output=<{what}>'}")


def is_runs_checkpoints(folder: Path) -> bool:
    """A ``checkpoints/`` folder of a run: beside Hydra's record or a ``result.json``, or holding checkpoints."""
    if folder.name != CHECKPOINT_DIR or not is_run_folder(folder.parent):
        return False
    run = folder.parent
    return (run / HYDRA_DIR).is_dir() or (run / RESULT_FILE).is_file() or any(folder.glob("*.ckpt"))


def record_part(path: Path, data_folders: Iterable[Path] = (), home: Path | None = None) -> str | None:
    """What part of a run's record or of a data set ``path`` is, in words, or None when it is neither.

    ``home``: the folder of the checkpoint the command reads, where its own files may go (export's default
    is beside the checkpoint); any other run's ``checkpoints/`` is another run's.
    """
    real = path.parent.resolve() / path.name  # a link as the last part is refused on its own
    for folder in (real, *real.parents):
        if folder.name == HYDRA_DIR:
            return f"in {folder}, Hydra's record of a run"
        if is_runs_checkpoints(folder) and (home is None or folder != home.resolve()):
            return f"in {folder}, the checkpoints of a run"
    if real.name == RESULT_FILE:
        return f"a run's record ({RESULT_FILE})"
    if fnmatch.fnmatch(real.name, EVENT_FILES):
        return "a TensorBoard event file"
    if is_run_folder(real.parent) and (real.suffix == ".log" or real.name == LOCK_FILE):
        return f"the {'log' if real.suffix == '.log' else 'lock'} of the run {real.parent}"
    if any(fnmatch.fnmatch(real.name, pattern) for pattern in IDX_NAMES):
        return "a data-set file (named like an IDX file)"
    for data in data_folders:
        if real.is_relative_to(data.resolve()):
            return f"in the data set's folder {data}"
    return None


def check_writable(folder: Path, where: str) -> None:
    """Raise unless files can be created in ``folder`` (or the nearest folder above it that exists), with room.

    The probe and the free space asked for are training's (``runs/disk.py``).
    """
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {where}: {existing} is a file, not a folder; pass another output=")
    try:
        free = free_bytes_after_probe(existing)
    except OSError as error:
        raise unwritable(where, existing, error) from None
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"cannot write {where}: only {free / 2**20:.1f} MB free in {existing} (about "
            f"{MIN_FREE_BYTES / 2**20:.0f} MB needed); free some space or pass output= another place"
        )


def unwritable(where: str, folder: Path, error: OSError) -> UserError:
    """One line naming why ``folder`` cannot be written, with the fix for that cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"cannot write {where}: {DISK_ERRORS[error.errno]} in {folder} ({error.strerror}); "
            "free some space or pass output= another place"
        )
    return UserError(
        f"cannot write {where}: {folder} is not writable ({error.strerror}); pass output= a writable place"
    )


def check_output_file(
    path: Path,
    files_read: FilesRead,
    named: bool,
    is_own_output: IsOwnOutput | None = None,
    *,
    overwrite: bool = False,
    data_folders: Iterable[Path] = (),
    home: Path | None = None,
) -> None:
    """Refuse, before any work, an output file that breaks a rule of this module (see its docstring).

    ``named``: the user typed this path as ``output=``. ``is_own_output`` recognises this command's earlier
    output, which is replaced without ``overwrite``. ``data_folders`` and ``home`` as in :func:`record_part`.
    """
    where = described(path, named)
    refuse_inputs(path, files_read, where)
    refuse_link_or_special(path, where)
    if path.is_dir():
        raise UserError(f"{where} is a folder; name a file: output={path}/<file>")
    exists = path.exists()
    own = exists and is_own_output is not None and is_own_output(path)
    part = record_part(path, data_folders, home if own or not exists else None)
    if part is not None:
        beside_checkpoint = home is not None and path.parent.resolve() == home.resolve()
        if exists and beside_checkpoint and is_runs_checkpoints(home.resolve()):
            raise UserError(
                f"{where} already exists and was not written by this command; files in a run's checkpoints folder "
                "are never replaced, even with overwrite=true: pass another output=<file>"
            )
        raise UserError(f"{where} is {part}, {NEVER}")
    if exists and not own and not overwrite:
        raise UserError(
            f"{where} already exists and was not written by this command; pass overwrite=true to replace it, "
            "or another output=<file>"
        )
    check_writable(path.parent, where)


def check_output_folder(
    folder: Path,
    names: Iterable[str],
    files_read: FilesRead,
    named: bool,
    is_own_output: IsOwnOutput | None = None,
    *,
    overwrite: bool = False,
    data_folders: Iterable[Path] = (),
    removes: Iterable[str] = (),
) -> None:
    """Refuse, before any work, an output folder that breaks a rule of this module (see its docstring).

    ``names`` are the files the command writes there, ``removes`` those it deletes there, both relative to
    ``folder`` (some in sub-folders of their own); it may delete only files it writes.
    """
    where = described(folder, named)
    refuse_link_or_special(folder, where, "folder")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{where} is a file, but this command writes a folder of results; pass output=<folder>")
    part = record_part(folder, data_folders)
    if part is not None:
        raise UserError(f"{where} is {part}, {NEVER}")
    if is_run_folder(folder):
        raise UserError(
            f"{where} is a training run's folder, where eval's TensorBoard events, figures and projector would mix "
            f"with the run's; even with overwrite=true, pass output={folder / 'eval' / '<name>'} or leave output= out"
        )
    files_read, names = list(files_read), list(names)
    for name in names:
        path = folder / name
        refuse_inputs(path, files_read, f"{where} (its {name})")
        blocking = next((folder / part for part in Path(name).parents if (folder / part).is_file()), None)
        if blocking is not None:
            raise UserError(f"{where}: its {name} cannot be written, {blocking} is a file; pass another output=")
        refuse_link_or_special(path, f"{where}: its {name}", fix="pass another output=")
        if path.is_dir():
            raise UserError(f"{where}: its {name} cannot be written, it is a folder; pass another output=")
    foreign = [name for name in removes if name not in names]
    if foreign:
        raise UserError(
            f"{where} holds {folder / foreign[0]}, which this command would delete without writing it again; "
            "pass output= a folder of its own"
        )
    used = folder.is_dir() and any(folder.iterdir())
    if used and not overwrite and (is_own_output is None or not is_own_output(folder)):
        raise UserError(
            f"{where} already holds files that were not written by this command; pass overwrite=true to write "
            "there (its files of the same names are replaced), or another output=<folder>"
        )
    check_writable(folder, where)


@contextlib.contextmanager
def written_in_full(where: str, folder: Path | None = None) -> Iterator[None]:
    """A full disk, a used-up quota or a read-only file system met while writing become one line (exit 2).

    ``folder``: where the block writes; the files and folders it created there are removed when it fails so
    (it deletes only what it wrote itself). Temporary files of atomic writes remove themselves. TensorBoard
    writes its events from a thread of its own, which prints a traceback when the disk is full before the
    error reaches this thread: that traceback is left out, and the error raised here if it did not arrive.
    """
    before = set(folder.rglob("*")) if folder is not None and folder.is_dir() else set()
    missing = [] if folder is None else [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        with disk_errors_of_threads() as in_threads:
            yield
            if in_threads:
                raise in_threads[0]
    except OSError as error:
        if not is_disk_error(error):
            raise
        for thread in threading.enumerate():  # a failed writer thread ends (and reports) before the hook goes
            if thread is not threading.current_thread() and getattr(thread, "exception", None) is not None:
                thread.join(timeout=5)
        if folder is not None:
            remove_created(folder, before, missing)
        fix = "" if error.errno == errno.EROFS else "free some space or "
        raise UserError(
            f"cannot write {where}: {DISK_ERRORS[error.errno]} ({error.strerror}); {fix}pass output= another place"
        ) from None


def remove_created(folder: Path, before: set[Path], missing: list[Path]) -> None:
    """Remove what was created under ``folder`` since ``before`` was listed, and the folders in ``missing``."""
    created = sorted(set(folder.rglob("*")) - before, key=lambda path: len(path.parts), reverse=True)
    for path in [*created, *missing]:  # deepest first, so that folders are empty when their turn comes
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
