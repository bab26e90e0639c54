"""Keep freed tensor memory inside the training process instead of handing it back to the OS every step.

With glibc's default settings, the megabyte-sized activations of each CPU step are returned to the kernel
when freed and mapped afresh on the next step; the page faults that follow cost LeNet about a quarter of its
CPU step time and make it vary from run to run. Raising glibc's mmap and trim thresholds keeps those blocks
in the process for reuse; memory held stays bounded by the run's own peak. PyTorch has no CPU caching
allocator to switch on instead, and the ``MALLOC_*`` environment variables only act at process start.
"""

import ctypes
import sys

import lightning as L

# mallopt() parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # the ceiling of glibc's own adaptive threshold; larger blocks are still mapped
TRIM_THRESHOLD_BYTES = 256 * 2**20  # free memory above the heap top that is kept before returning it


def keep_freed_host_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (process-wide); return False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on other C libraries (musl)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


class KeepFreedHostMemory(L.Callback):
    """Applies :func:`keep_freed_host_memory` in every training process, spawned ones included."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        keep_freed_host_memory()
