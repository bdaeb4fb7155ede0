"""``train.time_limit``: one clock for the whole run. Training stops before an epoch that would end past
``TRAIN_SHARE`` of the limit (``ENSEMBLE_TRAIN_SHARE`` with the ensemble on) (the last epoch's time is the estimate of the next), leaving the rest for the
stages after it; each of those asks ``fits`` before it starts and is skipped, with the reason recorded,
when the time is spent. Without a limit every stage runs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

TRAIN_SHARE = 0.85  # of the limit, for reading the data and the epochs; the rest is for the stages after
# with the ensemble on, fitting its linear members took 5-35 % of the training time (avdigits, mvsa,
# zhtext): the stages after training then get 30 % (zhtext's best preset at 60 s ran 72 s with 15 %)
ENSEMBLE_TRAIN_SHARE = 0.7
# the last tenth is for calibration and the evaluations (test and validation rows, each input left out):
# zhtext's best preset at 60 s, its ensemble ending at the limit, ran 67 s
FINISH_SHARE = 0.1


@dataclass
class TimeBudget:
    limit: float | None
    share: float = TRAIN_SHARE
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def deadline(self) -> float | None:
        """When the stages before calibration and evaluation must end, as a time.perf_counter() value
        (None without a limit)."""
        return None if self.limit is None else self.started + (1 - FINISH_SHARE) * self.limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def another_epoch(self, last_epoch_s: float) -> bool:
        """Whether an epoch as long as the last one still ends within the training share."""
        return self.limit is None or self.elapsed() + last_epoch_s <= self.share * self.limit

    def fits(self, stage: str) -> bool:
        """Whether ``stage`` may start (before the deadline); if not, it is recorded as skipped."""
        if self.limit is None or time.perf_counter() < self.deadline():
            return True
        self.skipped.append(stage)
        return False

    def report(self) -> dict:
        return {"seconds": self.limit, "used": round(self.elapsed(), 3), "skipped": list(self.skipped)}
