"""Memory: glibc malloc habits that long-running polyfuse processes correct (Linux only), the run's peak,
and whether the training rows may be collated once for every epoch."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.mallopt.argtypes = [ctypes.c_size_t], [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc (musl has neither function)
        return None


_LIBC = _glibc()
M_MMAP_THRESHOLD, M_TOP_PAD = -3, -2
TOP_PAD_BYTES = 256 << 20


def release_memory() -> None:
    """glibc's malloc_trim: what a large request freed goes back to the OS instead of staying in the
    heap's free lists (RSS after a 16 MB body of records stayed ~470 MB up without it)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def map_large_allocations() -> None:
    """Allocations of 1 MB or more (request bodies, decoded images and clips, training batches) get their
    own mapping, unmapped when freed. glibc's default threshold adapts upward after the first large free
    (up to 32 MB), after which such blocks came from the heap and, fragmented, stayed: the server's RSS
    after 100 worst-case requests measured 1.26-1.53x start-up without this (benchmarks/attack.py step 3),
    and 3 epochs of 112 px images from disk shards peaked at 1.21 GB against 0.81 GB with it."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def keep_freed_heap_top() -> None:
    """The heap keeps 256 MB past its top when it grows or trims, instead of handing each step's freed
    blocks back to the kernel and faulting them in again on the next step. Measured on mvsa's fast preset
    (a 52x64 CNN + n-grams, 2 cores, one run each, identical losses): 380 rows/s and 51 s of system time
    without it, 510 rows/s with a 64 MB pad, 760-930 rows/s and 14 s with 256 MB (network 49 s -> 26 s).
    It costs up to the pad in resident memory after a step's peak. Training only: the server bounds its
    RSS instead (``release_memory``). A number in ``MALLOC_TOP_PAD_`` is the user's and is kept (glibc reads
    anything else as 0, which would silently cost the speed)."""
    if _LIBC is not None and not os.environ.get("MALLOC_TOP_PAD_", "").strip().isdigit():
        _LIBC.mallopt(M_TOP_PAD, TOP_PAD_BYTES)


def reset_peak() -> bool:
    """Start counting this process's peak resident memory afresh (Linux: VmHWM, reset through
    /proc/self/clear_refs); False where it cannot, and the peak then counts from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """This process's peak resident memory in MB (since ``reset_peak``, where it could)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1 << 20)


COLLATED_SHARE = 4  # the collated training rows may take this fraction (1/4) of data.memory_budget_mb
SAMPLE_ROWS = 64


def collated_fits(pre: Any, decoded: Any, budget_mb: int) -> tuple[bool, float]:
    """Whether the training rows, collated once and kept for every epoch, take at most a quarter of
    ``budget_mb`` (estimated from the first rows); and that estimate in MB. Collating each batch as it
    comes costs little beside a network's step; the copy of a 35k-row photo table (1.2 GB of float32
    pixels beside the decoded ones) was most of that run's 5.2 GB peak."""
    n = min(len(decoded), SAMPLE_ROWS)
    if not n:
        return True, 0.0
    batch = pre.collate(decoded, range(n))
    mb = sum(a.nbytes for a in batch.values()) / n * len(decoded) / 2**20
    return mb <= budget_mb / COLLATED_SHARE, mb
