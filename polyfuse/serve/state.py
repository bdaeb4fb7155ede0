"""What one server process holds: the model backend, the preprocessing lanes, the batcher, and the
path every /predict and /infer request takes through them (parse -> decode -> batch -> answer).

Two preprocessing lanes: requests whose body or declared media is large are parsed and decoded apart
(a JSON body in a worker process, serve/heavy.py; media a multipart form declares large on a thread of
its own), so that a few costly requests (the largest the limits allow) delay each other, not the
ordinary ones. Every request carries a DecodeBudget with its deadline: when it is answered
(or times out, or the client leaves) its decoding stops at the next check instead of running on.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from polyfuse.artifact import sha256
from polyfuse.errors import BadInputError, DeadlineExceeded, MediaTooLarge
from polyfuse.preprocess.budget import DecodeBudget
from polyfuse.preprocess.pipeline import Decoded
from polyfuse.preprocess.targets import MODALITY_WEIGHTS, decode_outputs
from polyfuse.serve.access import Access
from polyfuse.serve.batching import Batcher, batching_pays
from polyfuse.serve.config import ServeConfig
from polyfuse.serve.heavy import HeavyLane
from polyfuse.serve.observability import Metrics, access_logger
from polyfuse.serve.requests import RequestError
from polyfuse.threads import usable_cpus
from polyfuse.training.memory import map_large_allocations, release_memory

HEAVY_BODY_BYTES = 1 << 20  # bodies larger than this are parsed in the heavy lane
HEAVY_DECODE_BYTES = 8 << 20  # requests whose media declare more decoded bytes are decoded there
AUDIT_DOWN = ("the audit log cannot be written, so the prediction is not served (none is answered unrecorded); "
              "retry later")

Parse = Callable[[DecodeBudget], tuple[list[dict], Any]]


@dataclass
class Backend:
    """What the server needs of a model, whichever runtime executes it."""

    name: str
    version: str
    digest: str
    platform: str
    spec: Any
    preprocessor: Any
    run_arrays: Callable[[dict], dict]
    manifest_digest: str = ""  # sha256 of manifest.json: names the whole artifact (the audit log's model)


def load_backend(path: Path, cfg: ServeConfig) -> Backend:
    """ONNX Runtime when the artifact has an ONNX export (torch is then never imported), else torch."""
    from polyfuse.runtime import VARIANTS, listed_files  # torch-free

    manifest = sha256(path / "manifest.json") if (path / "manifest.json").exists() else ""
    # ONNX only when the manifest lists the graph: a model.onnx dropped beside a signed model is never served
    use_onnx = cfg.runtime == "onnx" or (cfg.runtime == "auto" and VARIANTS["fp32"] in listed_files(path))
    if use_onnx:
        from polyfuse.runtime import Runtime

        rt = Runtime(path, variant=cfg.variant, threads=cfg.threads, key_env=cfg.key_env, verify_key=cfg.verify_key)
        return Backend(path.name, "1", rt.manifest["files"][rt.model_file.name]["sha256"], "polyfuse_onnxruntime",
                       rt.spec, rt.preprocessor, rt.run_arrays, manifest)
    from polyfuse.extras import require

    require("train", f"serving {path.name} with torch", hint=f"`polyfuse export {path}` lets the base runtime serve it")
    from polyfuse.estimator import load, set_threads

    set_threads(cfg.threads)
    model = load(path, key_env=cfg.key_env, verify_key=cfg.verify_key)
    digest = model.info["manifest"]["files"]["weights.safetensors"]["sha256"]
    return Backend(path.name, "1", digest, "polyfuse_pytorch", model.spec, model.preprocessor, model.run_arrays,
                   manifest)


def prep_threads() -> int:
    """Preprocessing threads: one per CPU this process may run on, less one left to the event loop
    and the model thread. Measured on 2 cores, one thread beat two by 10-13 % in requests per second
    on both benchmark models (p99 73 -> 62 ms on the network-bound one): a second thread mostly
    contends for the GIL and takes the model's core."""
    return max(1, usable_cpus() - 1)


class ServerState:
    """The backend, limits, lanes, batcher and the counters the Guard and the drain read."""

    def __init__(self, backend: Backend, cfg: ServeConfig, batcher: Callable[..., Batcher] = Batcher):
        """``batcher``: what batches requests, built like ``Batcher`` (run, max_batch, max_delay_s,
        queue_size, observe); Ray Serve passes one that hands them to ``@serve.batch``."""
        self.backend, self.cfg, self.make_batcher = backend, cfg, batcher
        map_large_allocations()
        self.metrics = Metrics(backend.name, backend.digest, backend.platform)
        self.log = access_logger()
        self.prep = ThreadPoolExecutor(max_workers=prep_threads(), thread_name_prefix="preprocess")
        self.heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess-heavy")
        self.heavy_process: HeavyLane | None = None  # started with the event loop (start)
        self.batcher: Batcher | None = None
        self.ready = False
        self.inflight = 0
        self.working = 0  # /predict and /infer requests admitted and not yet answered
        self.metrics.admitted.set_function(lambda: self.working)
        self.batching_note = ""
        self.handlers: set[asyncio.Task] = set()  # /predict and /infer requests being handled
        self.drain_expired = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.classes = {n: backend.preprocessor.classes(n) for n in backend.spec.outputs}
        # one Access per server: /predict, /infer and every stream's windows take from the same buckets
        self.access = Access(cfg.api_key, cfg.api_keys_file, cfg.rate_limit)
        self.audit = None
        if cfg.audit_log:
            from polyfuse.privacy.audit import AuditLog

            self.audit = AuditLog(cfg.audit_log, backend.manifest_digest, int(cfg.audit_max_mb * (1 << 20)))

    def start(self) -> None:
        """Start the batcher (once the event loop runs), deciding first whether batching pays."""
        cfg, b = self.cfg, self.backend
        self.loop = asyncio.get_running_loop()
        max_batch = cfg.max_batch
        if cfg.check_batching and max_batch > 1:
            # one all-missing row, collated directly: transform() rejects a record with no inputs
            empty = sized_like_requests(b.spec, b.preprocessor.collate(Decoded({n: [None] for n in b.spec.inputs}, {}, [0])))
            pays, t_batch, t_single = batching_pays(b.run_arrays, empty, max_batch)
            self.batching_note = (f"one batch of {max_batch} takes {t_batch * 1e3:.2f} ms vs {t_single * 1e3:.2f} ms "
                                  f"for {max_batch} singles")
            if not pays:
                self.batching_note += ": batching is not cheaper for this model, so requests run one at a time"
                max_batch = 1
        self.batcher = self.make_batcher(b.run_arrays, max_batch, cfg.max_delay_ms / 1e3, cfg.queue_size,
                               self.metrics.observe_batch)
        self.batcher.start()
        if cfg.heavy_process:
            self.heavy_process = HeavyLane(b.spec, b.preprocessor, cfg)
            warming = self.loop.create_task(self.heavy_process.warm())
            warming.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed start shows per request
        self.ready = True

    async def stop(self) -> None:
        """Not ready; the batcher and both preprocessing lanes stop (queued work is dropped)."""
        self.ready = False
        if self.batcher:
            await self.batcher.stop()
        for pool in (self.prep, self.heavy):
            pool.shutdown(wait=False, cancel_futures=True)
        if self.heavy_process is not None:
            self.heavy_process.shutdown()
        if self.audit is not None:
            self.audit.close()

    def expire_drain(self) -> None:
        """The drain deadline passed: every request still being handled is answered 503 now."""
        self.drain_expired = True
        for task in list(self.handlers):
            task.cancel()

    def _decode(self, records: list[dict], budget: DecodeBudget) -> dict[str, np.ndarray]:
        return self.backend.preprocessor.transform(records, budget=budget)[0]

    def _decode_heavy(self, records: list[dict], budget: DecodeBudget) -> dict[str, np.ndarray]:
        try:
            return self._decode(records, budget)
        finally:
            release_memory()  # after large requests only: a trim walks the whole heap

    async def predict(self, parse: Parse, body_bytes: int, deadline: float, who: dict | None = None,
                      raw: bytes | None = None) -> tuple[dict[str, np.ndarray], dict[str, list], Any]:
        """Parse and preprocess off the event loop, queue for the batcher, await the model's answer.

        ``parse`` turns the request body into (records, context), checking media headers against the
        budget it is given, and raises RequestError; it runs in a preprocessing lane with the rest,
        so the event loop only moves bytes. ``raw``: the JSON body ``parse`` reads, given when the
        worker process may parse it instead (a large one). Returns (probabilities, labels, context).
        """
        loop = asyncio.get_running_loop()
        assert self.batcher is not None  # admission (Guard) already capped the requests that get here
        if self.audit is not None and self.audit.error:  # no prediction goes unrecorded
            raise RequestError(503, AUDIT_DOWN)
        budget = self.cfg.budget(deadline)
        heavy = body_bytes > HEAVY_BODY_BYTES

        def prepare() -> tuple[list[dict], Any, dict[str, np.ndarray] | None]:
            try:
                records, context = parse(budget)
                if heavy or budget.declared <= HEAVY_DECODE_BYTES:
                    return records, context, self._decode(records, budget)
                return records, context, None
            finally:
                if heavy:  # a large body, decoded or refused: its memory goes back to the OS
                    release_memory()

        try:
            context = None
            if heavy and raw is not None and self.heavy_process is not None:
                rows, batch, records = await self.heavy_process.decode_body(raw, deadline, self.audit is not None)
            else:
                records, context, batch = await loop.run_in_executor(self.heavy if heavy else self.prep, prepare)
                if batch is None:  # cheap to parse, costly to decode: decoded away from the ordinary requests
                    batch = await loop.run_in_executor(self.heavy, self._decode_heavy, records, budget)
                rows = len(records)
        except BadInputError as e:
            where = [f"record {e.row}"] if e.row is not None else []
            where += [f"field '{e.column}'"] if e.column is not None else []
            status = 413 if isinstance(e, MediaTooLarge) else 400
            raise RequestError(status, f"{', '.join(where)}: {e.reason}" if where else e.reason, e.row,
                               e.column) from None
        except DeadlineExceeded:
            raise asyncio.TimeoutError from None  # answered like any request past its deadline
        finally:
            budget.cancel()  # answered, timed out or abandoned: decoding for it stops at its next check
        try:
            future = self.batcher.submit(batch, rows)
        except asyncio.QueueFull:
            raise RequestError(503, "the server is at capacity; retry shortly") from None
        probs = await future
        labels = decode_outputs(self.backend.spec, self.backend.preprocessor.state, probs)
        if self.audit is not None and who is not None:
            await self._audited(who, records, labels, probs)
        return probs, labels, context

    async def _audited(self, who: dict, records: list[dict], labels: dict[str, list], probs: Any) -> None:
        """Wait until the prediction's audit line is on disk (fsync'd): none is answered unrecorded."""
        from polyfuse.privacy.audit import AuditWriteError

        assert self.audit is not None
        done = self.audit.record(who.get("server_request_id") or who["request_id"], who.get("key_id"), records,
                                 labels, probs, time.perf_counter() - who["started"], who.get("client_request_id"))
        try:
            await asyncio.wrap_future(done)
        except AuditWriteError:
            raise RequestError(503, AUDIT_DOWN) from None


def sized_like_requests(spec: Any, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batching check's row, with pretrained text and waveform inputs at a typical request's
    length: an empty text is one token, and a transformer's cost (and what batching saves) grows
    with the length."""
    from polyfuse.spec.inputs import hf_encoder

    for name, cfg in spec.inputs.items():
        proc = hf_encoder(cfg)._processor if hf_encoder(cfg) is not None else {}
        if proc.get("kind") == "text":
            steps = min(int(proc["max_length"]), 64)
        elif proc.get("feature") == "wav2vec2":
            steps = int(proc["sampling_rate"] * cfg.max_seconds)
        else:
            continue
        row[name] = np.zeros((1, steps), dtype=row[name].dtype)
        row[f"{name}__length"] = np.asarray([steps], dtype=np.int64)
    return row


def prediction_rows(backend: Backend, classes: dict[str, list], probs: dict[str, np.ndarray],
                    labels: dict[str, list]) -> list[dict[str, Any]]:
    """The answer rows of /predict and /v2/stream: labels, probabilities, and for gated fusion how much
    each input counted."""
    out = []
    n = len(next(iter(labels.values())))
    for i in range(n):
        row: dict[str, Any] = {}
        dist: dict[str, dict[str, float]] = {}
        for name, cfg in backend.spec.outputs.items():
            row[name] = labels[name][i]
            if cfg.type in ("category", "binary"):
                row[f"{name}_probability"] = round(float(probs[name][i].max()), 6)
                if row[name] is None:  # below the output's abstain_below threshold
                    row["reason"] = "low confidence"
            if cfg.type != "number":
                dist[name] = {c: round(float(p), 6) for c, p in zip(classes[name], probs[name][i])}
        if dist:
            row["probabilities"] = dist
        if MODALITY_WEIGHTS in probs:  # gated fusion: how much each input counted for this record
            row["modality_weights"] = {backend.spec.column(n): round(float(w), 6)
                                       for n, w in zip(backend.spec.inputs, probs[MODALITY_WEIGHTS][i])}
        out.append(row)
    return out
