"""``train.time_limit``: one clock for the whole run. Training stops before an epoch that would end past
``TRAIN_SHARE`` of the limit (the last epoch's time is the estimate of the next), leaving the rest for the
stages after it; each of those asks ``fits`` before it starts and is skipped, with the reason recorded,
when the time is spent. Without a limit every stage runs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

TRAIN_SHARE = 0.85  # of the limit, for reading the data and the epochs; the rest is for the stages after


@dataclass
class TimeBudget:
    limit: float | None
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def another_epoch(self, last_epoch_s: float) -> bool:
        """Whether an epoch as long as the last one still ends within the training share."""
        return self.limit is None or self.elapsed() + last_epoch_s <= TRAIN_SHARE * self.limit

    def fits(self, stage: str) -> bool:
        """Whether ``stage`` may start; if not, it is recorded as skipped."""
        if self.limit is None or self.elapsed() < self.limit:
            return True
        self.skipped.append(stage)
        return False

    def report(self) -> dict:
        return {"seconds": self.limit, "used": round(self.elapsed(), 3), "skipped": list(self.skipped)}
