"""serve_load.py step 1: dynamic batching against batching off on one model, in interleaved rounds, with the
batch service time that its p99 bound allows measured both by the server (/metrics) and in this process."""
from __future__ import annotations

import functools
import itertools
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load_client import Result, closed_loop, fmt_status  # noqa: E402
from serve_load_model import Payloads  # noqa: E402
from serve_load_report import Table, loadavg, med  # noqa: E402
from serve_load_server import Server, metrics, server_model_threads  # noqa: E402


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def in_process_batch_ms(model_dir: Path, p: Payloads, n: int, repeats: int) -> tuple[float, float]:
    """Median model time of one batch of ``n`` real records and of one record, in this process (ONNX), with
    the servers' model threads: Runtime's own default (every core) ran the network-bound model's batch of 32
    in 23 ms where the server's one thread takes 32, and so understated the p99 bound's service time."""
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir, threads=server_model_threads())
    recs = [p.raw_records[i % len(p.raw_records)] for i in range(n)]
    batch, _ = rt.preprocessor.transform(recs)
    single, _ = rt.preprocessor.transform(recs[:1])
    out = []
    for arrays in (batch, single):
        rt.run_arrays(arrays)
        out.append(_median_ms(functools.partial(rt.run_arrays, arrays), repeats))
    return out[0], out[1]


def in_process_preprocess_ms(model_dir: Path, p: Payloads, repeats: int) -> float:
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir)
    records = itertools.cycle(p.raw_records)
    return _median_ms(lambda: rt.preprocessor.transform([next(records)]), repeats)


async def _start_pair(args, model_dir: Path, p: Payloads, starts: list[float]) -> tuple[Server, Server, int]:
    """The batched and the batching-off server, and the max batch the batched one decided on."""
    on = await Server("batched", model_dir, "--max-batch", str(args.max_batch), "--max-delay-ms",
                      f"{args.max_delay_ms:g}").start(p.single[0])
    off = await Server("off", model_dir, "--max-batch", "1").start(p.single[0])
    starts += [on.first_200_s, off.first_200_s]
    print(f"server (batched) said: {on.ready_line}")
    m = re.search(r"max batch (\d+)", on.ready_line)
    decided = int(m.group(1)) if m else -1
    if decided == 1 and args.max_batch > 1:
        print(f"  NOTE: asked for --max-batch {args.max_batch}, the server measured that batching does not pay "
              "and runs singles: both servers are then the same")
    print(f"server (off)     said: {off.ready_line}")
    return on, off, decided


async def _rounds(args, p: Payloads, on: Server, off: Server) -> tuple[dict, dict, dict, dict]:
    """Interleaved closed-loop rounds on both: (results, server CPU ms per answered request, by server;
    the batched server's /metrics before and after)."""
    runs: dict[str, list[Result]] = {"batched": [], "off": []}
    cpu_ms: dict[str, list[float]] = {"batched": [], "off": []}
    for s in (on, off):  # warm-up, not measured
        await closed_loop(s.url, p, args.clients, args.warmup_s, 100_000, check_labels=False)
    m0 = metrics(on.url)
    max_n = int(args.duration * 5000)  # bound; far above what 2 cores answer
    for rnd in range(args.rounds):
        for name, s in (("batched", on), ("off", off)):
            c0 = s.cpu_s()
            r = await closed_loop(s.url, p, args.clients, args.duration, max_n)
            cpu_ms[name].append((s.cpu_s() - c0) / max(1, r.ok) * 1e3)
            runs[name].append(r)
            print(f"  round {rnd + 1} {name:7s}: {r.rps:7.1f} req/s  p50 {r.pct(50):7.1f} ms  "
                  f"p99 {r.pct(99):7.1f} ms  server CPU {cpu_ms[name][-1]:.2f} ms/request  "
                  f"[{fmt_status(r)}; differing {r.wrong_label}/{r.checked}]")
    return runs, cpu_ms, m0, metrics(on.url)


def _service_ms(args, model_dir: Path, p: Payloads, m0: dict, m1: dict) -> tuple[float, str]:
    """One batch's service time for the p99 bound: the larger of /metrics' mean over the rounds and a full batch
    timed in process; and the line that shows both."""
    d = lambda key: m1.get(key, 0.0) - m0.get(key, 0.0)  # noqa: E731
    n_obs = d("polyfuse_model_seconds_count")  # one observation per model batch
    batch_ms_metrics = d("polyfuse_model_seconds_sum") / n_obs * 1e3 if n_obs else float("nan")
    rows_per_batch = d("polyfuse_batch_rows_sum") / n_obs if n_obs else float("nan")
    b32_ms, b1_ms = in_process_batch_ms(model_dir, p, args.max_batch, 30 if not args.quick else 10)
    pre_ms = in_process_preprocess_ms(model_dir, p, 40 if not args.quick else 10)
    service_ms = max(batch_ms_metrics if batch_ms_metrics == batch_ms_metrics else 0.0, b32_ms)
    line = (f"batch service time: /metrics polyfuse_model_seconds mean {batch_ms_metrics:.2f} ms over {n_obs:.0f} "
            f"batches of {rows_per_batch:.1f} rows on average; in-process ONNX ({server_model_threads()} thread(s), "
            f"as the server) batch of {args.max_batch} "
            f"{b32_ms:.2f} ms, batch of 1 {b1_ms:.3f} ms; preprocessing one raw record in-process {pre_ms:.2f} ms")
    return service_ms, line


def _judge(table: Table, args, tag: str, gain_target: bool, rps: dict, p50: dict, p99: dict, bound: float,
           decided: int, wrong: dict, checked: dict) -> None:
    ratio = rps["batched"] / rps["off"] if rps["off"] else float("nan")
    if gain_target:
        table.add(f"{tag} batching throughput vs off", ">= 1.5x",
                  f"{ratio:.2f}x ({rps['batched']:.0f} vs {rps['off']:.0f} req/s)", ratio >= 1.5)
    table.add(f"{tag} batching never slower", ">= 0.95x", f"{ratio:.2f}x ({rps['batched']:.0f} vs {rps['off']:.0f} "
              "req/s)", ratio >= 0.95)
    # The issue ties the p99 bound to the 1.5x target ("throughput >= 1.5x ..., with p99 <= ..."): a model where
    # batching is meant to pay. Where preprocessing is the cost (1a), 32 closed-loop clients wait on
    # preprocessing (Little's law above) whatever the model's batch time, so that row is shown, not judged.
    table.add(f"{tag} batched p99 vs delay + 2x batch", f"<= {bound:.1f} ms" if gain_target else "informational",
              f"p99 {p99['batched']:.1f} ms (p50 {p50['batched']:.1f}; off p99 {p99['off']:.1f}; bound "
              f"{bound:.1f})", p99["batched"] <= bound if gain_target else None)
    table.add(f"{tag} server's own batching decision", f"max batch {args.max_batch}", f"max batch {decided}", None)
    table.add(f"{tag} answers = in-process prediction", "0 differ (batched and off)",
              f"{wrong['batched']} of {checked['batched']} / {wrong['off']} of {checked['off']}",
              wrong["batched"] == 0 and wrong["off"] == 0)


async def step_batching(args, model_dir: Path, p: Payloads, table: Table, starts: list[float], tag: str,
                        what: str, gain_target: bool) -> float:
    """Batched vs batching-off servers of one model. ``gain_target``: the >= 1.5x row applies (a model whose
    network dominates); otherwise only "never below 0.95x" does (batching cannot pay where preprocessing is
    the cost, and the server must notice and not make things worse)."""
    print(f"\n[load average {loadavg()}]")
    print(f"\n== {tag}. dynamic batching vs off, {what}: {args.clients} closed-loop clients, {args.duration:g} s "
          f"each, {args.rounds} interleaved round(s) ==")
    on, off, decided = await _start_pair(args, model_dir, p, starts)
    try:
        runs, cpu_ms, m0, m1 = await _rounds(args, p, on, off)
    finally:
        on_problems, off_problems = on.problems(), off.problems()
        on.stop()
        off.stop()
    rps = {k: med([r.rps for r in v]) for k, v in runs.items()}
    p50 = {k: med([r.pct(50) for r in v]) for k, v in runs.items()}
    p99 = {k: med([r.pct(99) for r in v]) for k, v in runs.items()}
    ratio = rps["batched"] / rps["off"] if rps["off"] else float("nan")
    service_ms, service_line = _service_ms(args, model_dir, p, m0, m1)
    bound = args.max_delay_ms + 2 * service_ms
    print(f"median: batched {rps['batched']:.1f} req/s vs off {rps['off']:.1f} req/s = {ratio:.2f}x; "
          f"p50 {p50['batched']:.1f} vs {p50['off']:.1f} ms; p99 {p99['batched']:.1f} vs {p99['off']:.1f} ms")
    print(f"server CPU per answered request (all threads, /proc/PID/stat): batched {med(cpu_ms['batched']):.2f} ms "
          f"vs off {med(cpu_ms['off']):.2f} ms")
    print(service_line)
    print(f"p99 bound = max-delay {args.max_delay_ms:g} ms + 2 x {service_ms:.2f} ms = {bound:.1f} ms; batched p99 "
          f"{p99['batched']:.1f} ms (closed loop: latency ~ clients / throughput = "
          f"{args.clients / rps['batched'] * 1e3 if rps['batched'] else float('nan'):.0f} ms by Little's law)")
    wrong = {k: sum(r.wrong_label for r in v) for k, v in runs.items()}
    checked = {k: sum(r.checked for r in v) for k, v in runs.items()}
    print(f"answers that differ from the in-process prediction of the same record: batched {wrong['batched']} of "
          f"{checked['batched']}, off {wrong['off']} of {checked['off']}")
    for prob in on_problems + off_problems:
        print(f"  SERVER PROBLEM: {prob}")
    _judge(table, args, tag, gain_target, rps, p50, p99, bound, decided, wrong, checked)
    return rps["batched"]
