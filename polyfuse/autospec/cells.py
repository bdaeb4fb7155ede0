"""What a string cell holds beyond plain text, for `polyfuse init`'s profiling: a JSON array of readings
(an inline time series) or a date/time. Each counts the matching cells of a sample; the profile decides."""
from __future__ import annotations

import json
import re

# ISO 8601 dates and times ("2012-10-02", "2012-10-02 09:00:00", "2012-10-02T09:00:00.5+02:00"); no nested
# quantifiers, so it runs in linear time on any cell
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?")


def timestamps(cells: list[str]) -> int:
    """How many cells are ISO 8601 dates or times."""
    return sum(bool(TIMESTAMP.fullmatch(v.strip())) for v in cells)


def json_series(cells: list[str]) -> int:
    """How many cells are JSON arrays of numbers ([steps] or [steps][channels]; null for a gap) of > 1 step."""
    return sum(_series(v) for v in cells)


def _series(text: str) -> bool:
    if not text.lstrip().startswith("["):
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    steps = [v if isinstance(v, list) else [v] for v in value] if isinstance(value, list) else []
    return len(steps) > 1 and all(
        all(x is None or isinstance(x, (int, float)) and not isinstance(x, bool) for x in step) for step in steps)
