"""HTTP/1.1 connections with limits on the request head, which uvicorn's httptools protocol lacks:
the request line and headers must arrive within ``header_timeout_s`` (a client sending them a byte
a second is cut off) and within ``max_header_bytes`` (431, not a 64 MB header held in memory)."""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a refused request."""


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline and a size limit on each request's head."""

    max_header_bytes = 64 << 10
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._chunk_bytes = self._parsed_bytes = 0
        # True from a request's first byte (or the connection's start) to the end of its headers; idle
        # keep-alive connections are uvicorn's keep-alive timer's to close
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "request headers not received in time")

    def _refuse(self, status: int, reason: str) -> None:
        self._refused = True
        body = reason.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A head still incomplete after this chunk: the chunk counts (the parser buffers a header until it
        # ends, so one endless header is stopped here). A chunk that completes the head may carry body
        # bytes, so its headers are counted one by one as they are parsed (on_url, on_header).
        if self._in_head and not self.transport.is_closing():
            self._chunk_bytes += len(data)
            if self._chunk_bytes > self.max_header_bytes:
                self._refuse(431, "request header fields too large")

    def _count(self, n: int) -> None:
        self._parsed_bytes += n
        if self._parsed_bytes > self.max_header_bytes:
            self._refuse(431, "request header fields too large")
            raise _HeadTooLarge  # stops the parser; the error it then raises goes to send_400_response

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refused request has had its answer
            super().send_400_response(msg)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._chunk_bytes, self._parsed_bytes = True, 0, 0
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()


def limited_protocol(max_header_bytes: int, header_timeout_s: float) -> type[LimitedHttpTools]:
    """The protocol class for uvicorn's ``http=`` setting, with these limits."""
    return type("LimitedHttpTools", (LimitedHttpTools,), {"max_header_bytes": max_header_bytes,
                                                          "header_timeout_s": header_timeout_s})
