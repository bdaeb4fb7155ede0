"""Adversarial inputs for the de-identification rules, shared by ``tests/test_pii_linear.py`` (each rule
runs in time linear in its input) and ``benchmarks/attack_deid.py`` (MB/s on each rule's worst input).

A rule that backtracks super-linearly does so on text that repeats one of its own repeated or
alternative parts (``"Calle " + "della" * 25`` for the old particle run, ``"a." * n`` for the old
URL scheme), so the inputs are built from each compiled pattern's parse tree: for every repeat and
every branch, the text that leads to it followed by that part over and over, in three shapes (one
long run; short runs of 30 copies separated by spaces, as ``("+" + "1"*30 + " ") * n``; the lead-in
and one copy repeated). :data:`NAMED` adds the inputs reported against the old rules and the usual
suspects, which the finders and the full :func:`polyfuse.privacy.pii.redact` are also run on.
"""
from __future__ import annotations

import re
import time
from re import _constants as C  # the parse tree's opcodes (Python 3.11+)
from re import _parser as sre_parse
from typing import Callable, Iterator

from polyfuse.privacy import pii, pii_names

# (lead-in, unit): the input is the lead-in, then the unit repeated to the size asked
NAMED: dict[str, tuple[str, str]] = {
    "Calle della..1": ("Calle ", "della"), "Calle della ..": ("Calle ", "della "), "a.": ("", "a."),
    "+1*30 ": ("", "+" + "1" * 30 + " "), "1": ("", "1"), "1 ": ("", "1 "), "+1": ("", "+1"),
    "www.a.": ("www.", "a."), "@": ("", "@"), "a@": ("", "a@"), "a@a.": ("a@", "a."), "-": ("", "-"),
    "1-": ("", "1-"), "Mr. ": ("", "Mr. "), "先生": ("", "先生"), "路..号": ("", "路"), "1234 ": ("", "1234 "),
    "spaces": ("Signed", " "), "a:": ("", "a:"), "a.a://": ("", "a.a://"), "http://a ": ("", "http://a "),
    "王先生": ("", "王先生"), "路1号1": ("建国路1号", "1"), "rue de ": ("12 rue ", "de "), "Aa": ("", "Aa"),
    "1 Aa ": ("1 ", "Aa "), "a@b.co ": ("", "a@b.co "), "13812345678 ": ("", "13812345678 "),
    "市*29路1号": ("", "市" * 29 + "路1号"), "省市区镇的路1号": ("", "一一省一一市一区一镇的路1号"),
    "省市区镇": ("", "一一省一一市一区一镇一"), "小区1栋": ("", "小区1栋"),
}
_SUFFIX = {"路..号": "号", "Calle della..1": "1"}  # an ending that makes the whole text fail at the last moment
_MAX_ALTERNATIVES = 4  # of a long alternation (surnames, street words) the first and the longest are tried
_CATEGORY = {C.CATEGORY_DIGIT: "1", C.CATEGORY_SPACE: " ", C.CATEGORY_WORD: "a", C.CATEGORY_NOT_DIGIT: "a",
             C.CATEGORY_NOT_SPACE: "a", C.CATEGORY_NOT_WORD: " "}


def patterns() -> dict[str, re.Pattern]:
    """Every compiled pattern of the two rule modules, by module and name (the phone list by index)."""
    found: dict[str, re.Pattern] = {}
    for module in (pii, pii_names):
        short = module.__name__.rsplit(".", 1)[-1]
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found[f"{short}.{name}"] = value
            elif isinstance(value, list) and value and all(isinstance(v, re.Pattern) for v in value):
                found.update({f"{short}.{name}[{i}]": v for i, v in enumerate(value)})
    return found


Rule = tuple[Callable[[str], object], "re.Pattern | None"]  # the rule, and the pattern its inputs come from


def rules() -> dict[str, Rule]:
    """Every rule as a callable over a text: each pattern's finditer, the Chinese address rule as
    find_addresses applies it (only where a match can start; in place of that pattern's finditer), each
    finder of ``pii.find`` (names and addresses included) and the full redaction; with the pattern whose
    parts make its inputs."""
    found: dict[str, Rule] = {name: (lambda text, rx=rx: list(rx.finditer(text)), rx) for name, rx in patterns().items()}
    # the Chinese address pattern is applied only by _cn_addresses, from a few starts before each ending,
    # never by finditer over a whole text: that is the rule to time (its inputs are the pattern's parts)
    del found["pii_names._CN_ADDRESS"]
    found["pii_names._cn_addresses"] = (lambda text: list(pii_names._cn_addresses(text)), pii_names._CN_ADDRESS)
    for kind in pii.ENTITIES:
        found[f"find.{kind}"] = (lambda text, kind=kind: list(pii._FINDERS[kind](text)), None)
    found["redact"] = (pii.redact, None)
    return found


def _char(items: list) -> str:
    """A character of the class ``[...]`` (or outside it, for ``[^...]``)."""
    negate = bool(items) and items[0][0] is C.NEGATE
    if not negate:
        op, av = items[0]
        return chr(av) if op is C.LITERAL else chr(av[0]) if op is C.RANGE else _CATEGORY.get(av, "a")
    return next(ch for ch in "a1 .-xZ_" if not re.fullmatch(f"[{''.join(_show(i) for i in items[1:])}]", ch))


def _show(item: tuple) -> str:
    op, av = item
    if op is C.LITERAL:
        return re.escape(chr(av))
    if op is C.RANGE:
        return f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}"
    return {C.CATEGORY_DIGIT: r"\d", C.CATEGORY_SPACE: r"\s", C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_DIGIT: r"\D",
            C.CATEGORY_NOT_SPACE: r"\S", C.CATEGORY_NOT_WORD: r"\W"}.get(av, "")


def sample(items) -> str:
    """The shortest-ish text that a parsed (sub)pattern matches: first alternatives, minimal repeats
    (at least once), lookarounds and anchors empty."""
    out = []
    for op, av in items:
        if op is C.LITERAL:
            out.append(chr(av))
        elif op is C.NOT_LITERAL or op is C.ANY:
            out.append("a" if av != ord("a") else "b")
        elif op is C.IN:
            out.append(_char(av))
        elif op is C.BRANCH:
            out.append(sample(av[1][0]))
        elif op is C.SUBPATTERN:
            out.append(sample(av[3]))
        elif op is C.ATOMIC_GROUP:
            out.append(sample(av))
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            out.append(sample(av[2]) * max(av[0], 1))
    return "".join(out)


def _choose(alternatives: list) -> list:
    if len(alternatives) <= _MAX_ALTERNATIVES:
        return alternatives
    longest = sorted(alternatives[1:], key=lambda a: -len(sample(a)))
    return [alternatives[0], *longest[: _MAX_ALTERNATIVES - 1]]


def _parts(items, lead: str) -> Iterator[tuple[str, str]]:
    """(lead-in, unit) for every repeat and branch alternative under ``items``, depth first."""
    for i, (op, av) in enumerate(items):
        before = lead + sample(items[:i])
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            yield before, sample(av[2])
            yield from _parts(av[2], before)
        elif op is C.BRANCH:
            for alternative in _choose(av[1]):
                yield before, sample(alternative)
                yield from _parts(alternative, before)
        elif op is C.SUBPATTERN:
            yield from _parts(av[3], before)
        elif op in (C.ATOMIC_GROUP, C.ASSERT, C.ASSERT_NOT):
            yield from _parts(av if op is C.ATOMIC_GROUP else av[1], before)


def build(lead: str, unit: str, size: int, shape: str = "run", suffix: str = "") -> str:
    """``size`` characters: ``run`` = lead + unit*n (+ suffix); ``bursts`` = (lead + unit*30 + " ")*n;
    ``copies`` = (lead + unit)*n."""
    piece = {"run": unit, "bursts": lead + unit * 30 + " ", "copies": lead + unit}[shape]
    head = lead if shape == "run" else ""
    count = max(1, (size - len(head) - len(suffix)) // max(1, len(piece)))
    return head + piece * count + suffix


def inputs(rx: re.Pattern | None, size: int) -> dict[str, str]:
    """:data:`NAMED`'s texts, then the adversarial texts built from one pattern's parts (none for
    None), ``size`` characters each, by a readable label."""
    texts = named_inputs(size)
    seen = set(texts.values())
    parts = dict.fromkeys(_parts(sre_parse.parse(rx.pattern, rx.flags), "")) if rx is not None else {}
    for lead, unit in parts:
        for shape in ("run", "bursts", "copies"):
            text = build(lead, unit, size, shape)
            if unit and text not in seen:
                seen.add(text)
                texts[f"{len(texts)}: {shape}({lead[-12:]!r} + {unit[:12]!r}...)"] = text
    return texts


def named_inputs(size: int) -> dict[str, str]:
    return {name: build(lead, unit, size, suffix=_SUFFIX.get(name, "")) for name, (lead, unit) in NAMED.items()}


def best_seconds(rule: Callable[[str], object], text: str, repeats: int = 1) -> float:
    """The fastest of ``repeats`` timings of ``rule(text)``: the least disturbed by a busy machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        rule(text)
        best = min(best, time.perf_counter() - t0)
    return best
