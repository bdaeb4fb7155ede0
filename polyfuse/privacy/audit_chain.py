"""The audit log's files and chain, shared by the writer (``audit.py``) and the checker (``audit_verify.py``):
sealing a line, the list of files, the head file, and the start-up scan that finds where the chain
ends, moving a damaged tail aside.

Head file: ``PATH.head`` holds the hash, sequence number and file number of the log's last line,
replaced atomically after every commit. A log whose current file was deleted, or whose last lines
were cut, no longer holds the line it names, so ``polyfuse audit verify`` (and the next server start)
can tell; copying it elsewhere (a log shipper) covers someone who also rewrites it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyfuse.errors import PolyfuseError

FORMAT = "polyfuse.audit/1"
GENESIS = "0" * 64  # the "previous hash" of the very first header
HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
ROTATED = re.compile(r"\.(\d{6})$")


class AuditError(PolyfuseError):
    """An audit log that cannot be opened, continued or written."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_line(entry: dict[str, Any]) -> bytes:
    """The line for ``entry`` (which holds ``prev``), ending in its own hash (no newline)."""
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return body[:-1] + b',"hash":"' + sha(body[:-1]).encode() + b'"}'


def intact(line: bytes) -> dict[str, Any] | None:
    """The entry of a line whose content matches its own hash, else None."""
    m = HASH_TAIL.search(line)
    if m is None or sha(line[:m.start()]) != m.group(1).decode():
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def log_files(path: str | Path) -> list[Path]:
    """Every file of the log, oldest first: PATH.000001, PATH.000002, ..., then PATH itself."""
    path = Path(path)
    rotated = sorted((p for p in path.parent.glob(path.name + ".*") if ROTATED.search(p.name)),
                     key=lambda p: int(ROTATED.search(p.name).group(1)))  # type: ignore[union-attr]
    return rotated + ([path] if path.exists() else [])


# ----------------------------------------------------------------------------- the head file
def head_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".head")


def write_head(path: Path, head: str, seq: int, file_no: int) -> None:
    """Replace PATH.head atomically (a temporary sibling renamed over it): a reader sees the old head or
    the new one, never half of one. Not fsync'd: after a crash it may name an earlier line of the
    (fsync'd) log, which verification accepts; only a line the log does not hold is an alarm."""
    tmp = path.with_name(path.name + ".head.tmp")
    tmp.write_text(json.dumps({"head": head, "seq": seq, "file": file_no}) + "\n")
    os.replace(tmp, head_path(path))


def read_head(path: str | Path) -> dict[str, Any] | None:
    """PATH.head as {"head", "seq", "file"}, None when there is none; AuditError when it is unreadable."""
    hp = head_path(path)
    try:
        head = json.loads(hp.read_text())
        if not re.fullmatch(r"[0-9a-f]{64}", str(head["head"])):
            raise ValueError
        return {"head": head["head"], "seq": int(head["seq"]), "file": int(head["file"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise AuditError(f"{hp}: not a head file (expected {{\"head\": HASH, \"seq\": N, \"file\": N}})") from None


# ----------------------------------------------------------------------------- where a log ends
@dataclass
class Tail:
    """Where a log's chain ends, as a writer continuing it needs it."""

    salt: bytes | None  # None: no log yet
    file_no: int = 1
    seq: int = 0
    prev: str = GENESIS
    size: int = 0  # bytes of PATH (0: PATH is to be started with a header)
    quarantine: dict[str, Any] | None = None  # a damaged tail moved aside at start (the entry to record)
    missing: dict[str, Any] | None = None  # what the head file names and the log no longer holds


def _good_end(f: Any, size: int) -> tuple[int, list[bytes]]:
    """The offset just past the file's last intact line, and the intact lines of the block read before
    it (for finding the head file's line). A torn or edited tail is skipped; 0 when nothing is intact."""
    block = min(size, 1 << 16)
    while True:
        base = size - block
        f.seek(base)
        data = f.read(block)
        end = data.rfind(b"\n") + 1  # a last line without its newline is torn
        while end > 0:
            start = data.rfind(b"\n", 0, end - 1) + 1
            if start == 0 and base > 0:
                break  # the line may begin before this block
            if intact(data[start:end - 1]) is not None:
                lines = [x for x in data[:end].split(b"\n") if x]
                return base + end, lines if base == 0 else lines[1:]
            end = start
        if base == 0:
            return 0, []
        block = min(size, block * 4)


def quarantine(file: Path, good: int, size: int) -> dict[str, Any]:
    """Move a damaged tail (bytes ``good``..``size`` of ``file``) into FILE.damaged-<time>, cut the file
    back to its last intact line, and return the quarantine entry the writer records in the chain."""
    with open(file, "rb") as f:
        f.seek(good)
        damaged = f.read(size - good)
    side = file.with_name(f"{file.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}")
    with open(side, "xb") as s:
        s.write(damaged)
        s.flush()
        os.fsync(s.fileno())
    with open(file, "r+b") as f:
        f.truncate(good)
        f.flush()
        os.fsync(f.fileno())
    return {"event": "quarantine", "file": file.name, "offset": good, "bytes": len(damaged),
            "sha256": sha(damaged), "moved_to": side.name}


def _check_head(path: Path, tail: Tail, lines: list[bytes]) -> dict[str, Any] | None:
    """What the head file says is missing from the log found at start, or None when it agrees. A head
    file naming an earlier line still in the log is a crash between a commit and the head's update."""
    try:
        head = read_head(path)
    except AuditError as e:  # the head is not fsync'd: a crash may leave it empty; say so, start anyway
        return {"unreadable": str(e)}
    if head is None or head["head"] == tail.prev:
        return None
    if head["seq"] <= tail.seq and head["head"] in {sha(x) for x in lines}:
        return None
    return {"head": head["head"], "seq": head["seq"], "file": head["file"], "found_seq": tail.seq,
            "found_file": tail.file_no if tail.size else tail.file_no - 1}


def find_tail(path: Path) -> Tail:
    """Where the log at ``path`` ends; a damaged tail of its last file is quarantined first."""
    if path.exists() and path.stat().st_size == 0:
        path.unlink()  # a new file whose header never got written (disk full, crash): it holds nothing
    files = log_files(path)
    if not files:
        tail = Tail(None)
        tail.missing = _check_head(path, tail, [])
        return tail
    last, moved = files[-1], None
    try:
        with open(last, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            good, lines = _good_end(f, size)
            f.seek(0)
            header = intact(f.readline().rstrip(b"\n"))
        if good == 0 or header is None or "audit" not in header:
            raise ValueError
        if good < size:
            moved = quarantine(last, good, size)
        entry = intact(lines[-1]) or {}
        tail = Tail(bytes.fromhex(header["salt"]), int(header["file"]),
                    int(entry.get("seq", entry.get("last_seq", 0))), sha(lines[-1]), good if last == path else 0)
    except (ValueError, KeyError, TypeError, OSError, IndexError):
        raise AuditError(f"{last}: the audit log's header is damaged, so its chain cannot be continued; run "
                         f"`polyfuse audit verify {path}`, then move its files aside (PATH.head too) to start a new log") from None
    if last != path:  # only rotated files left: the next file continues after the newest
        tail.file_no += 1
    tail.quarantine, tail.missing = moved, _check_head(path, tail, lines)
    return tail
