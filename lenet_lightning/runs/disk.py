"""The disk under a run or an output: the errors that mean it is full or read-only, and room checked before writing.

Training and the eval, predict and export commands meet the same three errors and word them the same way;
a background writer (TensorBoard's event thread) that dies of one is reported by the thread that writes next.
"""

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

MIN_FREE_BYTES = 20 * 2**20  # a LeNet run writes ~2 MB (checkpoint, its temporary copy, event files)
PROBE_BYTES = 2**20
PROBE_PREFIX = ".write-probe-"  # where the probe has a name at all, the folder checks know it for what it is
DISK_ERRORS = {
    errno.ENOSPC: "no space is left",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
}


def is_disk_error(error: BaseException) -> bool:
    """Whether ``error`` says the disk is full, the quota used up or the file system read-only."""
    return isinstance(error, OSError) and error.errno in DISK_ERRORS


def free_bytes_after_probe(folder: Path) -> int:
    """Write and sync a probe file in ``folder``, then return its disk's free bytes; ``OSError`` if it cannot.

    A written probe says "writable" for every cause at once (permissions, a read-only mount, root squashing on a
    network share, a full disk), where ``os.access`` can be wrong; it is unlinked at once (or never linked).
    """
    with tempfile.TemporaryFile(dir=folder, prefix=PROBE_PREFIX) as probe:
        probe.write(b"\0" * PROBE_BYTES)
        probe.flush()
        os.fsync(probe.fileno())
    return shutil.disk_usage(folder).free


@contextlib.contextmanager
def disk_errors_of_threads() -> Iterator[list[OSError]]:
    """Collect, instead of printing, the disk errors that kill background threads; others print as usual.

    The yielded list holds them, for a caller whose writer thread may fail before the error reaches it.
    """
    previous, caught = threading.excepthook, []

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and is_disk_error(args.exc_value):
            caught.append(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    try:
        yield caught
    finally:
        threading.excepthook = previous
