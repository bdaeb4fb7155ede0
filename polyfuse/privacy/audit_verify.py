"""Checking an audit log (``polyfuse audit verify``): the hash chain over every file, then the head it
must still hold. The chain shows edited, inserted and deleted lines and missing rotated files; lines
cut from the end, or a deleted current file, leave a shorter chain that is intact, so the head
(PATH.head beside the log, or a copy kept elsewhere given as ``expect_head``) must be found in it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from polyfuse.privacy.audit_chain import GENESIS, HASH_TAIL, head_path, log_files, read_head, sha


@dataclass
class Verdict:
    ok: bool
    lines: int  # predictions checked (headers and events not counted)
    files: int
    head: str  # hash of the last good line: keep it elsewhere to anchor the chain
    problem: str = ""
    notes: list[str] = field(default_factory=list)  # events worth a reader's eye (quarantines, outages)
    seq: int = 0  # the last prediction's sequence number


def _lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for f in files:
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                yield f, n, raw


def _event_note(where: str, entry: dict[str, Any]) -> str | None:
    """A line for the reader about an event, or None; a start that found lines missing is a problem."""
    kind = entry.get("event")
    if kind == "quarantine":
        return (f"{where}: at a start, {entry.get('bytes')} damaged bytes at the end of {entry.get('file')} were moved "
                f"to {entry.get('moved_to')} (sha256 {entry.get('sha256')})")
    if kind == "start" and "unreadable" in (entry.get("missing") or {}):
        return f"{where}: at this start the head file could not be read ({entry['missing']['unreadable']})"
    if kind == "write_error":
        return f"{where}: the log could not be written from {entry.get('since')} to {entry.get('time')}: {entry.get('error')}"
    return None


def _missing_at_start(entry: dict[str, Any]) -> str:
    m = entry["missing"]
    return (f"at this restart the head file named entry {m.get('seq')} in file {m.get('file')} (hash {m.get('head')}), "
            f"which the log no longer held (it ended at entry {m.get('found_seq')} in file {m.get('found_file')}): "
            "lines were cut from its end or its current file was deleted before the restart")


def _check_line(entry: dict[str, Any], n: int, seq: int, expect_file: int, salt: str | None) -> str | None:
    """Why a parsed, self-consistent line does not fit where it is, or None."""
    if "audit" in entry:  # a file's header
        if n != 1:
            return "a header line inside a file"
        if entry.get("file") != expect_file:
            return (f"this is file number {entry.get('file')} of the log, expected {expect_file}: "
                    "a rotated file is missing or out of place")
        if salt is not None and entry.get("salt") != salt:
            return "the salt changed between files of one log"
    elif n == 1:
        return "the file does not start with a header line"
    elif "seq" in entry:
        if entry.get("seq") != seq + 1:
            gap = isinstance(entry.get("seq"), int) and entry["seq"] > seq + 1
            return (f"sequence number {entry.get('seq')} where {seq + 1} was expected: "
                    f"{'a line before it was deleted' if gap else 'lines are out of order or repeated'}")
    if "seq" not in entry and "last_seq" in entry and entry["last_seq"] != seq:
        return f"it follows entry {entry['last_seq']} but comes after entry {seq}: a line before it was deleted"
    if entry.get("event") == "start" and entry.get("missing") and "unreadable" not in entry["missing"]:
        return _missing_at_start(entry)
    return None


def verify_chain(path: str | Path, wanted: set[str] = frozenset()) -> tuple[Verdict, dict[str, int]]:
    """Check the whole chain, every rotated file included; names the first bad line and why. Also
    returns, for each hash in ``wanted`` found in the chain, how many predictions follow it."""
    files = log_files(path)
    if not files:
        return Verdict(False, 0, 0, GENESIS, f"{path}: no audit log there"), {}
    prev, seq, expect_file, salt, notes, found = GENESIS, 0, 1, None, [], {}
    for f, n, raw in _lines(files):
        def bad(why: str) -> tuple[Verdict, dict[str, int]]:
            return Verdict(False, seq, len(files), prev, f"{f}:{n}: {why}", notes, seq), found

        if not raw.endswith(b"\n"):
            return bad("the line is incomplete (the file was truncated or the writer stopped mid-line)")
        line = raw[:-1]
        m = HASH_TAIL.search(line)
        if m is None:
            return bad("no hash at the end of the line: it was edited or is not an audit line")
        if sha(line[:m.start()]) != m.group(1).decode():
            return bad("the line's content does not match its hash: the line was edited")
        try:
            entry = json.loads(line)
        except ValueError:
            return bad("not valid JSON")
        why = _check_line(entry, n, seq, expect_file, salt) if isinstance(entry, dict) else "not a JSON object"
        if why is not None:
            return bad(why)
        if entry.get("prev") != prev:
            return bad("its 'prev' is not the hash of the line before it: a line before it was deleted, "
                       "inserted or edited (with its own hash recomputed)")
        if "audit" in entry:
            salt, expect_file = entry.get("salt"), expect_file + 1
        seq += "seq" in entry
        note = _event_note(f"{f}:{n}", entry)
        notes += [note] if note else []
        prev = sha(line)
        if prev in wanted:
            found[prev] = seq
    return Verdict(True, seq, len(files), prev, "", notes, seq), {h: seq - s for h, s in found.items()}


def verify(path: str | Path, expect_head: str | None = None, head_file: bool = True) -> Verdict:
    """The chain (``verify_chain``), then the heads it must hold: ``expect_head`` (a hash kept elsewhere)
    and, with ``head_file``, the one PATH.head names. A head not found names what is missing."""
    head = read_head(path) if head_file else None
    wanted = {h for h in (expect_head, head and head["head"]) if h}
    v, found = verify_chain(path, wanted)
    if not v.ok:
        return v
    ends = f"the log ends at entry {v.seq} in {v.files} file(s) (hash {v.head})"
    if head is not None and head["head"] not in found:
        v.ok = False
        v.problem = (f"{head_path(path)} names entry {head['seq']} in file {head['file']} (hash {head['head']}), "
                     f"which the log does not hold; {ends}: "
                     + (f"entries {v.seq + 1}..{head['seq']} are missing (cut from the end, or the current file deleted)"
                        if head["seq"] > v.seq else "its last lines were cut or replaced"))
    elif expect_head and expect_head not in found:
        v.ok = False
        v.problem = (f"the expected head {expect_head} is not in the chain; {ends}: the lines from the expected "
                     "head back to where the log now ends were cut, or the log was replaced")
    elif expect_head and found[expect_head]:
        v.notes.append(f"{found[expect_head]} entries were written after the expected head")
    return v
