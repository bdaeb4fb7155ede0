"""Load test of `polyfuse serve`, measured in one run against baselines measured in the same run.

    .venv/bin/python benchmarks/serve_load.py [--quick] [--duration 8] [--clients 32] [--mem-requests 20000]

1. dynamic batching vs batching off (--max-batch 1): 32 closed-loop clients, interleaved rounds
   (batched, off, batched, off), medians: throughput ratio, p50/p99, and p99 against max-delay + 2x one
   batch's service time (the larger of /metrics' mean and a full batch timed in-process with the server's
   model threads), on two models:
   1a. the avdigits model, where preprocessing is most of a request and the model ~0.1 ms a record: the
       target is that batching never costs (>= 0.95x; the server runs singles where a batch does not pay);
       the p99 bound is shown, not judged (32 clients wait on preprocessing whatever the batch time);
   1b. a network-bound model (the demo spec with a 512-wide BiGRU over 128 transcript tokens, trained
       one epoch into runs/bench-serve-network): targets >= 1.5x and the p99 bound;
2. end to end from raw image+audio records at 8 clients: requests/s against Ludwig's 22 requests/s on
   this machine (target >= 4x); time from Popen to the first 200 (target <= 2 s);
3. overload: the server pinned to all cores but the last, this load client (a light raw-socket HTTP/1.1
   client) to the last; the pinned server's capacity is measured (as many closed-loop clients as its
   --queue-size admits), then 4x it is sent open loop on a fixed arrival schedule: share of 200 vs
   503/429, how quick the refusals are, requests that hang, goodput, RSS;
4. memory: --mem-requests mixed requests (valid JSON single/multi-record, multipart, malformed) after a
   warm-up; RSS growth after the warm-up (target <= 5 %).

--steps 13 runs some steps only; --serve-flags '--threads 1' adds flags to every server (a diagnosis aid).
Every server is a subprocess on a free port of 127.0.0.1 and is killed in `finally`; every request loop
is bounded in count and in time. The model: the avdigits spec trained into runs/bench-serve-av and
exported to ONNX (reused when present); without ../shared/data/avdigits, the demo data and DEMO_SPEC.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402
from serve_load_batching import step_batching  # noqa: E402
from serve_load_model import (NETWORK_BOUND, load_payloads, prepare_model, prepare_network_model,  # noqa: E402
                              reference_predictions)
from serve_load_report import Table, loadavg  # noqa: E402
from serve_load_server import Server  # noqa: E402
from serve_load_steps import step_e2e, step_memory, step_overload  # noqa: E402


async def run(args: argparse.Namespace) -> None:
    model_dir, test_csv, what = prepare_model(args)
    p = load_payloads(model_dir, test_csv, args.records)
    ref_acc = reference_predictions(model_dir, p)
    print(f"model {model_dir.relative_to(REPO)} (ONNX), data: {what}, {len(p.records)} records from "
          f"{test_csv} (in-process accuracy {ref_acc:.4f}); machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}, httpx {httpx.__version__}")
    load0 = loadavg()
    print(f"load average (1/5/15 min) at start: {load0} on {os.cpu_count()} CPUs: other work on the machine skews "
          "every figure below")
    table, starts = Table(), []
    capacity = float("nan")
    t0 = time.perf_counter()
    try:
        if "1" in args.steps:
            capacity = await step_batching(args, model_dir, p, table, starts, "1a",
                                           f"{model_dir.name} (preprocessing-bound)", gain_target=False)
            net_dir, net_csv = prepare_network_model(args)
            net_p = load_payloads(net_dir, net_csv, args.records)
            reference_predictions(net_dir, net_p)
            print(f"\nnetwork-bound model {net_dir.relative_to(REPO)}: the demo spec with transcript {NETWORK_BOUND}")
            await step_batching(args, net_dir, net_p, table, starts, "1b",
                                f"{net_dir.name} (network-bound: BiGRU over 128 tokens)", gain_target=True)
        if "2" in args.steps:
            await step_e2e(args, model_dir, p, table, starts)
        if "3" in args.steps:
            if capacity != capacity:
                capacity = args.capacity
            await step_overload(args, model_dir, p, table, capacity)
        if "4" in args.steps:
            await step_memory(args, model_dir, p, table)
    finally:
        Server.stop_all()
    print(f"\n== summary ({time.perf_counter() - t0:.0f} s; load average at start {load0}, at end {loadavg()}; all servers started: Popen -> first 200 "
          f"{', '.join(f'{x:.2f}' for x in starts)} s) ==")
    print(table.render())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run of a minute or two")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per closed-loop measurement")
    ap.add_argument("--clients", type=int, default=32, help="closed-loop clients in step 1")
    ap.add_argument("--e2e-clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved batched/off rounds in step 1")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--cold-starts", type=int, default=3)
    ap.add_argument("--overload-factor", type=float, default=4.0)
    ap.add_argument("--overload-s", type=float, default=5.0)
    ap.add_argument("--overload-max", type=int, default=6000, help="bound on overload requests")
    ap.add_argument("--overload-queue", type=int, default=8, help="--queue-size of the overload server")
    ap.add_argument("--overload-conns", type=int, default=256, help="client connection limit in step 3")
    ap.add_argument("--client-timeout", type=float, default=12.0, help="per request in step 3 (server's is 10 s)")
    ap.add_argument("--capacity", type=float, default=200.0, help="req/s for step 3 when step 1 is skipped")
    ap.add_argument("--mem-requests", type=int, default=20_000)
    ap.add_argument("--mem-warmup", type=int, default=1_000)
    ap.add_argument("--mem-clients", type=int, default=8)
    ap.add_argument("--mem-max-s", type=float, default=600.0, help="time bound of step 4")
    ap.add_argument("--records", type=int, default=200, help="test rows used as payloads")
    ap.add_argument("--steps", default="1234", help="which steps to run, e.g. 14")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--model-dir", default=None, help="an exported avdigits model to serve instead (no training)")
    ap.add_argument("--serve-flags", default="", help="extra flags for every server, e.g. '--runtime torch'")
    args = ap.parse_args()
    Server.extra_flags = args.serve_flags.split()
    args.warmup_s = 1.0
    if args.quick:
        args.duration, args.rounds, args.cold_starts, args.warmup_s = min(args.duration, 2.0), 1, 1, 0.5
        args.overload_s, args.mem_requests, args.mem_warmup = min(args.overload_s, 2.0), 600, 100
    try:
        asyncio.run(run(args))
    finally:
        Server.stop_all()


if __name__ == "__main__":
    main()
