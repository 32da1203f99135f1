"""The C allocator's settings for serving: freed batch memory is kept for the next batch."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("frameworm.allocator")

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 2**20


def retain_freed_memory() -> bool:
    """Keep freed blocks in the process for reuse; False where the C library has no mallopt.

    Every batch allocates its activations afresh: about 12 MB for the benchmark CNN at batch 32.
    On the forward thread's arena, glibc's defaults hand those blocks back to the kernel when
    they are freed and map them again, zeroed, for the next batch: about 2,300 page faults a
    batch, 15% of that CNN's forward time on the benchmark machine (the model alone, on the main
    thread's arena, does not pay it). A fixed mmap threshold and a high trim threshold keep the
    blocks; the process stays at its high-water mark instead of shrinking between batches.
    These are process-wide settings, made once before the model loads.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not kept:  # e.g. musl, whose mallopt is a stub
        log.info("the C library ignores mallopt: freed memory goes back to the kernel")
    return kept


def give_back_freed_memory() -> None:
    """Hand freed memory back to the kernel now (glibc's malloc_trim), after a model version is
    released: with the thresholds above, the freed weights of a version switched away from (in
    blocks under 32 MB) stayed in the process, 100 MB and more for a large model."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    malloc_trim(0)
