"""Where a study lives: ``hydra.sweeper.storage`` opened as an Optuna storage, or refused in one line.

Every worker of a search (another shell, another machine) opens the same storage and so adds its trials to the
same study. A value with ``://`` is an SQLAlchemy URL (``sqlite:///search.db``; ``postgresql://user@host/db``
across machines); anything else is the path of an Optuna journal file, the safe choice for several processes on
one machine (file locks, no database server), and what ``optuna-dashboard <file>`` opens as well.
"""

import contextlib
import json
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import URL, make_url

from lenet_lightning.errors import UserError

DEFAULT_JOURNAL = "optuna.journal"  # storage=null: a journal file in the sweep folder, a study of its own


def is_database_url(storage: str) -> bool:
    return "://" in storage


def check_storage(storage: str) -> None:
    """Refuse a storage that cannot work before anything is written: a malformed URL, a missing database driver,
    a folder that does not exist. Whether a database server answers is known only by opening it."""
    if not storage.strip():
        raise UserError("hydra.sweeper.storage is empty; give a journal file path, a database URL, or null")
    if not is_database_url(storage):
        _check_parent(Path(storage), storage)
        _check_journal(Path(storage), storage)
        return
    url = _parsed(storage)
    try:
        url.get_dialect()
    except (sqlalchemy.exc.NoSuchModuleError, ImportError) as error:
        raise UserError(
            f"hydra.sweeper.storage={_hidden(url)}: no SQLAlchemy driver for {url.drivername!r} "
            f"({_first_line(error)}); use sqlite:///<file>, or install the driver (psycopg2 for postgresql)"
        ) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        _check_parent(Path(url.database), storage)
    elif url.get_backend_name() == "sqlite":
        raise UserError(
            f"hydra.sweeper.storage={storage} is an in-memory database that other processes cannot share; "
            "name a file: sqlite:///search.db"
        )


def storage_exists(storage: str) -> bool:
    """Whether the storage may already hold studies (a file that is there, or any database server)."""
    if not is_database_url(storage):
        return Path(storage).exists()
    url = _parsed(storage)
    return url.get_backend_name() != "sqlite" or Path(url.database or "").exists()


def open_storage(storage: str) -> BaseStorage:
    """The Optuna storage behind ``storage``; a server that does not answer or a file of another kind is one line."""
    check_storage(storage)
    try:
        if is_database_url(storage):
            return RDBStorage(storage)
        return JournalStorage(JournalFileBackend(storage))
    except (sqlalchemy.exc.SQLAlchemyError, OSError, RuntimeError, ImportError) as error:
        raise UserError(
            f"hydra.sweeper.storage={_shown(storage)} cannot be opened: {_first_line(error)}; check the address, "
            "the credentials and that the database is running"
        ) from None


def study_directions(storage: BaseStorage, study_name: str) -> list[optuna.study.StudyDirection] | None:
    """The directions of the study of that name in the storage, or None when there is none yet."""
    with contextlib.suppress(KeyError):
        return storage.get_study_directions(storage.get_study_id_from_name(study_name))
    return None


def _parsed(storage: str) -> URL:
    try:
        return make_url(storage)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(
            f"hydra.sweeper.storage={storage} is not a database URL; write dialect://user:password@host/database "
            "(sqlite:///search.db for a file), or give a journal file path without ://"
        ) from None


def _check_parent(path: Path, storage: str) -> None:
    if not path.parent.is_dir():
        raise UserError(
            f"hydra.sweeper.storage={storage}: the folder {path.parent} does not exist; create it first "
            "(on several machines it must be a folder they all share)"
        )
    if path.is_dir():
        raise UserError(
            f"hydra.sweeper.storage={storage} is a folder; name a file in it, e.g. {path / DEFAULT_JOURNAL}"
        )


def _check_journal(path: Path, storage: str) -> None:
    """An existing file must be a journal: Optuna would skip its other lines and append its own to it."""
    try:
        with path.open("rb") as file:
            first = file.readline()
    except FileNotFoundError:
        return
    except OSError as error:
        raise UserError(f"hydra.sweeper.storage={storage} cannot be read: {error.strerror or error}") from None
    try:
        is_journal = not first or "op_code" in json.loads(first)
    except (ValueError, TypeError):
        is_journal = False
    if not is_journal:
        raise UserError(
            f"hydra.sweeper.storage={storage} is not an Optuna journal file; name a new file, or write "
            f"sqlite:///{storage} for an SQLite database"
        )


def _hidden(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _shown(storage: str) -> str:
    return _hidden(make_url(storage)) if is_database_url(storage) else storage


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def storage_of(storage: str | None, sweep_dir: str | Path) -> str:
    """``hydra.sweeper.storage`` as given, or for null the journal file in the sweep folder (a study of its own)."""
    return str(Path(sweep_dir) / DEFAULT_JOURNAL) if storage is None else str(storage)
