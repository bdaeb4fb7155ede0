"""`polyfuse bench`'s report: speed-up ratios against torch eager, the text table, the chart, and
bench.json + bench.png saved inside the artifact."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse import artifact


def ratios(runtimes: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Each runtime against torch eager: batch-1 speed-ups (model alone, end to end) and accuracy drop."""
    ref = runtimes.get("torch")
    out = {}
    for name, fig in runtimes.items():
        if ref is None:
            out[name] = {"latency_speedup_vs_torch": None, "e2e_speedup_vs_torch": None, "accuracy_drop_points": None}
            continue
        drop = None
        if ref["accuracy"] is not None and fig["accuracy"] is not None:
            drop = 100 * (ref["accuracy"] - fig["accuracy"])
        out[name] = {"latency_speedup_vs_torch": ref["p50_ms"] / fig["p50_ms"],
                     "e2e_speedup_vs_torch": ref["e2e_p50_ms"] / fig["e2e_p50_ms"], "accuracy_drop_points": drop}
    return out


def _threads(result: dict[str, Any]) -> str:
    return "1 thread" if result["threads"] == 1 else f"{result['threads']} threads"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def format_table(result: dict[str, Any]) -> str:
    """One row per runtime; speed-ups are plain ratios so a slower runtime shows below 1.00×."""
    head = ("runtime", "size MB", "load ms", "cold s", "p50 ms", "p99 ms", "e2e p50", "e2e p99", "b32 rows/s",
            "accuracy", "speed-up", "e2e speed-up")
    lines = []
    for name, f in result["runtimes"].items():
        r = result["ratios"][name]
        acc = "—" if f["accuracy"] is None else f"{f['accuracy']:.4f}"
        lines.append((name, f"{f['size_mb']:.2f}", f"{f['load_ms']:.1f}", f"{f['cold_start_s']:.2f}",
                      f"{f['p50_ms']:.3f}", f"{f['p99_ms']:.3f}", f"{f['e2e_p50_ms']:.2f}", f"{f['e2e_p99_ms']:.2f}",
                      f"{f['batch32_rows_per_s']:.0f}", acc, _x(r["latency_speedup_vs_torch"]),
                      _x(r["e2e_speedup_vs_torch"])))
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:  # names left-aligned, figures right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    text = [fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)]
    text.append(f"{result['rows']} rows of {Path(result['data']).name}, latency on the first {result['latency_rows']}, "
                f"median of {result['repeats']} interleaved repeats, {_threads(result)}; "
                "cold s = import + load + first prediction in a fresh process (its own clock); "
                "speed-up = torch eager p50 / this p50 at batch 1")
    cores, load = result.get("cores") or 1, result.get("load_average") or [0.0]
    if load[0] > cores - 0.5:  # other processes hold the cores: multi-threaded figures stall on them
        text.append(f"WARNING: the machine was busy (load average {load[0]:.1f} on {cores} cores when the bench "
                    "started); latencies are inflated and multi-threaded ones unreliable — rerun on an idle machine "
                    "or with --threads 1")
    text.append(f"installed footprint: torch-free runtime {result['runtime_footprint_mb']:.0f} MB "
                f"vs full install {result['full_footprint_mb']:.0f} MB")
    p = result.get("pruning")
    if p:
        (m0, m1), (p0, p1), (l0, l1) = p["macs_per_row"], p["parameters"], p["latency_ms_batch1"]
        text.append(f"pruned ({p['ratio']:.0%} of the encoders' channels): MACs per row {m0:,} -> {m1:,} "
                    f"({1 - m1 / m0:.0%} fewer), parameters {p0:,} -> {p1:,}, torch batch-1 {l0:.2f} -> {l1:.2f} ms "
                    "when it was pruned")
    return "\n".join(text)


def _chart(result: dict[str, Any], path: Path) -> None:
    """Grouped bars of batch-1 p50 per runtime: the model alone next to end to end from a raw record."""
    from matplotlib.figure import (
        Figure,  # no pyplot: leaves the caller's matplotlib backend alone
    )

    names = list(result["runtimes"])
    x = np.arange(len(names))
    fig = Figure(figsize=(1.6 * len(names) + 3, 4.2))
    ax = fig.subplots()
    for offset, key, label in ((-0.2, "p50_ms", "model alone"), (0.2, "e2e_p50_ms", "end to end (raw record)")):
        bars = ax.bar(x + offset, [result["runtimes"][n][key] for n in names], 0.4, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("p50 latency at batch 1 (ms)")
    ax.set_title(f"{Path(result['data']).name}: median of {result['repeats']} repeats, {_threads(result)}")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(folder: Path, result: dict[str, Any]) -> None:
    """bench.json + bench.png, then the manifest re-hashed with its other keys kept."""
    artifact.verify(folder)  # never bless a file changed behind our back by re-hashing over it
    artifact.atomic_write_text(folder / "bench.json", json.dumps(result, indent=1))
    _chart(result, folder / "bench.png")
    artifact.refresh_manifest(folder)
