"""Rule-based de-identification of text: PII spans become typed placeholders (``<EMAIL>``...).

Called from the text decode (:func:`polyfuse.preprocess.text.decode`), so training, the
torch-free runtime and the server replace the same spans the same way. Regex and checksums only:
Chinese resident IDs must pass the GB 11643-1999 check digit (and carry a plausible birth date),
bank cards the Luhn check, so a random 18-digit or 16-digit number is rarely flagged. Person names
and postal addresses come from context and structure rules (:mod:`polyfuse.privacy.pii_names`).
"""
from __future__ import annotations

import bisect
import ipaddress
import re
from typing import Callable, Iterable, Iterator, NamedTuple

from polyfuse.privacy.pii_names import find_addresses, find_persons

ENTITIES = ("email", "url", "ip", "cn_id", "bank_card", "phone", "address", "person")
PLACEHOLDER = {e: f"<{e.upper()}>" for e in ENTITIES}


class Span(NamedTuple):
    start: int
    end: int
    type: str


# re.ASCII on purpose: with Unicode \w and \b, Chinese text around an entity would count as part of it
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.ASCII)
# A scheme ("https://") is tried once per run of scheme characters, from the run's start (the
# lookahead checks the run ends in "://", the atomic group finds the first letter a word starts
# with, where the match always began): trying it at every "a" of "a.a.a..." rescanned the run each
# time, quadratic. Group u or w holds the link (the run's prefix before u is not part of it).
_URL_CHARS = r"[^\s<>\"'\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]+"
_URL = re.compile(rf"(?<![A-Za-z0-9+.-])(?=[A-Za-z0-9+.-]*+://)(?>[A-Za-z0-9+.-]*?\b(?=[A-Za-z]))(?P<u>[A-Za-z][A-Za-z0-9+.-]*+://"
                  rf"{_URL_CHARS})|(?P<w>\bwww\.{_URL_CHARS})", re.ASCII)
_URL_TAIL = ".,;:!?)]}'\""  # sentence punctuation after a link is not part of it
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)", re.ASCII)
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])", re.ASCII)
_CN_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])", re.ASCII)
_CARD = re.compile(r"(?<![\d-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\d-])", re.ASCII)
_PHONES = [
    re.compile(r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)", re.ASCII),  # Chinese mobile
    re.compile(r"(?<![\d\w])0\d{2,3}-\d{7,8}(?!\d)", re.ASCII),  # Chinese landline with area code: 010-12345678
    re.compile(r"(?<![\d\w])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[.-])\d{3}[.-]\d{4}(?!\d)", re.ASCII),  # North America
    # international +CC ...: each group atomic, as many digits as it can hold; re-splitting a run of
    # digits between the groups (5+3 or 4+4) reaches no end the greedy split cannot, and was ~25^5 tries
    re.compile(r"(?<![\d\w])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?>[ .-]?\d{1,5}){1,5}(?!\d)", re.ASCII),
]
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_id_check_digit(first17: str) -> str:
    """The GB 11643-1999 check character (0-9 or X) of the first 17 digits of a resident ID."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


def valid_cn_id(s: str) -> bool:
    """18 characters, a plausible birth date (YYYYMMDD at 7-14) and a correct check character."""
    year, month, day = int(s[6:10]), int(s[10:12]), int(s[12:14])
    if not (1900 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    return cn_id_check_digit(s[:17]) == s[17].upper()


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _url_span(m: re.Match) -> tuple[int, int]:
    group = m.lastgroup or 0
    text = m.group(group).rstrip(_URL_TAIL)
    return m.start(group), m.start(group) + len(text)


def _valid_ipv6(s: str) -> bool:
    if s.count(":") < 2 or not any(c.isalnum() for c in s):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _valid_phone(s: str) -> bool:
    return 8 <= len(_digits(s)) <= 15


def _valid_card(s: str) -> bool:
    digits = _digits(s)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _matches(patterns: list[re.Pattern], valid: Callable[[str], bool], gate: str, url: bool = False
             ) -> Callable[[str], Iterator[tuple[int, int]]]:
    """The finder of ``patterns``' valid spans; none is tried on a text without ``gate`` (a character
    every match holds: one C scan where each pattern cost ~50 ns a character)."""
    needed = re.compile(gate)

    def spans(text: str) -> Iterator[tuple[int, int]]:
        if not needed.search(text):
            return
        for pattern in patterns:
            for m in pattern.finditer(text):
                start, end = _url_span(m) if url else m.span()
                if end > start and valid(text[start:end]):
                    yield start, end
    return spans


# type -> the spans of that type in a text
_FINDERS: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "email": _matches([_EMAIL], lambda s: True, "@"),
    "url": _matches([_URL], lambda s: True, "://|www\\.", url=True),
    "ip": _matches([_IPV4, _IPV6], lambda s: "." in s or _valid_ipv6(s), r"\d\.|:"),
    "cn_id": _matches([_CN_ID], valid_cn_id, r"\d"),
    "bank_card": _matches([_CARD], _valid_card, r"\d"),
    "phone": _matches(_PHONES, _valid_phone, r"\d"),
    "address": find_addresses,
    "person": find_persons,
}


def entity_types(setting: bool | Iterable[str] | None) -> tuple[str, ...]:
    """The spec's ``deidentify`` value as entity types: True = all, False/None/[] = none."""
    if setting is True:
        return ENTITIES
    if not setting:
        return ()
    return tuple(e for e in ENTITIES if e in set(setting))


def find(text: str, types: Iterable[str] = ENTITIES) -> list[Span]:
    """PII spans in ``text``, non-overlapping and in order; the longest wins where rules overlap
    (an email inside a URL is part of the URL; a phone-like run inside an ID is the ID; a name inside
    an address, "12 Victoria Street", is the address)."""
    rank = {kind: i for i, kind in enumerate(ENTITIES)}
    # plain tuples, longest first, sorted in C: a text dense in entities (王先生 repeated) spent most
    # of its time building and ordering objects
    candidates = [(start - end, rank[kind], start, end) for kind in types for start, end in _FINDERS[kind](text)]
    candidates.sort()
    chosen: list[tuple[int, int, int]] = []  # disjoint and sorted, so a span overlaps one iff it overlaps
    starts: list[int] = []                   # a neighbour: checking every chosen span cost n^2
    for _, r, start, end in candidates:
        i = bisect.bisect_left(starts, start)
        if (i == 0 or chosen[i - 1][1] <= start) and (i == len(chosen) or end <= chosen[i][0]):
            chosen.insert(i, (start, end, r))
            starts.insert(i, start)
    return [Span(start, end, ENTITIES[r]) for start, end, r in chosen]


def redact(text: str, types: Iterable[str] = ENTITIES) -> str:
    """``text`` with every PII span replaced by its placeholder, e.g. ``<EMAIL>``."""
    return redact_prefix(text, types, len(text))


# What the rules see past a cut: more than any bounded entity (an address with its unit and postcode,
# a spaced phone, a grouped card), so one that straddles the cut is still recognised whole
CUT_MARGIN = 256


def redact_prefix(text: str, types: Iterable[str], keep: int) -> str:
    """The first ``keep`` characters of ``text``, redacted, the rest dropped. The rules read only
    ``keep + CUT_MARGIN`` characters, so the cost is bounded by ``keep`` whatever the text's length;
    an entity that starts before the cut is replaced whole (its placeholder ends the text), so no
    part of one is left showing."""
    types = tuple(types)
    if not types:
        return text[:keep]
    window = text[: keep + CUT_MARGIN]
    out, pos = [], 0
    for span in find(window, types):
        if span.start >= keep:
            break
        out.append(window[pos:span.start])
        out.append(PLACEHOLDER[span.type])
        pos = span.end
    out.append(window[pos:keep])
    return "".join(out)
