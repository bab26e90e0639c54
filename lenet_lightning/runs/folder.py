"""A run folder belongs to one run: claimed atomically, held by one process at a time, checked writable first.

Hydra names folders by the second they start in, so two runs (or two sweeps) started in the same second would
share one; :func:`reserve_run_folder` claims a name with an atomic ``mkdir`` instead. A folder named on the
command line must be empty unless the run continues in it. While a run trains, its folder holds a lock file
naming the process (:func:`hold_run_folder`), so a second writer, such as a ``resume=`` of a run still
training, is refused. :func:`check_writable` writes a probe, so a read-only or full disk is reported at start-up.
"""

import atexit
import contextlib
import errno
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

from lenet_lightning.errors import UserError
from lenet_lightning.runs.commands import first_names, override, printable, shell_word
from lenet_lightning.runs.disk import MIN_FREE_BYTES, PROBE_PREFIX, free_bytes_after_probe
from lenet_lightning.runs.layout import CHECKPOINT_DIR, HYDRA_DIR, LOCK_FILE

# Set by Lightning, torchrun and SLURM in each process of a distributed run; rank 0 claims the folder.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")
_held: set[Path] = set()  # lock files this process holds
_claimed: list[Path] = []  # run folders this process held, in order: what an interruption must mark


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
        free = free_bytes_after_probe(folder)
    except OSError as error:
        raise unwritable(folder, error) from None
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"only {free / 2**20:.1f} MB free in {folder} (a run needs about {MIN_FREE_BYTES / 2**20:.0f} MB); "
            "free some space or choose another folder with hydra.run.dir=..."
        )


def unwritable(folder: Path, error: OSError) -> UserError:
    """One line naming why ``folder`` cannot be written, with the fix for that cause (not "free some space" for all)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space or choose another folder with hydra.run.dir=..."
    elif folder.is_symlink() and not folder.exists():
        target = os.readlink(folder)
        fix = f"it is a symbolic link to {target}, which does not exist: create that or choose another folder"
    else:
        fix = "make it writable or choose another folder with hydra.run.dir=..."
    return UserError(f"cannot write to the output folder {folder}: {error.strerror or error}; {fix}")


def hold_run_folder(folder: Path) -> None:
    """Take ``folder``'s lock for this process, or raise a one-line :class:`UserError` naming the process holding it.

    The lock file, created atomically, names this process's pid and host; it is removed when the process
    exits (:func:`release_run_folder`). One left by a process that is gone (killed, crashed) is taken over.
    Holding it already is fine: the second composition of a resume claims the folder again.
    """
    lock = folder.absolute() / LOCK_FILE  # released at exit, whatever the working directory is then
    if lock in _held:
        return
    for _ in range(5):  # each pass takes the lock, refuses, or clears a stale lock and tries again
        try:
            if _try_lock(lock):
                _held.add(lock)
                if lock.parent not in _claimed:
                    _claimed.append(lock.parent)
                return
        except OSError as error:
            raise unwritable(folder, error) from None
    raise UserError(f"cannot take the lock file {lock}: other processes keep replacing it; try again")


def _try_lock(lock: Path) -> bool:
    """Create the lock file naming this process; False when a stale one was cleared (try again)."""
    try:
        descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        holder = _read_lock(lock)
        if holder is None:
            return False  # its holder removed it in the meantime
        if _holder_alive(holder):
            raise UserError(
                f"{lock.parent} is in use by another run (process {printable(holder) or 'unknown'}, lock file {lock}): "
                "wait for it to end or stop it, or train into another folder; "
                "delete the lock file only if no run uses it"
            ) from None
        _remove_stale_lock(lock, holder)
        return False
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(_this_process())
    except OSError:  # a full disk: the lock file exists but names no process, so it must go
        lock.unlink(missing_ok=True)
        raise
    return True


def release_run_folder(folder: Path) -> None:
    """Remove ``folder``'s lock file if this process holds it."""
    lock = folder.absolute() / LOCK_FILE
    if lock in _held:
        _held.discard(lock)
        if _read_lock(lock) == _this_process().strip():
            lock.unlink(missing_ok=True)


def claimed_run_folders() -> list[Path]:
    """The run folders this process has held the lock of (and may still hold), in the order it took them."""
    return list(_claimed)


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        release_run_folder(lock.parent)


def _this_process() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def _read_lock(lock: Path) -> str | None:
    """The lock file's "<pid> <host>", or None when there is no lock file."""
    try:
        return lock.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:  # not readable, or not a file: names no process
        return ""


def _holder_alive(holder: str) -> bool:
    """Whether the process a lock file names may still run: it does on this host, or it is on another host.

    A lock file that names no process (empty, damaged) counts as held: it is removed by hand, as the error says.
    """
    pid, _, host = holder.partition(" ")
    if not pid.isdigit() or not host:
        return True
    if host != socket.gethostname():
        return True  # its processes cannot be seen from here
    if int(pid) == os.getpid():
        return False  # left by an earlier process that had this pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that has ended but was not reaped (common in containers whose first process reaps no one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): a process that answers a signal counts as running
        return False
    return state in ("Z", "X")


def _remove_stale_lock(lock: Path, holder: str) -> None:
    """Remove a lock file left by a process that is gone, unless another process replaced it after it was read."""
    grave = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(lock, grave)  # atomic: of two processes clearing the same stale lock, one moves it
    except FileNotFoundError:
        return
    if _read_lock(grave) != holder:  # a live lock file took the stale one's place: put it back
        with contextlib.suppress(OSError):
            os.link(grave, lock)
    grave.unlink(missing_ok=True)


def claim_run_folder(folder: Path, continues_its_run: bool, check: Callable[[], None]) -> None:
    """Make ``folder`` this run's own: held by this process, empty unless the run continues in it, and writable.

    ``check`` runs holding the lock, when no other process replaces the run's checkpoint. Whatever fails
    leaves the folder as it was: the lock is released and the folders made here are removed.
    """
    if not continues_its_run:
        refuse_used_folder(folder)  # before anything is written
    made = _make_folder(folder)
    try:
        hold_run_folder(folder)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        if not continues_its_run:
            refuse_used_folder(folder)  # again, holding the lock: another run may have ended in it meanwhile
        check()
        check_writable(folder)
    except BaseException:
        release_run_folder(folder)
        _remove_empty(made)
        raise


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its parents; return those that were created, deepest first."""
    missing = []
    path = folder
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(folder, error) from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        with contextlib.suppress(OSError):
            path.rmdir()


def refuse_used_folder(folder: Path) -> None:
    """Raise a one-line :class:`UserError` when a new run would write into a folder that already holds files.

    A new run would replace another run's checkpoint, ``result.json`` and saved overrides, or scatter its
    files among others (``hydra.run.dir=/``). Only a lock file left by a process that is gone does not count,
    nor, in a distributed run, what the other processes of this same run wrote there first.
    """
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:  # no such folder yet, or not a folder: check_writable names the problem
        return
    others = [name for name in names if name != LOCK_FILE and not _written_by_other_ranks(name)]
    if not others:
        return
    shown = first_names(others)
    if HYDRA_DIR in others or CHECKPOINT_DIR in others:
        raise UserError(
            f"{folder} already holds a run ({shown}); continue it with {shell_word(override('resume', str(folder)))}, "
            "or give hydra.run.dir a new or empty folder"
        )
    raise UserError(f"{folder} is not empty ({shown}); a run needs a folder of its own: give hydra.run.dir a new one")


def _written_by_other_ranks(name: str) -> bool:
    """Files the other processes of a distributed run started by torchrun or SLURM write before rank 0 looks."""
    sizes = [int(os.environ[key]) for key in WORLD_SIZE_VARIABLES if os.environ.get(key, "").isdigit()]
    written_first = name == HYDRA_DIR or name.endswith(".log") or name.startswith(PROBE_PREFIX)
    return max(sizes, default=1) > 1 and written_first


def process_rank() -> int:
    """This process's rank in a distributed run (0 when it runs alone); only rank 0 claims the run folder."""
    ranks = [int(os.environ[key]) for key in RANK_VARIABLES if os.environ.get(key, "").isdigit()]
    return max(ranks, default=0)
