"""Column profiling for `polyfuse init`: what a bounded, seeded sample of each column holds.

Everything here measures; nothing chooses a spec (that is polyfuse.autospec.infer). At most
``MAX_VALUES`` cells per column feed the statistics and at most ``MAX_FILES`` files per file
column are opened, and only their headers are read, so a 50k-row table profiles in seconds.
"""
from __future__ import annotations

import io
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.autospec.cells import json_series, timestamps
from polyfuse.data.io import is_missing, resolve_media
from polyfuse.errors import BadInputError

MAX_VALUES = 2000
MAX_FILES = 200
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
VIDEO_EXT = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv"}
SERIES_EXT = {".npy", ".parquet", ".pq", ".csv"}  # a cell naming one of these holds a time series
ID_NAMES = ("id", "uid", "uuid", "row_id", "index", "key")
# Scripts written without spaces between words: a whitespace/\w+ tokenizer turns a whole
# sentence into one token. (First word of the Unicode character name.)
UNSEGMENTED = {"CJK", "HIRAGANA", "KATAKANA", "HALFWIDTH", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN",
               "JAVANESE", "BALINESE", "YI", "SUNDANESE", "BUGINESE", "TAI", "NEW"}
SCRIPT_NAMES = {"CJK": "Han", "HIRAGANA": "kana", "KATAKANA": "kana", "HALFWIDTH": "kana"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_MAGIC = {b"\x89PNG": "image", b"\xff\xd8": "image", b"GIF8": "image", b"BM": "image", b"fLaC": "audio",
          b"OggS": "audio", b"ID3": "audio"}


def sample(values: list, k: int, seed: int = 0) -> list:
    """A seeded random sample of at most ``k`` values, in table order (not just the head)."""
    if len(values) <= k:
        return list(values)
    picks = np.sort(np.random.default_rng(seed).choice(len(values), size=k, replace=False))
    return [values[i] for i in picks]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


# ----------------------------------------------------------------------------- column kinds
@dataclass
class Kind:
    """What a column holds: image|audio|text|number|category|id|empty|constant|unsupported, and why."""

    kind: str
    reason: str = ""
    rows: int = 0
    missing: int = 0
    distinct: int = 0
    present: list = field(default_factory=list, repr=False)  # the non-missing cells, in table order


def _distinct(values: list) -> int:
    try:
        return len(set(values))
    except TypeError:  # lists/dicts from JSONL
        return len({repr(v) for v in values})


def _media_of_bytes(value: bytes) -> str | None:
    if value[:4] == b"RIFF" and value[8:12] in (b"WAVE", b"WEBP"):
        return "audio" if value[8:12] == b"WAVE" else "image"
    return next((kind for magic, kind in _MAGIC.items() if value.startswith(magic)), None)


MAJORITY = 0.9  # share of sampled cells that decides a column's kind; the rest are named as odd cells


def _media_of_str(value: str, folder: Path) -> str | None:
    """'image'/'audio' when the cell names a media file (or is a data: URI), else None."""
    text = value.strip()
    if text.startswith("data:image/"):
        return "image"
    if text.startswith("data:audio/"):
        return "audio"
    if text.startswith("data:video/"):
        return "video"
    if "\n" in text or len(text) > 1000:
        return None
    suffix = Path(text).suffix.lower()
    kind = "image" if suffix in IMAGE_EXT else "audio" if suffix in AUDIO_EXT else None
    if suffix in SERIES_EXT:
        kind = "timeseries"
    elif suffix in VIDEO_EXT:
        kind = "video"
    if kind and any(ch.isspace() for ch in text):  # "look at pic.jpg" is prose unless that file exists
        path = Path(text).expanduser()
        return kind if (path if path.is_absolute() else folder / path).is_file() else None
    return kind


def _mixed_files_error(name: str, kinds: list[str | None], cells: list) -> BadInputError:
    by_kind: dict[str, Any] = {}
    for kind, cell in zip(kinds, cells):
        by_kind.setdefault(kind or "free text", cell)
    counts = Counter(kind or "free text" for kind in kinds)
    parts = [f"{counts[k]} {k} (e.g. {str(v)[:60]!r})" for k, v in by_kind.items()]
    return BadInputError(
        f"mixes file paths and other values in a sample of {len(kinds)} cells: {', '.join(parts)}. "
        "A column must hold one kind: put file paths and text in separate columns, or empty the odd cells",
        column=name)


def classify(name: str, values: list, folder: Path, seed: int = 0) -> Kind:
    """The column's kind from its dtype, cardinality and a sample of its cells."""
    present = [v for v in values if not is_missing(v)]
    kind = Kind("", rows=len(values), missing=len(values) - len(present), present=present)
    if not present:
        kind.kind, kind.reason = "empty", f"all {len(values)} cells empty"
        return kind
    kind.distinct = _distinct(present)
    cells = sample(present, MAX_VALUES, seed)
    if kind.distinct == 1 and len(values) > 1:
        kind.kind, kind.reason = "constant", f"one value ({str(cells[0])[:40]!r}) in every non-empty cell"
        return kind
    if all(isinstance(v, (bool, np.bool_)) for v in cells):
        kind.kind, kind.reason = "category", "true/false values"
        return kind
    if all(isinstance(v, (bytes, bytearray)) for v in cells):
        media = [_media_of_bytes(bytes(v)) for v in cells]
        if set(media) == {None}:
            kind.kind, kind.reason = "unsupported", "bytes in no image or audio format polyfuse knows"
            return kind
        if len(set(media)) > 1:
            raise _mixed_files_error(name, [m or "unknown bytes" for m in media], ["<bytes>"] * len(cells))
        kind.kind, kind.reason = media[0], f"{media[0]} bytes"
        return kind
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in cells):
        return _classify_numbers(name, kind)
    if not all(isinstance(v, str) for v in cells):
        if all(isinstance(v, (list, tuple, np.ndarray)) and len(v) > 1 for v in cells):
            kind.kind, kind.reason = "timeseries", "cells hold arrays of readings"
            return kind
        if any(isinstance(v, (list, dict, tuple)) for v in cells):
            kind.kind, kind.reason = "unsupported", "cells hold lists or mappings"
            return kind
        cells = [str(v) for v in cells]  # mixed numbers and strings (JSONL): judge them as text
    return _classify_strings(name, kind, cells, folder)


def _classify_numbers(name: str, kind: Kind) -> Kind:
    arr = np.asarray(kind.present, dtype=np.float64)
    integral = bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    unique = kind.distinct == len(kind.present) == kind.rows
    if integral and unique and kind.rows >= 10 and (arr.max() - arr.min() + 1 == kind.rows or _id_name(name)):
        kind.kind = "id"
        kind.reason = f"unique integers {arr.min():.0f}..{arr.max():.0f}, one per row (a row id, not a feature)"
    elif integral and kind.distinct <= 20 and kind.distinct <= max(2, kind.rows / 5):
        kind.kind = "category"
        kind.reason = f"{kind.distinct} distinct whole numbers"
    elif integral and _id_name(name) and kind.distinct < len(kind.present):
        # a product or user id repeated over rows names a thing, it does not measure it: its size
        # (id 1,206 vs 12) means nothing, but rows of one id share something a category can learn
        kind.kind = "category"
        kind.reason = (f"an identifier by its name: {kind.distinct} whole numbers repeated over {len(kind.present)} "
                       "rows, a category (a number would read meaning into their order)")
    else:
        kind.kind = "number"
        kind.reason = f"min {arr.min():.4g}, median {np.median(arr):.4g}, max {arr.max():.4g}"
    return kind


def _id_name(name: str) -> bool:
    """'id', 'user_id', 'Clothing ID', 'productId', 'ClothingID': a name that says it identifies."""
    low = name.strip().lower()
    camel = name.endswith(("Id", "ID")) and name[:-2][-1:].islower()  # not PAID, VALID
    return low in ID_NAMES or low.endswith(("_id", "-id", " id")) or camel


def _float_or_none(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return None if math.isinf(number) else number


def _classify_strings(name: str, kind: Kind, cells: list[str], folder: Path) -> Kind:
    media = [_media_of_str(v, folder) for v in cells]
    (major, count), = Counter(media).most_common(1)
    # the column's kind is what nearly all its cells are (a real table has a stray cell: one product
    # title in 2,000 that reads "..._Size_Chart.jpg"); the odd cells are named, never silently used
    if count < MAJORITY * len(cells):
        raise _mixed_files_error(name, media, cells)
    odd = [v for v, m in zip(cells, media) if m != major]
    if major is not None:
        kind.kind = major
        kind.reason = f"{major} file paths" + (
            f"; {len(odd)} of {len(cells)} sampled cells are not (e.g. {odd[0][:40]!r}): they will be bad rows "
            "(empty them to make them missing values)" if odd else "")
        return kind
    if json_series(cells) >= MAJORITY * len(cells):
        kind.kind, kind.reason = "timeseries", "JSON arrays of readings in the cells"
        return kind
    if timestamps(cells) >= MAJORITY * len(cells):
        kind.kind = "timestamp"
        kind.reason = (f"dates/times such as {cells[0][:25]!r}: a point in time names a row, it does not describe it; "
                       "add what repeats (hour, weekday, month, holiday) as columns, and when rows are ordered in "
                       "time, give data.valid/data.test tables of later times rather than a random split")
        return kind
    kind = _classify_text(name, kind, cells)
    if odd:
        kind.reason += (f"; {len(odd)} of {len(cells)} sampled cells look like file names (e.g. {odd[0][:40]!r}) "
                        "and are read as text")
    return kind


def _classify_text(name: str, kind: Kind, cells: list[str]) -> Kind:
    numbers = [_float_or_none(v) for v in cells]
    numeric = sum(n is not None for n in numbers)
    if numeric >= MAJORITY * len(cells):
        odd = Counter(v for v, n in zip(cells, numbers) if n is None)
        kind.kind = "number"
        kind.reason = (f"{numeric} of {len(cells)} sampled cells are numbers; cells such as "
                       f"{[v for v, _ in odd.most_common(3)]} are not and will be bad rows (empty them to make "
                       "them missing values)") if odd else "numbers written as text"
        return kind
    no_space = sum(not any(ch.isspace() for ch in v.strip()) for v in cells) / len(cells)
    has_digit = sum(any(ch.isdigit() for ch in v) for v in cells) / len(cells)
    unsegmented = texts_in_unsegmented_script(cells) if no_space > 0.9 else 0.0
    unique = kind.distinct == len(kind.present) and len(kind.present) >= 10
    if unique and no_space >= 0.95 and unsegmented < 0.5 and (has_digit >= 0.5 or _id_name(name)):
        kind.kind = "id"
        kind.reason = f"{kind.distinct} unique single-token strings such as {cells[0][:30]!r} (a row id, not a feature)"
        return kind
    lengths = [len(v) for v in cells]
    words = sum(len(v.split()) for v in cells) / len(cells)
    if kind.distinct <= max(20, len(kind.present) // 20) and words <= 3 and percentile(lengths, 95) <= 40:
        kind.kind = "category"
        kind.reason = f"{kind.distinct} distinct short values"
        return kind
    kind.kind = "text"
    kind.reason = f"{kind.distinct} distinct values, {words:.1f} space-separated words on average"
    return kind


# ----------------------------------------------------------------------------- text
@lru_cache(maxsize=65536)
def script_of(ch: str) -> str | None:
    """The script of a letter as the first word of its Unicode name (LATIN, CJK, THAI...); None otherwise."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def _unsegmented_ranges() -> re.Pattern:
    # Han, kana, Thai, Lao, Tibetan, Myanmar, Khmer, Yi, Javanese, Balinese and CJK extensions
    ranges = ["\u3040-\u30ff", "\u31f0-\u31ff", "\u3400-\u4dbf", "\u4e00-\u9fff", "\uf900-\ufaff", "\uff66-\uff9f",
              "\u0e00-\u0eff", "\u0f00-\u0fff", "\u1000-\u109f", "\u1780-\u17ff", "\u19e0-\u19ff", "\ua000-\ua4cf",
              "\ua980-\ua9df", "\u1b00-\u1b7f", "\U00020000-\U0003134f"]
    return re.compile("[" + "".join(ranges) + "]")


_UNSEGMENTED_RE = _unsegmented_ranges()
_LETTER_RE = re.compile(r"[^\W\d_]")


def texts_in_unsegmented_script(texts: list[str], chars: int = 2000) -> float:
    """Share of texts whose letters are mostly in a script written without spaces (first ``chars`` each)."""
    if not texts:
        return 0.0
    hits = 0
    for text in texts:
        head = text[:chars]
        letters = len(_LETTER_RE.findall(head))
        hits += letters > 0 and len(_UNSEGMENTED_RE.findall(head)) * 2 > letters
    return hits / len(texts)


@dataclass
class Scripts:
    """Letters by script over a sample of texts, and how many texts are mostly unsegmented script."""

    letters: Counter
    unsegmented_texts: float
    kana: bool

    def shares(self, top: int = 3) -> str:
        """'Han 96%, Latin 4%' for comments."""
        total = sum(self.letters.values()) or 1
        named: Counter = Counter()
        for script, n in self.letters.items():
            named[SCRIPT_NAMES.get(script, script.title())] += n
        shown = [(s, 100 * n / total) for s, n in named.most_common(top) if 100 * n / total >= 0.5]
        return ", ".join(f"{s} {pct:.0f}%" for s, pct in shown) or "no letters"

    def language(self) -> str:
        """A readable name for what was detected."""
        if self.unsegmented_texts < 0.5:
            return "space-delimited script"
        if self.kana:
            return "Japanese (kana with Han)"
        main = next((s for s, _ in self.letters.most_common() if s in UNSEGMENTED), "CJK")
        return "Chinese (Han, no kana)" if main == "CJK" else f"{main.title()} script"


def scripts(texts: list[str], chars: int = 200_000) -> Scripts:
    """Count letters per script over at most ``chars`` characters of the sample."""
    counts: Counter = Counter()
    budget = chars
    for text in texts:
        counts.update(text[:budget])
        budget -= min(len(text), budget)
        if budget <= 0:
            break
    letters: Counter = Counter()
    for ch, n in counts.items():
        script = script_of(ch)
        if script:
            letters[script] += n
    kana = sum(letters[s] for s in ("HIRAGANA", "KATAKANA", "HALFWIDTH")) > 0.05 * sum(letters.values())
    return Scripts(letters, texts_in_unsegmented_script(texts), kana)


# ----------------------------------------------------------------------------- files (headers only)
@dataclass
class FileStats:
    """What a sample of image or audio files holds, and the ones that could not be opened."""

    opened: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason", the first few
    n_failed: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)  # image (height, width)
    modes: Counter = field(default_factory=Counter)  # image modes (L, RGB, P...)
    seconds: list[float] = field(default_factory=list)  # audio durations
    rates: Counter = field(default_factory=Counter)  # audio sample rates
    channels: Counter = field(default_factory=Counter)  # audio channels


def _open_each(name: str, cells: list, folder: Path, read: Any, stats: FileStats) -> FileStats:
    for cell in cells:
        where = str(cell)[:80] if not isinstance(cell, (bytes, bytearray)) else "<bytes>"
        try:
            source = resolve_media(cell, folder)
            read(io.BytesIO(source) if isinstance(source, bytes) else source, stats)
            stats.opened += 1
        except (BadInputError, OSError, ValueError, RuntimeError, SyntaxError) as e:
            stats.n_failed += 1
            if len(stats.failed) < 3:
                stats.failed.append(f"{where}: {str(e)[:120]}")
    if not stats.opened:
        raise BadInputError(f"none of the {len(cells)} sampled files could be opened (e.g. {stats.failed[0]}); "
                            "file paths are relative to the table's folder", column=name)
    return stats


def _read_image_header(source: Any, stats: FileStats) -> None:
    from PIL import Image, UnidentifiedImageError

    from polyfuse.preprocess.image import upright_size

    try:
        with Image.open(source) as img:  # lazy: reads the header, not the pixels
            width, height = upright_size(img)  # as decoded: EXIF orientation applied
            stats.sizes.append((height, width))
            stats.modes[img.mode] += 1
    except UnidentifiedImageError as e:
        raise ValueError(f"not an image ({e})") from None


def _read_audio_header(source: Any, stats: FileStats) -> None:
    import soundfile

    info = soundfile.info(source)
    stats.seconds.append(info.frames / info.samplerate if info.samplerate else 0.0)
    stats.rates[int(info.samplerate)] += 1
    stats.channels[int(info.channels)] += 1


def file_stats(name: str, kind: str, present: list, folder: Path, seed: int = 0) -> FileStats:
    """Open at most ``MAX_FILES`` sampled files of an image/audio column (headers only)."""
    read = _read_image_header if kind == "image" else _read_audio_header
    return _open_each(name, sample(present, MAX_FILES, seed), folder, read, FileStats())
