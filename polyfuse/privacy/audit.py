"""The audit trail of a served model: one JSON line per prediction request, hash-chained, rotated by size.

A line holds the time, the server's request id (and the client's ``x-request-id`` beside it, capped),
the API-key id (never the key), the served model's digest (sha256 of its manifest.json), salted
digests of each record's inputs (never the inputs), the outputs and the latency. Lines are never
about request contents beyond those digests: the salt (random, one per log, in every file's header
line) makes a digest useless to anyone who has not got both the log and the exact input, while
whoever holds a disputed input can still show that it was (or was not) sent.

Chain: every line carries ``prev``, the sha256 of the previous line's bytes, and ``hash``, the
sha256 of its own bytes up to that field; a file's header line carries the hash of the last line
of the file before it, so the chain runs across rotations. Besides predictions (numbered by ``seq``)
the chain holds events, numbered by the ``last_seq`` they follow: ``start`` (each server start, with
the head it continues from and anything the head file names that is gone), ``quarantine`` (a damaged
tail moved aside at start) and ``write_error`` (an outage of the disk, recorded once it is over).

Durability: a prediction is answered only once its line is on disk. ``record`` returns a future; the
writer thread takes everything queued, appends it as whole lines, fsyncs once and then resolves the
futures (group commit: under load one fsync covers every request that arrived during the previous
one). A failed write (disk full) is cut back to the last committed length, so the file never ends in
a partial line; the batch's requests get AuditWriteError (the server answers 503) and the writer
retries every RETRY_S seconds. Files: PATH is written; past the size limit it is renamed PATH.000001,
.000002, ... (oldest first) and a new PATH starts; PATH.head names the last line (audit_chain.py).
"""
from __future__ import annotations

import hashlib
import os
import queue
import secrets
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyfuse.privacy.audit_chain import FORMAT, AuditError, find_tail, iso, seal_line, sha, write_head


class AuditWriteError(AuditError):
    """A line that could not be written: its prediction must not be answered."""


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


@dataclass
class _Entry:
    """What a request hands the writer: raw values, hashed and encoded on the writer's thread."""

    at: float
    request_id: str
    client_request_id: str | None
    key_id: str | None
    records: list[dict[str, Any]]
    labels: dict[str, list]
    probs: dict[str, Any]
    ms: float
    done: Future


def _settle(done: Future, error: Exception | None) -> None:
    try:  # a request that timed out or left cancelled its future: nobody waits any more
        done.set_exception(error) if error is not None else done.set_result(None)
    except InvalidStateError:
        pass


def _sync(fd: int) -> None:
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)  # data and the size, not the mtime


def _sync_dir(path: Path) -> None:
    """Make a created or renamed file's directory entry durable (Linux; elsewhere nothing happens)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AuditLog:
    """Appends audit lines to ``path`` from a writer thread; ``record`` is all a request calls."""

    RETRY_S = 1.0  # while the disk fails, the writer tries again this often
    MAX_BATCH = 1024  # lines per commit at most (bounds the bytes a failed write has to undo)

    def __init__(self, path: str | Path, model_digest: str, max_bytes: int = 100 << 20):
        self.path, self.model, self.max_bytes = Path(path), model_digest, max(int(max_bytes), 4096)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self.error: str | None = None  # set while writes fail: the server then refuses predictions (503)
        tail = find_tail(self.path)  # quarantines a damaged tail; compares the head file
        self.salt = tail.salt or secrets.token_bytes(16)
        self.file_no, self.seq, self.prev, self._size = tail.file_no, tail.seq, tail.prev, tail.size
        self._mark = (self._size, self.seq, self.prev)  # the last durable point: size, seq, hash
        self._fd: int | None = None
        self._dirty = False  # a failed write may have left bytes past the mark: cut them before writing
        self._head_failed = False
        start = {"event": "start", "time": iso(time.time()), "previous_head": tail.prev, "model": self.model}
        if tail.missing:  # kept in the chain: the next head file would otherwise hide the cut for good
            start["missing"] = tail.missing
            print(f"polyfuse serve: the audit log {self.path} does not hold the line its head file names "
                  f"({tail.missing}); recorded in the chain's start entry, which `polyfuse audit verify` reports",
                  file=sys.stderr, flush=True)
        self._events: list[dict[str, Any]] = [start] + ([tail.quarantine] if tail.quarantine else [])
        self._commit([])  # the start entry now: a disk that cannot take it shows before any request
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()

    # -- the request side
    def record(self, request_id: str, key_id: str | None, records: list[dict[str, Any]], labels: dict[str, list],
               probs: dict[str, Any], seconds: float, client_request_id: str | None = None) -> Future:
        """Queue one prediction's line: ``labels`` per output as the server answers them, ``probs`` the
        model's arrays (a 2-D one gives each record's top probability). Returns a future that is done
        once the line is on disk, or fails with AuditWriteError; hashing and encoding happen on the
        writer's thread."""
        done: Future = Future()
        self._queue.put(_Entry(time.time(), request_id, client_request_id, key_id, records, labels, probs,
                               round(seconds * 1e3, 2), done))
        return done

    # -- the writer
    def _line(self, e: _Entry) -> dict[str, Any]:
        inputs = [{k: input_digest(self.salt, k, v) for k, v in r.items()} for r in e.records]
        outputs: list[dict[str, Any]] = [{} for _ in e.records]
        for name, values in e.labels.items():
            p = e.probs.get(name)
            for i, value in enumerate(values):
                outputs[i][name] = value.item() if hasattr(value, "item") else value  # numpy scalars
                if p is not None and getattr(p, "ndim", 1) == 2:
                    outputs[i][f"{name}_probability"] = round(float(p[i].max()), 6)
        return {"time": iso(e.at), "request_id": e.request_id, "client_request_id": e.client_request_id,
                "key_id": e.key_id, "model": self.model, "inputs": inputs, "outputs": outputs, "ms": e.ms}

    def _seal(self, entry: dict[str, Any], counted: bool) -> bytes:
        body = {"seq": self.seq + 1, **entry} if counted else {**entry, "last_seq": self.seq}
        return seal_line({**body, "prev": self.prev})

    def _add(self, entry: dict[str, Any], out: list[bytes], counted: bool = False) -> None:
        """Seal ``entry`` onto ``out`` (not yet written), a header first in a new file, rotating first
        when the line would pass the size limit."""
        if self._size == 0 and "audit" not in entry:
            self._add({"audit": FORMAT, "file": self.file_no, "salt": self.salt.hex(), "created": iso(time.time())}, out)
        line = self._seal(entry, counted)
        if "audit" not in entry and self._size + len(line) + 1 > self.max_bytes:
            self._flush(out)
            self._rotate()
            self._add({"audit": FORMAT, "file": self.file_no, "salt": self.salt.hex(), "created": iso(time.time())}, out)
            line = self._seal(entry, counted)  # after the new file's header
        out.append(line + b"\n")
        self._size += len(line) + 1
        self.prev = sha(line)
        self.seq += counted

    def _open(self) -> None:
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if created:
            _sync_dir(self.path.parent)

    def _flush(self, out: list[bytes]) -> None:
        """Append ``out`` with as few writes as the OS allows, then fsync: every line up to here is durable."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        if self._dirty:  # the cut after a failed write did not succeed then: before anything else
            os.ftruncate(self._fd, self._mark[0])
            self._dirty = False
        view = memoryview(b"".join(out))
        out.clear()
        while view:
            view = view[os.write(self._fd, view):]
        _sync(self._fd)
        self._mark = (self._size, self.seq, self.prev)

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{self.file_no:06d}"))
        _sync_dir(self.path.parent)
        self.file_no += 1
        self._size = 0
        self._mark = (0, self.seq, self.prev)

    def _commit(self, batch: list[_Entry]) -> None:
        """Write the owed events and ``batch`` durably, then answer the batch's futures."""
        out: list[bytes] = []
        try:
            for event in self._events:
                self._add(event, out)
            for e in batch:
                self._add(self._line(e), out, counted=True)
            self._flush(out)
        except Exception as exc:  # noqa: BLE001 - disk full, permissions...: fail closed, never lose lines quietly
            self._undo(exc)
            failed = AuditWriteError(self.error or str(exc))
            for e in batch:
                _settle(e.done, failed)
            return
        self._events.clear()
        if self.error is not None:
            print(f"polyfuse serve: the audit log {self.path} is written again; predictions are served",
                  file=sys.stderr, flush=True)
            self.error = None
        self._write_head()
        for e in batch:
            _settle(e.done, None)

    def _undo(self, exc: Exception) -> None:
        """Back to the last durable point after a failed write: the file cut to its last whole line."""
        self._size, self.seq, self.prev = self._mark
        self._dirty = True
        try:
            if self._fd is None:
                self._open()
            os.ftruncate(self._fd, self._size)  # type: ignore[arg-type]
            self._dirty = False
        except OSError:
            pass  # tried again before the next write (_flush)
        if self.error is None:  # once per outage: the entry is written when the disk takes lines again
            self.error = f"{self.path}: {type(exc).__name__}: {exc}"
            self._events.append({"event": "write_error", "since": iso(time.time()), "error": self.error})
            print(f"polyfuse serve: the audit log cannot be written ({self.error}); predictions are refused (503) "
                  f"until it can, retried every {self.RETRY_S:g} s", file=sys.stderr, flush=True)

    def _write_head(self) -> None:
        try:
            write_head(self.path, self.prev, self.seq, self.file_no)
            self._head_failed = False
        except OSError as e:  # the log itself is durable; a lagging head names an earlier line, still valid
            if not self._head_failed:
                print(f"polyfuse serve: the audit head file cannot be written ({e})", file=sys.stderr, flush=True)
            self._head_failed = True

    def _take(self) -> tuple[list[_Entry], bool]:
        """Everything queued (waiting for the first line, or RETRY_S while events are owed); True at the end."""
        batch: list[_Entry] = []
        try:
            item = self._queue.get(timeout=self.RETRY_S if self._events else None)
        except queue.Empty:
            return batch, False
        while item is not None:
            batch.append(item)
            if len(batch) >= self.MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _run(self) -> None:
        _name_os_thread("polyfuse-audit")
        while True:
            batch, end = self._take()
            if batch or self._events:
                self._commit(batch)
            if end:
                return

    def close(self) -> None:
        """Write every queued line and close the file (the server calls it on shutdown)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(30)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _name_os_thread(name: str) -> None:
    """The calling thread's name as the OS shows it (``top -H``, /proc/PID/task/TID/comm), so the
    writer's CPU can be told from the server's; Linux only, elsewhere nothing happens."""
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])
    except OSError:
        pass
