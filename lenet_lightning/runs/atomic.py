"""Files replaced in one step: written beside their target, renamed over it only once complete.

An interrupted or failed write (a full disk, a kill, an export that fails its check) then never leaves half a
file, nor an empty ``result.json``, under the name users and tools look for.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed over ``path`` only if the block succeeds, else deleted.

    So an interrupted or failed write never leaves half a file, nor a file that failed its check, under the
    name users look for. The file is created with the permissions a plain ``open`` gives (the umask's), not
    ``mkstemp``'s 0600, and without changing the process's umask to read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a crash never leaves half a file there."""
    with replaced_on_success(path) as temporary:
        temporary.write_text(text, newline="")  # written as given: no "\r\n" -> "\r\r\n" on Windows
