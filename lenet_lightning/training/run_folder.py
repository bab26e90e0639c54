"""Where a run writes: a folder of its own, written by one process at a time, checked writable first.

A run folder belongs to one run. Hydra names folders by the second they start in, so two runs (or two
sweeps) started in the same second would share one; :func:`reserve_run_folder` claims a name with an
atomic ``mkdir`` instead. A folder named on the command line (``hydra.run.dir``) must be empty unless the
run continues from a checkpoint in it (``resume=``, ``ckpt_path=last``). While a run trains, its folder
holds a lock file naming the process (:func:`hold_run_folder`), so a second writer, such as a ``resume=``
of a run still training, is refused. :func:`check_writable` writes a probe, so a read-only or full disk is
reported at start-up. :class:`PrepareRunFolder`, a Hydra callback of ``conf/train.yaml``, does all this
after Hydra composes the config and before it makes the folder or writes into it: a refused command line
leaves nothing behind, and a refused resume never rewrites the run's saved overrides.

Every command line printed here can be pasted back: :func:`override` writes a value as Hydra's override
grammar reads it back, :func:`shell_word` quotes for the shell, and :func:`hydra_safe_arguments` lets users
type ``resume=<folder>`` with any folder name (sweep job folders are named ``epochs=2,lr=0.3``).
"""

import atexit
import contextlib
import os
import secrets
import shlex
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from lenet_lightning.config.command import RunAgain, stops_the_command
from lenet_lightning.config.errors import UserError
from lenet_lightning.config.schema import check_config

MIN_FREE_BYTES = 20 * 2**20  # a LeNet run writes ~2 MB (checkpoint, its temporary copy, event files)
PROBE_BYTES = 2**20
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK_FILE = ".lock"  # "<pid> <host>" of the process writing the folder; removed when it exits
PATH_KEYS = ("resume", "ckpt_path", "hydra.run.dir", "hydra.sweep.dir")  # file and folder names, taken literally
NOT_SAVED_ON_RESUME = ("resume", "ckpt_path", "hparams_search")  # how the saved run was started, not what it is
# Set by Lightning, torchrun and SLURM in each process of a distributed run; rank 0 claims the folder.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")
COMMAND = "python -m lenet_lightning.train"
_held: set[Path] = set()  # lock files this process holds


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
        raise unwritable(folder, error) from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"only {free / 2**20:.1f} MB free in {folder} (a run needs about {MIN_FREE_BYTES / 2**20:.0f} MB); "
            "free some space or choose another folder with hydra.run.dir=..."
        )


def unwritable(folder: Path, error: OSError) -> UserError:
    return UserError(
        f"cannot write to the output folder {folder}: {error.strerror or error}; "
        "free some space or choose another folder with hydra.run.dir=..."
    )


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
                f"{lock.parent} is in use by another run (process {holder or 'unknown'}, lock file {lock}): wait for "
                "it to end or stop it, or train into another folder; delete the lock file only if no run uses it"
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
    shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
    if ".hydra" in others or "checkpoints" in others:
        raise UserError(
            f"{folder} already holds a run ({shown}); continue it with {shell_word(override('resume', str(folder)))}, "
            "or give hydra.run.dir a new or empty folder"
        )
    raise UserError(f"{folder} is not empty ({shown}); a run needs a folder of its own: give hydra.run.dir a new one")


def _written_by_other_ranks(name: str) -> bool:
    """Files the other processes of a distributed run started by torchrun or SLURM write before rank 0 looks."""
    sizes = [int(os.environ[key]) for key in WORLD_SIZE_VARIABLES if os.environ.get(key, "").isdigit()]
    return max(sizes, default=1) > 1 and (name == ".hydra" or name.endswith(".log") or name.startswith(".write-probe-"))


def process_rank() -> int:
    """This process's rank in a distributed run (0 when it runs alone); only rank 0 claims the run folder."""
    ranks = [int(os.environ[key]) for key in RANK_VARIABLES if os.environ.get(key, "").isdigit()]
    return max(ranks, default=0)


def start_checkpoint(ckpt_path: str | None, resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint file a run continues from, if there is one: as ``checkpoint_to_resume`` will pick it."""
    if ckpt_path not in (None, "", "last"):
        return Path(ckpt_path)
    if resume is None and ckpt_path != "last":
        return None
    last = output_dir / LAST_CHECKPOINT
    return last if last.is_file() else None


def overrides_of_run(folder: Path) -> list[str]:
    """The command-line overrides a run folder was started with (Hydra saves them in ``.hydra/overrides.yaml``)."""
    saved = folder / ".hydra" / "overrides.yaml"
    if not (folder / "checkpoints").is_dir() and not saved.is_file():
        raise UserError(
            f"{override('resume', str(folder))}: not a run folder (no .hydra/overrides.yaml or checkpoints/ in it)"
        )
    if not saved.is_file():
        return []
    return [str(item) for item in OmegaConf.load(saved)]


def merge_overrides(saved: list[str], given: list[str]) -> list[str]:
    """The saved overrides of a resumed run, then the given ones; a key given now replaces its saved value.

    ``resume`` and ``ckpt_path`` of the saved run are dropped: they said where that run started from; so is
    ``hparams_search``, which made the run one trial of a search: resumed, it is a single run.
    """
    given_keys = set(_keys(given)) | set(NOT_SAVED_ON_RESUME)
    return [override for override, key in zip(saved, _keys(saved), strict=True) if key not in given_keys] + given


def _parsed(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise UserError(f"cannot parse the overrides {overrides}: {str(error).splitlines()[0]}") from None


def _keys(overrides: list[str]) -> list[str]:
    """The key (or config group) of each override, as Hydra parses it: ``+a.b=1`` and ``~a.b`` both mean ``a.b``."""
    return [override.key_or_group for override in _parsed(overrides)]


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value: any characters, read back unchanged.

    In Hydra's quoted strings a backslash escapes only a quote or the backslashes before one (or before the
    closing quote); every other backslash is taken as it is.
    """
    escaped = []
    backslashes = 0
    for character in value:
        if character == "\\":
            backslashes += 1
            continue
        escaped.append("\\" * (backslashes * (2 if character == "'" else 1)))
        escaped.append("\\'" if character == "'" else character)
        backslashes = 0
    escaped.append("\\" * (backslashes * 2))  # before the closing quote
    return "'" + "".join(escaped) + "'"


def override(key: str, value: str) -> str:
    """``key=value`` that Hydra reads back with exactly ``value``: quoted only when it has to be."""
    try:
        (parsed,) = _parsed([f"{key}={value}"])
    except UserError:
        return f"{key}={quoted(value)}"
    return f"{key}={value}" if parsed.value() == value else f"{key}={quoted(value)}"


def shell_word(argument: str) -> str:
    """``argument`` as one shell word: as it is when safe, else in double quotes when they read better than shlex's."""
    word = shlex.quote(argument)
    if word != argument and not set('"$`\\!') & set(argument):
        return f'"{argument}"'
    return word


def train_command(*overrides: str) -> str:
    """The training command line with these overrides, ready to paste into a shell."""
    return " ".join([COMMAND, *(shell_word(item) for item in overrides)])


def hydra_safe_arguments(arguments: list[str]) -> list[str]:
    """Command-line arguments with file and folder names (``resume=``, ``hydra.run.dir=``...) quoted as Hydra needs.

    A folder or file name is taken literally, whatever it holds: ``resume=outputs/multirun/.../lr=0.3,epochs=2``
    (a sweep job) would otherwise be a parse error or a sweep over two values, and non-ASCII letters, ``~`` or
    ``#`` parse errors. Values Hydra reads as one plain value (a quoted one included) are left as typed.
    """
    safe = []
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if separator and key in PATH_KEYS and _needs_quotes(argument):
            argument = f"{key}={quoted(value)}"
        safe.append(argument)
    return safe


def _needs_quotes(argument: str) -> bool:
    try:
        (parsed,) = _parsed([argument])
    except UserError:
        return True
    return not isinstance(parsed.value(), str | int | float | bool | None)


class PrepareRunFolder(Callback):
    """Before a training run starts: bring back a resumed run's overrides, check the config, claim a folder.

    Runs after Hydra composed the config and before it makes the run folder or writes into it, so a
    command line that cannot run leaves nothing behind. A sweep gets a sweep folder of its own.
    """

    @stops_the_command
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.resume == "":  # an unset shell variable, say: training afresh instead would hide the mistake
            raise UserError("resume= names no run folder; give resume=outputs/runs/<date>/<time>")
        if config.resume:
            self._resume(config, Path(config.resume))
        check_config(config)
        run_dir = Path(config.hydra.run.dir)
        start = start_checkpoint(config.ckpt_path, config.resume, run_dir)

        def check_start() -> None:
            if start is not None:
                from lenet_lightning.training.checkpoints import check_checkpoint_fits  # imports torch: only here

                key = "resume" if config.resume else "ckpt_path"
                check_checkpoint_fits(start, config, override(key, str(config[key])))

        if process_rank() != 0:  # another process of a distributed run, whose rank 0 claims the folder
            check_start()  # the same answer as rank 0's, so that no process waits for others that stopped
            check_writable(run_dir)
            return
        if config.resume or "hydra.run.dir" in _keys(list(config.hydra.overrides.hydra)):
            in_folder = start is not None and start.resolve().is_relative_to(run_dir.resolve())
            a_run = (run_dir / ".hydra").is_dir() or (run_dir / "checkpoints").is_dir()  # that stopped early, maybe
            continues = bool(config.resume) or in_folder or (config.ckpt_path == "last" and a_run)
            claim_run_folder(run_dir, continues_its_run=continues, check=check_start)
            return
        check_start()  # a checkpoint from elsewhere, checked before a folder is made for the run
        folder = reserve_run_folder(run_dir)
        try:
            claim_run_folder(folder, continues_its_run=False, check=lambda: None)
        except BaseException:
            with contextlib.suppress(OSError):
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
        sweep_dir = Path(config.hydra.sweep.dir)
        if "hydra.sweep.dir" in _keys(list(config.hydra.overrides.hydra)):
            check_writable(sweep_dir.parent)  # named on the command line: the sweep may be run again into it
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

    @staticmethod
    def _resume(config: DictConfig, folder: Path) -> None:
        """Run again with the resumed run's overrides, in its folder, unless this composition already has them.

        The run continues in its own folder: another ``hydra.run.dir`` is refused rather than ignored.
        """
        if "hydra.run.dir" in _keys(list(config.hydra.overrides.hydra)):
            run_dir = Path(config.hydra.run.dir)
            if run_dir.resolve() != folder.resolve():
                raise UserError(
                    f"{override('resume', str(folder))} continues the run in its own folder, not in "
                    f"{override('hydra.run.dir', str(run_dir))}: drop hydra.run.dir, or start a new run from its "
                    f"checkpoint with {shell_word(override('ckpt_path', str(folder / LAST_CHECKPOINT)))} "
                    f"{shell_word(override('hydra.run.dir', str(run_dir)))}"
                )
        given = [str(item) for item in config.hydra.overrides.task]
        overrides = merge_overrides(overrides_of_run(folder), given)
        if overrides != given or Path(config.hydra.run.dir) != folder:
            raise RunAgain(given, [*overrides, f"hydra.run.dir={quoted(str(folder))}"])
