"""The audit trail of a served model: one JSON line per prediction request, hash-chained, rotated by size.

A line holds the time, the request id, the API-key id (never the key), the served model's digest
(sha256 of its manifest.json), salted digests of each record's inputs (never the inputs), the
outputs and the latency. Lines are never about request contents beyond those digests: the salt
(random, one per log, in every file's header line) makes a digest useless to anyone who has not
got both the log and the exact input, while whoever holds a disputed input can still show that it
was (or was not) sent.

Chain: every line carries ``prev``, the sha256 of the previous line's bytes, and ``hash``, the
sha256 of its own bytes up to that field; a file's header line carries the hash of the last line
of the file before it, so the chain runs across rotations. An edited line no longer matches its own
hash; a deleted line breaks ``seq`` and ``prev``; a deleted rotated file breaks the file numbering.
What a chain cannot show is a rewrite of every line after an edit by someone with write access:
keep a copy of the latest hash (``polyfuse audit verify`` prints it) somewhere else to anchor it.

Files: PATH is written; when it would pass the size limit it is renamed PATH.000001, .000002, ...
(oldest first) and a new PATH starts. Hashing, encoding and writing happen on a thread of their
own, so a request only pays for putting a tuple on a queue.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from polyfuse.errors import PolyfuseError

FORMAT = "polyfuse.audit/1"
GENESIS = "0" * 64  # the "previous hash" of the very first header
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_ROTATED = re.compile(r"\.(\d{6})$")


class AuditError(PolyfuseError):
    """An audit log that cannot be opened or continued."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_line(entry: dict[str, Any]) -> bytes:
    """The line for ``entry`` (which holds ``prev``), ending in its own hash (no newline)."""
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return body[:-1] + b',"hash":"' + _sha(body[:-1]).encode() + b'"}'


def input_digest(salt: bytes, field: str, value: Any) -> str | None:
    """A salted, keyed BLAKE2b digest (128 bits) of one input value; the field name (and an array's
    dtype and shape) are part of it, so equal bytes in two fields or two shapes give two digests."""
    if value is None:
        return None
    data = (bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else value.tobytes()
            if hasattr(value, "tobytes") else repr(value).encode())  # arrays whole (repr elides big ones)
    h = hashlib.blake2b(key=salt, digest_size=16, person=b"polyfuse-audit")
    h.update(field.encode() + b"\0")
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # the same bytes as [2, 3] and [3, 2] differ
        h.update(f"{value.dtype.str}{tuple(value.shape)}".encode() + b"\0")
    h.update(data)
    return h.hexdigest()


def log_files(path: str | Path) -> list[Path]:
    """Every file of the log, oldest first: PATH.000001, PATH.000002, ..., then PATH itself."""
    path = Path(path)
    rotated = sorted((p for p in path.parent.glob(path.name + ".*") if _ROTATED.search(p.name)),
                     key=lambda p: int(_ROTATED.search(p.name).group(1)))  # type: ignore[union-attr]
    return rotated + ([path] if path.exists() else [])


def _last_line(path: Path) -> bytes:
    """The file's last non-empty line (read from the end: logs grow large)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, 1 << 16)
        while True:
            f.seek(size - block)
            data = f.read(block).rstrip(b"\n")
            if b"\n" in data or block == size:
                return data.rsplit(b"\n", 1)[-1]
            block = min(size, block * 4)


@dataclass
class _Entry:
    """What a request hands the writer: raw values, hashed and encoded on the writer's thread."""

    at: float
    request_id: str
    key_id: str | None
    records: list[dict[str, Any]]
    labels: dict[str, list]
    probs: dict[str, Any]
    ms: float


class AuditLog:
    """Appends audit lines to ``path`` from a writer thread; ``record`` is all a request calls."""

    BATCH_S = 0.05  # the writer wakes at most this often: a line is on disk within ~50 ms of its answer

    def __init__(self, path: str | Path, model_digest: str, max_bytes: int = 100 << 20):
        self.path, self.model, self.max_bytes = Path(path), model_digest, max(int(max_bytes), 4096)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self.error: str | None = None  # set when a write failed: the server then refuses predictions (503)
        self._resume()
        self._file = open(self.path, "ab")
        self._size = self._file.tell()
        if self._size == 0:
            self._header()
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()

    # -- start-up: continue the chain of an existing log, or begin one
    def _resume(self) -> None:
        files = log_files(self.path)
        if not files:
            self.salt, self.file_no, self.seq, self.prev = secrets.token_bytes(16), 1, 0, GENESIS
            return
        if not self.path.exists():  # only rotated files left: the next file continues after the newest
            last_file = files[-1]
            self.file_no = int(_ROTATED.search(last_file.name).group(1)) + 1  # type: ignore[union-attr]
        else:
            last_file = self.path
        try:
            with open(last_file, "rb") as f:
                header = json.loads(f.readline())
            last = _last_line(last_file)
            tail = json.loads(last)
            self.salt = bytes.fromhex(header["salt"])
            self.seq = int(tail.get("seq", 0))
            if _HASH_TAIL.search(last) is None:
                raise ValueError("no hash")
            self.prev = _sha(last)
            if last_file == self.path:
                self.file_no = int(header["file"])
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise AuditError(f"{last_file}: the audit log's header or last line is damaged, so its chain cannot "
                             f"be continued; run `polyfuse audit verify {self.path}`, then move the files aside "
                             "to start a new log") from None

    def _write(self, entry: dict[str, Any]) -> None:
        line = seal_line({**entry, "prev": self.prev})
        if self._size > 0 and self._size + len(line) + 1 > self.max_bytes and "audit" not in entry:
            self._rotate()  # the new file's header comes first, so the line is sealed again after it
            line = seal_line({**entry, "prev": self.prev})
        self.prev = _sha(line)
        self._file.write(line + b"\n")
        self._size += len(line) + 1

    def _header(self) -> None:
        self._write({"audit": FORMAT, "file": self.file_no, "salt": self.salt.hex(), "created": _iso(time.time())})

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{self.file_no:06d}"))
        self.file_no += 1
        self._file, self._size = open(self.path, "ab"), 0
        self._header()

    # -- the request side
    def record(self, request_id: str, key_id: str | None, records: list[dict[str, Any]], labels: dict[str, list],
               probs: dict[str, Any], seconds: float) -> None:
        """Queue one prediction's line: ``labels`` per output as the server answers them, ``probs`` the
        model's arrays (a 2-D one gives each record's top probability). Cheap: hashing and encoding
        happen on the writer's thread."""
        self._queue.put(_Entry(time.time(), request_id, key_id, records, labels, probs, round(seconds * 1e3, 2)))

    # -- the writer
    def _line(self, e: _Entry) -> dict[str, Any]:
        self.seq += 1
        inputs = [{k: input_digest(self.salt, k, v) for k, v in r.items()} for r in e.records]
        outputs: list[dict[str, Any]] = [{} for _ in e.records]
        for name, values in e.labels.items():
            p = e.probs.get(name)
            for i, value in enumerate(values):
                outputs[i][name] = value.item() if hasattr(value, "item") else value  # numpy scalars
                if p is not None and getattr(p, "ndim", 1) == 2:
                    outputs[i][f"{name}_probability"] = round(float(p[i].max()), 6)
        return {"seq": self.seq, "time": _iso(e.at), "request_id": e.request_id, "key_id": e.key_id,
                "model": self.model, "inputs": inputs, "outputs": outputs, "ms": e.ms}

    def _run(self) -> None:
        _name_os_thread("polyfuse-audit")
        try:
            self._drain()
        except Exception as e:  # noqa: BLE001 - disk full, permissions...: fail closed, never lose lines quietly
            self.error = f"{self.path}: {type(e).__name__}: {e}"
            print(f"polyfuse serve: the audit log cannot be written ({self.error}); predictions are refused "
                  "until it is fixed and the server restarted", file=sys.stderr, flush=True)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            while item is not None:
                self._write(self._line(item))
                try:  # write out everything queued, then flush once
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._file.flush()
            if item is None:
                return
            # work in batches: one wake-up per interval instead of one per request, each of which
            # takes the GIL from the event loop and the preprocessing threads
            time.sleep(self.BATCH_S)

    def close(self) -> None:
        """Write every queued line and close the file (the server calls it on shutdown)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(30)
        try:
            self._file.close()
        except OSError:  # the error that stopped the writer, met again on the final flush
            pass


def _name_os_thread(name: str) -> None:
    """The calling thread's name as the OS shows it (``top -H``, /proc/PID/task/TID/comm), so the
    writer's CPU can be told from the server's; Linux only, elsewhere nothing happens."""
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])
    except OSError:
        pass


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# ----------------------------------------------------------------------------- verification
@dataclass
class Verdict:
    ok: bool
    lines: int  # entries checked (headers not counted)
    files: int
    head: str  # hash of the last good line: keep it elsewhere to anchor the chain
    problem: str = ""


def _lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for f in files:
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                yield f, n, raw


def verify(path: str | Path) -> Verdict:
    """Check the whole chain, every rotated file included; names the first bad line and why."""
    files = log_files(path)
    if not files:
        return Verdict(False, 0, 0, GENESIS, f"{path}: no audit log there")
    prev, seq, entries, expect_file = GENESIS, 0, 0, 1
    salt = None
    for f, n, raw in _lines(files):
        where = f"{f}:{n}"

        def bad(why: str) -> Verdict:
            return Verdict(False, entries, len(files), prev, f"{where}: {why}")

        if not raw.endswith(b"\n"):
            return bad("the line is incomplete (the file was truncated or the writer stopped mid-line)")
        line = raw[:-1]
        m = _HASH_TAIL.search(line)
        if m is None:
            return bad("no hash at the end of the line: it was edited or is not an audit line")
        if _sha(line[:m.start()]) != m.group(1).decode():
            return bad("the line's content does not match its hash: the line was edited")
        try:
            entry = json.loads(line)
        except ValueError:
            return bad("not valid JSON")
        if "audit" in entry:  # a file's header
            if n != 1:
                return bad("a header line inside a file")
            if entry.get("file") != expect_file:
                return bad(f"this is file number {entry.get('file')} of the log, expected {expect_file}: "
                           "a rotated file is missing or out of place")
            if salt is not None and entry.get("salt") != salt:
                return bad("the salt changed between files of one log")
            salt = entry.get("salt")
            expect_file += 1
        elif n == 1:
            return bad("the file does not start with a header line")
        else:
            if entry.get("seq") != seq + 1:
                return bad(f"sequence number {entry.get('seq')} where {seq + 1} was expected: "
                           f"{'a line before it was deleted' if isinstance(entry.get('seq'), int) and entry['seq'] > seq + 1 else 'lines are out of order or repeated'}")
            seq += 1
            entries += 1
        if entry.get("prev") != prev:
            return bad("its 'prev' is not the hash of the line before it: a line before it was deleted, "
                       "inserted or edited (with its own hash recomputed)")
        prev = _sha(line)
    return Verdict(True, entries, len(files), prev)
