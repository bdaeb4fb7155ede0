"""Thread settings: numpy's BLAS pinned to one thread, and how many CPUs this process may use.

Preprocessing multiplies small matrices (a spectrogram by a 64-band mel filterbank), where a
multi-threaded BLAS never pays: its threads only wake, contend with the model's threads and with
the other requests' preprocessing, and spin. Measured on 2 busy cores: one clip's MFCC took
4.2 ms with OpenBLAS on 2 threads and 0.4 ms on 1. polyfuse's own parallelism is across
requests and batches, so its entry points (training, the CLI, the server) pin BLAS to one thread.
"""
from __future__ import annotations

import os

_limiter = None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (taskset, a container's cpuset), not the machine's
    count, so that a pinned process does not start more threads than it has cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def single_threaded_blas() -> None:
    """Pin numpy's BLAS (OpenBLAS/MKL) to one thread for this process; torch's threads are untouched."""
    global _limiter
    if _limiter is None:
        # numpy first: threadpoolctl limits only the libraries already loaded, and the CLI calls this
        # before anything has imported numpy (then nothing was limited, and numpy's second OpenBLAS
        # thread spun at 80 % of a core in the server, a third of its throughput)
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_limits

        _limiter = threadpool_limits(limits=1, user_api="blas")
