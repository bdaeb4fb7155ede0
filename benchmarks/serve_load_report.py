"""serve_load.py's summary table of checks, and the small figures every step prints."""
from __future__ import annotations

import os
import statistics


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def med(xs: list[float]) -> float:
    """Median of the figures that are not NaN (a round without a 200 has no p99); NaN for none."""
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, target: str, measured: str, ok: bool | None) -> None:
        self.rows.append((what, target, measured, "n/a" if ok is None else ("PASS" if ok else "FAIL")))

    def render(self) -> str:
        heads = ("check", "target", "measured", "verdict")
        w = [max(len(r[i]) for r in self.rows + [heads]) for i in range(4)]
        line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
        return "\n".join([line(heads), "  ".join("-" * x for x in w)] + [line(r) for r in self.rows])
