"""The heavy lane: the largest JSON bodies and stream messages are parsed (and bodies decoded) in a
process of its own, with its own GIL.

``json.loads`` of a 16 MB body holds the GIL for ~100 ms in one call, and 64 records of long text to
de-identify hold it as long again; on a thread of the server's process that stalled the event loop
(liveness p99 130 ms) and every ordinary request (p99 28x its calm value) while 4 clients sent the
largest bodies and messages the limits allow. The worker runs the same code as the thread lanes
(``parse_json``, ``json_records``, ``Preprocessor.transform``), rebuilt from the model's spec and
fitted state, so there is still one preprocessing implementation.

Errors cross the process boundary as plain tuples (an exception with its own ``__init__`` does not
survive pickling) and are raised again in the server as the thread lanes raise them. A worker that
dies (out of memory on a hostile body) fails only its request: the pool is rebuilt for the next one.
"""
from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from polyfuse.errors import BadInputError, DeadlineExceeded, MediaTooLarge
from polyfuse.preprocess.pipeline import Preprocessor
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.requests import RequestError, json_records, parse_json
from polyfuse.serve.stream_parse import parse_message
from polyfuse.training.memory import release_memory

NICE = 10  # the worker's CPU priority below the server's (os.nice)
# After a job of t seconds the worker rests REST * t before the next: back-to-back large requests get at
# most 1 / (1 + REST) of a core, however many clients send them, and the rest is the ordinary requests'
REST = 1.0
_WORKER: dict[str, Any] = {}  # in the worker process: the spec, preprocessor and limits


def _init(spec: Any, state_json: str, cfg: ServeConfig, server: int) -> None:
    # below the server in CPU priority: where cores are short, the largest requests wait, not the ordinary
    # ones (on 2 shared cores, /predict's p99 under the text+stream attack 89 -> 71 ms in one run)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    _follow_parent(server)
    _WORKER.update(spec=spec, preprocessor=Preprocessor.from_json(spec, state_json), cfg=cfg)


def _follow_parent(server: int) -> None:
    """End with the server (pid ``server``): a server killed (SIGKILL, OOM) or stopped before its pool said
    goodbye left its worker running, ~50-80 MB each, also when it died while the worker was still
    importing (the worker's parent was then already init). A thread watches for another parent. (Not the
    kernel's parent-death signal: it follows the thread that started the worker, not the process.)"""
    if os.getppid() != server:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="follow-parent").start()


def _ready() -> bool:
    return bool(_WORKER)


def _decode_body(raw: bytes, seconds_left: float, keep_records: bool) -> tuple:
    """("ok", rows, batch, records or None) | ("request", status, message, record, field) |
    ("bad", is_too_large, reason, row, column) | ("deadline",)."""
    spec, cfg = _WORKER["spec"], _WORKER["cfg"]
    budget = cfg.budget(time.monotonic() + seconds_left)
    try:
        records = json_records(parse_json(raw, spec, cfg), spec, cfg, budget)
        batch = _WORKER["preprocessor"].transform(records, budget=budget)[0]
        return "ok", len(records), batch, records if keep_records else None
    except RequestError as e:
        return "request", e.status, e.message, e.record, e.field
    except BadInputError as e:
        return "bad", isinstance(e, MediaTooLarge), e.reason, e.row, e.column
    except DeadlineExceeded:
        return "deadline",
    finally:
        release_memory()  # a large body's memory goes back to the OS


class HeavyLane:
    """One worker process; ``decode_body`` and ``parse_message`` await its answers."""

    def __init__(self, spec: Any, preprocessor: Preprocessor, cfg: ServeConfig):
        self._args = (spec, preprocessor.to_json(), cfg, os.getpid())
        self.pool = self._pool()
        self._turn = asyncio.Lock()
        self._free_at = 0.0  # when the worker may take its next job (see REST)

    def _pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: a forked copy of the server would inherit its threads' locks mid-use
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                                   initargs=self._args)

    async def warm(self) -> None:
        """Start the worker now (its imports take a second or two), not on the first large request."""
        await self._run(_ready)

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._turn:
            wait = self._free_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                return await self._submit(fn, *args)
            finally:
                self._free_at = time.monotonic() + REST * (time.monotonic() - started)

    async def _submit(self, fn: Any, *args: Any) -> Any:
        pool = self.pool
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool:
            if self.pool is pool:  # the worker died (out of memory, killed): a fresh one for the next request
                self.pool = self._pool()
            raise RequestError(503, "the request could not be processed (its worker stopped); retry, or send a "
                                    "smaller body") from None

    async def decode_body(self, raw: bytes, deadline: float, keep_records: bool) -> tuple[int, dict, Any]:
        """(rows, the preprocessed batch, the records when ``keep_records``) of a JSON /predict body;
        raises RequestError, BadInputError or DeadlineExceeded as the thread lanes do."""
        out = await self._run(_decode_body, raw, max(0.0, deadline - time.monotonic()), keep_records)
        if out[0] == "ok":
            return out[1], out[2], out[3]
        if out[0] == "request":
            raise RequestError(*out[1:])
        if out[0] == "bad":
            raise (MediaTooLarge if out[1] else BadInputError)(out[2], row=out[3], column=out[4])
        raise DeadlineExceeded("the request's deadline passed while it was decoded")

    async def parse_message(self, data: bytes | str) -> tuple:
        return await self._run(parse_message, data)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
