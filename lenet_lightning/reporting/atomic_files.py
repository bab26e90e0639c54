"""Files replaced in one step: written beside their target, renamed over it only once complete.

An interrupted or failed write (a full disk, a kill, an export that fails its check) then never leaves half a
file, nor an empty ``result.json``, under the name users and tools look for.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask; reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed over ``path`` only if the block succeeds, else deleted.

    So an interrupted or failed write never leaves half a file, nor a file that failed its check, under the
    name users look for. The file gets the permissions a plain ``open`` would give it, not ``mkstemp``'s 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        try:
            os.fchmod(descriptor, 0o666 & ~current_umask())
        finally:
            os.close(descriptor)
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a crash never leaves half a file there."""
    with replaced_on_success(path) as temporary:
        temporary.write_text(text, newline="")  # written as given: no "\r\n" -> "\r\r\n" on Windows
