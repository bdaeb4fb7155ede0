"""Real-time streams: sliding windows over live ``timeseries`` and ``audio`` inputs (numpy only).

A ``StreamWindows`` holds, per stream input, a ring buffer of the input's window: ``length`` steps
of a timeseries (at its raw ``sample_rate``; more when it is resampled down to ``length``), or
``max_seconds * sample_rate`` samples of audio. ``push(name, samples)`` appends readings; once every
stream input has a full window, each ``hop`` new samples of the *clock* input (the first stream
input of the spec, or ``clock=``) make one record: the windows as arrays plus the static inputs
(numbers, categories, text...) from ``context``. The record goes through the model's ordinary
preprocessing, so a stream and a batch of the same windows predict the same.

At most ``max_pending`` records wait for ``ready()``; beyond it the oldest are dropped (a consumer
slower than the stream sees the latest windows) and ``dropped`` counts them.
"""
from __future__ import annotations

import math
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
        became ready. Raises BadInputError naming the input for an unknown input or a wrong shape."""
        name = self._name(name)
        x = self._validate(name, samples)
        if name != self.clock:
            self.rings[name].extend(x)
            return 0
        made, i = 0, 0
        while i < len(x):  # at each hop boundary of the clock a record may be due
            take = min(len(x) - i, self.hop - self._since)
            self.rings[name].extend(x[i:i + take])
            i += take
            self.samples += take
            self._since += take
            if self._since >= self.hop:
                self._since = 0
                if all(r.full for r in self.rings.values()):
                    self._emit()
                    made += 1
        return made

    def _emit(self) -> None:
        record = {self.spec.column(n): v for n, v in self.context.items() if n in self.spec.inputs}
        record.update({k: v for k, v in self.context.items() if k not in self.spec.inputs})
        for n, ring in self.rings.items():
            w = ring.window()
            record[self.spec.column(n)] = w[:, 0] if self.streams[n].type == "audio" else w
        self._pending.append((self.samples, record))
        if self.max_pending is not None and len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped += 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    def ready_with_ends(self) -> Iterator[tuple[int, dict]]:
        """(window_end, record) for each record due, oldest first; ``window_end`` counts clock samples."""
        while self._pending:
            yield self._pending.popleft()

    def ready(self) -> Iterator[dict]:
        """Each record due, oldest first (``ready_with_ends`` also says where each window ends)."""
        for _, record in self.ready_with_ends():
            yield record
