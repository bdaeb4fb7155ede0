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


def _machine_busy_s() -> float | None:
    """Seconds of CPU time the whole machine has spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Torch threads for training: the CPUs this process may use, less those other processes keep busy.

    Training on 2 threads while another process held one of the 2 cores ran at a tenth of its quiet
    speed (each step's threads wait on the one that lost its core); on 1 thread it kept 0.6 of it.
    The CPU time others used since the last call is machine busy time minus this process's own.
    """

    def __init__(self, fixed: int | None = None, cpus: int | None = None):
        import time

        self.fixed, self.cpus = fixed, cpus or usable_cpus()
        self._clock = time.monotonic
        self._last = (self._clock(), _machine_busy_s(), _own_cpu_s())

    def others(self) -> float | None:
        """Cores other processes used on average since the last call (None where it cannot be told)."""
        now = (self._clock(), _machine_busy_s(), _own_cpu_s())
        (t0, busy0, own0), self._last = self._last, now
        if busy0 is None or now[1] is None or now[0] - t0 < 0.05:
            return None
        return max(0.0, ((now[1] - busy0) - (now[2] - own0)) / (now[0] - t0))

    def threads(self) -> int:
        if self.fixed:
            return self.fixed
        others = self.others()
        if others is None:
            return self.cpus
        return max(1, min(self.cpus, self.cpus - int(others + 0.5)))
