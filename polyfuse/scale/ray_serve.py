"""`polyfuse serve MODEL --ray`: the same FastAPI app (``polyfuse.serve.app.create_app``: /predict, the
KServe V2 routes, /metrics, the web page, the Guard's limits and auth) as a Ray Serve application.

Each replica builds the app from the artifact; only the batcher differs: requests, parsed and
preprocessed by the app as always, are handed to a ``@serve.batch`` method, which merges them into
one model call (max batch size in rows and wait timeout from --max-batch / --max-delay-ms).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ray import serve

from polyfuse.serve.app import create_app
from polyfuse.serve.batching import merge
from polyfuse.serve.config import ServeConfig

Arrays = dict[str, np.ndarray]


@dataclass
class Item:
    """One request's preprocessed arrays on their way to ``@serve.batch``."""

    batch: Arrays
    rows: int
    cap: int  # the max batch: a request larger than it fills a batch alone (as in the local Batcher)
    enqueued: float = field(default_factory=time.perf_counter)


def batch_rows(items: list[Item]) -> int:
    """A batch's size in rows, not requests (``batch_size_fn``); Ray refuses an item larger than the
    max, so a large request counts as exactly a full batch."""
    return sum(min(i.rows, i.cap) for i in items)


class RayBatcher:
    """What ``ServerState`` expects of a batcher (start, stop, submit, max_batch), over ``@serve.batch``."""

    def __init__(self, deployment: "PolyfuseDeployment", run: Callable[[Arrays], Arrays], max_batch: int,
                 max_delay_s: float, queue_size: int, observe: Callable[..., None] | None = None):
        # queue_size needs no queue here: the Guard's admission already caps requests in flight
        self.deployment, self.max_batch = deployment, max(1, max_batch)
        deployment.run, deployment.observe = run, observe
        deployment.run_batch.set_max_batch_size(self.max_batch)
        deployment.run_batch.set_batch_wait_timeout_s(max(0.0, max_delay_s))

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.deployment.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, batch: Arrays, rows: int) -> asyncio.Future:
        return asyncio.ensure_future(self.deployment.run_batch(Item(batch, rows, self.max_batch)))


@serve.deployment
@serve.ingress()  # late-bound: the app is built in each replica, by __serve_build_asgi_app__
class PolyfuseDeployment:
    """One replica: the polyfuse app over ``model_dir`` with its model calls batched by Ray Serve."""

    def __init__(self, model_dir: str, cfg: ServeConfig):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # the event loop stays free
        self.run: Callable[[Arrays], Arrays] | None = None
        self.observe: Callable[..., None] | None = None
        self.polyfuse_app = create_app(model_dir, cfg, batcher=partial(RayBatcher, self))

    def __serve_build_asgi_app__(self) -> Any:
        return self.polyfuse_app

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=batch_rows)
    async def run_batch(self, items: list[Item]) -> list[Arrays]:
        """Merge the requests, run the model once off the event loop, split the answers back."""
        assert self.run is not None  # set when the app's lifespan started the batcher
        started = time.perf_counter()
        merged = {k: merge([i.batch[k] for i in items]) for k in items[0].batch}
        out = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, merged)
        took = time.perf_counter() - started
        answers, offset = [], 0
        for i in items:
            answers.append({k: v[offset : offset + i.rows] for k, v in out.items()})
            offset += i.rows
        if self.observe:  # the same /metrics histograms as the local batcher fills
            self.observe(offset, [started - i.enqueued for i in items], took)
        return answers


def deployment_options(cfg: ServeConfig, replicas: int, autoscale: tuple[int, int] | None) -> dict[str, Any]:
    """Replica count or autoscaling bounds; each replica reserves the CPUs its model threads use."""
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.queue_size,  # Ray's default (5) would cap a replica below one batch
        "ray_actor_options": {"num_cpus": cfg.threads or 1},
        "health_check_period_s": 5,
    }
    if autoscale:
        # a replica counts as busy when a full batch waits on it
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": max(1, cfg.max_batch)}
    else:
        options["num_replicas"] = replicas
    return options


def start(model_dir: str | Path, cfg: ServeConfig, replicas: int = 1, autoscale: tuple[int, int] | None = None,
          address: str | None = None) -> None:
    """Deploy on Ray Serve, listening on cfg.host:cfg.port; returns once every replica is ready."""
    from polyfuse.scale import init_ray
    from polyfuse.threads import usable_cpus

    most = autoscale[1] if autoscale else replicas
    # a local Ray offers every replica its CPU even on a smaller machine: replicas mostly wait on requests
    init_ray(address, num_cpus=None if address else max(usable_cpus(), most * (cfg.threads or 1)))
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.timeout_s + 5})
    app = PolyfuseDeployment.options(**deployment_options(cfg, replicas, autoscale)).bind(
        str(Path(model_dir).resolve()), cfg)
    serve.run(app, name="polyfuse", route_prefix="/")


def stop() -> None:
    """Shut Ray Serve down: the proxy stops listening, replicas finish and exit (Ray itself stays up)."""
    serve.shutdown()


def serve_ray(model_dir: str | Path, cfg: ServeConfig, replicas: int = 1,
              autoscale: tuple[int, int] | None = None) -> None:
    """Deploy, then block until Ctrl-C / SIGTERM, then shut down cleanly."""
    import signal
    import sys

    t0 = time.perf_counter()
    start(model_dir, cfg, replicas, autoscale)
    how = f"autoscaling {autoscale[0]}-{autoscale[1]} replicas" if autoscale else f"{replicas} replica(s)"
    print(f"polyfuse serve --ray: {Path(model_dir).name} on http://{cfg.host}:{cfg.port}, {how}, ready in "
          f"{time.perf_counter() - t0:.1f} s; Ctrl-C stops", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too ends in the clean shutdown below
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("polyfuse serve --ray: shutting down", file=sys.stderr, flush=True)
    finally:
        import ray

        try:
            stop()
        finally:
            ray.shutdown()
