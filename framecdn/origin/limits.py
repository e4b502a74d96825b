"""Bounds on a request's head: its size and its number of header fields (431 beyond them).

uvicorn's httptools protocol takes a request line and headers of any size: one client
sending a header of a few MiB holds its worker's event loop for seconds (every other
client of the worker waits, ``/healthz`` too) and grows the process by hundreds of MB.
:class:`LimitedHttpToolsProtocol` counts the bytes of each request head *before* they
reach the parser, so the parser never holds more than ``max_header_bytes`` of it, and
counts header fields as they are parsed. Past either limit the client gets
``431 Request Header Fields Too Large`` (nothing of its input echoed) and the connection
is closed: its write side at once, the rest after a short linger during which what the
client still sends is read and dropped, so the 431 reaches it rather than a reset.

``framecdn serve``, ``framecdn demo`` and the tests' servers use :func:`http_protocol`
as uvicorn's ``http=``. nginx in front has its own, matching limit
(``large_client_header_buffers`` in infra/nginx/framecdn.conf.template).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from framecdn.errors import Refusal
from framecdn.framestore.config import Settings

log = logging.getLogger("framecdn.origin")

#: Seconds a refused connection keeps reading (and dropping) before it is closed.
LINGER_SECONDS = 2.0
_REFUSAL = b'{"status":431,"error":"request header fields too large"}'


class HeaderLimitExceeded(Refusal):
    """Raised inside a parser callback to stop parsing a refused request (431)."""

    status = 431


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on each request head (431 beyond it)."""

    def __init__(
        self, *args: Any, max_header_bytes: int, max_headers: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._in_head = True  # reading (or waiting for) a request line and headers
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False

    # Bytes in -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Feed the parser, at most ``max_header_bytes`` of any one request head."""
        while data and not self._refused:
            if not self._in_head:
                super().data_received(data)
                return
            room = self.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse(f"over {self.max_header_bytes} bytes")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return

    # Parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refuse(f"over {self.max_headers} header fields")
            raise HeaderLimitExceeded("request header fields too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refused request's parser error is ours: 431 is out
            super().send_400_response(msg)

    # Refusing ---------------------------------------------------------------------------
    def _refuse(self, why: str) -> None:
        self._refused = True
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("request head from %s refused with 431: %s", client, why)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # mid-answer to a pipelined request: no room for a 431
            return
        head = [
            STATUS_LINE[431],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(_REFUSAL),
            b"cache-control: no-store\r\n",
            b"connection: close\r\n",
            b"\r\n",
        ]
        self.transport.write(b"".join(head) + _REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """What uvicorn's ``http=`` takes: the bounded protocol with this origin's limits.

    uvicorn only ever calls it to make a protocol per connection (its annotation says
    a class), so a partial with the limits does; unlike a class made on the fly, it
    pickles by name for ``--workers`` > 1.
    """
    factory = functools.partial(
        LimitedHttpToolsProtocol,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )
    return cast("type[asyncio.Protocol]", factory)
