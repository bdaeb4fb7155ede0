"""Real-time streams: sliding windows over live ``timeseries`` and ``audio`` inputs (numpy only).

A ``StreamWindows`` holds, per stream input, a ring buffer of the input's window: ``length`` steps
of a timeseries (at its raw ``sample_rate``; more when it is resampled down to ``length``), or
``max_seconds * sample_rate`` samples of audio. ``push(name, samples)`` appends readings; once every
stream input has a full window, each ``hop`` new samples of the *clock* input (the first stream
input of the spec, or ``clock=``) make one record: the windows as arrays plus the static inputs
(numbers, categories, text...) from ``context``. The record goes through the model's ordinary
preprocessing, so a stream and a batch of the same windows predict the same.

At most ``max_pending`` records wait for ``ready()``; beyond it the oldest are dropped (a consumer
slower than the stream sees the latest windows) and ``dropped`` counts them. Only the windows that
can be kept are cut and copied: the cost of a push grows with its samples, not with the windows it
makes due (``hop=1`` and 500k samples cut at most ``max_pending``; ``max_due`` refuses such a push).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from polyfuse.errors import BadInputError

STREAM_TYPES = ("timeseries", "audio")


def window_size(cfg: Any) -> tuple[int, int]:
    """(samples, channels) of a stream input's window at the rate its samples arrive."""
    if cfg.type == "audio":
        return max(1, int(round(cfg.max_seconds * cfg.sample_rate))), 1
    ratio = cfg.sample_rate / (cfg.resample_to or cfg.sample_rate)
    return max(2, int(math.ceil(cfg.length * ratio))), cfg.n_channels


class Ring:
    """A fixed-size [size, channels] float32 ring buffer; ``filled`` counts samples held (<= size)."""

    def __init__(self, size: int, channels: int):
        self.data = np.zeros((size, channels), dtype=np.float32)
        self.at = 0
        self.filled = 0

    def extend(self, x: np.ndarray) -> None:
        size = len(self.data)
        if len(x) >= size:
            self.data[:] = x[-size:]
            self.at, self.filled = 0, size
            return
        end = self.at + len(x)
        if end <= size:
            self.data[self.at:end] = x
        else:
            cut = size - self.at
            self.data[self.at:] = x[:cut]
            self.data[:end - size] = x[cut:]
        self.at = end % size
        self.filled = min(size, self.filled + len(x))

    @property
    def full(self) -> bool:
        return self.filled == len(self.data)

    def window(self) -> np.ndarray:
        """The held samples, oldest first (a copy)."""
        if not self.full:
            return self.data[:self.filled].copy()
        return np.concatenate([self.data[self.at:], self.data[:self.at]])


@dataclass
class StreamWindows:
    """The per-connection state of a stream over one model's ``spec``."""

    spec: Any
    hop: int
    context: dict = field(default_factory=dict)
    clock: str | None = None
    max_pending: int | None = None  # None: unbounded (a consumer that keeps up)
    max_due: int | None = None  # windows one push may make due (counted, not cut); None: unbounded
    dropped: int = 0
    samples: int = 0  # clock samples received so far (a record's ``window_end``)

    def __post_init__(self) -> None:
        if not isinstance(self.hop, int) or isinstance(self.hop, bool) or self.hop < 1:
            raise BadInputError(f"hop {self.hop!r}: expected a whole number of samples >= 1")
        if not isinstance(self.context, dict):
            raise BadInputError("context: expected an object of the static inputs' values")
        self.streams = {n: c for n, c in self.spec.inputs.items() if c.type in STREAM_TYPES}
        if not self.streams:
            raise BadInputError("this model has no timeseries or audio input to stream")
        self.clock = self.clock or next(iter(self.streams))
        if self.clock not in self.streams:
            raise BadInputError(f"clock {self.clock!r} is not a stream input; expected one of {sorted(self.streams)}")
        known = {self.spec.column(n) for n in self.spec.inputs} | set(self.spec.inputs)
        if unknown := sorted(set(self.context) - known):
            raise BadInputError(f"context names unknown inputs {unknown}; the model's inputs are {sorted(known)}")
        self.rings = {n: Ring(*window_size(c)) for n, c in self.streams.items()}
        self._since = 0
        self._pending: deque[tuple[int, dict]] = deque()
        # push may run in a worker thread while the consumer takes records on another (the server's
        # event loop): the queue and its drop count change together, under this lock, held only briefly
        self._lock = threading.Lock()

    def _name(self, name: str) -> str:
        if name in self.streams:
            return name
        for n in self.streams:  # a column name is accepted too
            if self.spec.column(n) == name:
                return n
        raise BadInputError(f"unknown stream input {name!r}; the stream inputs are {sorted(self.streams)}",
                            column=str(name)[:60])

    def _validate(self, name: str, samples: Any) -> np.ndarray:
        cfg = self.streams[name]
        try:
            x = np.asarray(samples, dtype=np.float32)
        except (ValueError, TypeError):
            raise BadInputError(f"stream input '{name}': samples are not numeric (or rows differ in length)",
                                column=name) from None
        want = window_size(cfg)[1]
        if x.ndim == 1 and (want == 1 or cfg.type == "audio"):
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != want:
            shape = list(x.shape)
            raise BadInputError(f"stream input '{name}': samples have shape {shape}, expected [steps, {want}] "
                                f"({want} channel{'s' if want != 1 else ''})", column=name)
        bad = ~np.isfinite(x)
        if bad.any():  # timeseries: a gap (masked like a file's empty cells); audio: silence
            x = np.where(bad, np.nan if cfg.type == "timeseries" else 0.0, x).astype(np.float32)
        return x

    def push(self, name: str, samples: Any) -> int:
        """Append readings ([steps, channels], or [steps] for one channel); returns how many records
        became due (dropped ones included). Raises BadInputError naming the input for an unknown input,
        a wrong shape, or (with ``max_due``) a message that makes more windows due than that."""
        name = self._name(name)
        x = self._validate(name, samples)
        if name != self.clock:
            self.rings[name].extend(x)
            return 0
        due = self._due(x)
        if self.max_due is not None and len(due) > self.max_due:  # checked before any state changes
            raise BadInputError(f"stream input '{name}': {len(x)} samples at hop {self.hop} make {len(due)} windows "
                                f"due in one message, over the limit of {self.max_due}; send fewer samples per "
                                "message or use a larger hop", column=name)
        # Only the windows that can survive backpressure are cut (the last max_pending); the others are
        # counted as dropped without being copied, so a message's cost does not grow with its windows.
        keep = due if self.max_pending is None else due[max(0, len(due) - self.max_pending):]
        records = [self._record(name, x, end) for end in keep]
        self.rings[name].extend(x)
        self.samples += len(x)
        self._since = (self._since + len(x)) % self.hop
        with self._lock:
            self.dropped += len(due) - len(keep)
            for end, record in zip(keep, records):
                self._pending.append((self.samples - len(x) + end, record))
                if self.max_pending is not None and len(self._pending) > self.max_pending:
                    self._pending.popleft()
                    self.dropped += 1
        return len(due)

    def _due(self, x: np.ndarray) -> range:
        """Where in ``x`` (samples taken, 1-based) a window is due: at each hop boundary of the clock once
        every stream input's window is full. A range, so its length costs nothing to know."""
        first = self.hop - self._since
        if not all(r.full for n, r in self.rings.items() if n != self.clock):
            return range(0)
        need = len(self.rings[self.clock].data) - self.rings[self.clock].filled  # samples until the clock's is full
        start = first if first >= need else first + -(-(need - first) // self.hop) * self.hop
        return range(start, len(x) + 1, self.hop)

    def _record(self, clock: str, x: np.ndarray, end: int) -> dict:
        """The record of the window that ends after ``x[:end]`` (the clock's ring not yet extended by x)."""
        size = len(self.rings[clock].data)
        if end >= size:
            window = x[end - size:end].copy()
        else:
            window = np.concatenate([self.rings[clock].window()[end - size:], x[:end]])
        record = {self.spec.column(n): v for n, v in self.context.items() if n in self.spec.inputs}
        record.update({k: v for k, v in self.context.items() if k not in self.spec.inputs})
        for n, ring in self.rings.items():
            w = window if n == clock else ring.window()
            record[self.spec.column(n)] = w[:, 0] if self.streams[n].type == "audio" else w
        return record

    @property
    def pending(self) -> int:
        return len(self._pending)

    def ready_with_ends(self) -> Iterator[tuple[int, dict]]:
        """(window_end, record) for each record due, oldest first; ``window_end`` counts clock samples."""
        with self._lock:
            taken, self._pending = self._pending, deque()
        yield from taken

    def ready(self) -> Iterator[dict]:
        """Each record due, oldest first (``ready_with_ends`` also says where each window ends)."""
        for _, record in self.ready_with_ends():
            yield record
