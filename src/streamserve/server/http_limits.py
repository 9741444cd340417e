"""Connection-level limits for the REST port: uvicorn's httptools protocol, guarded.

uvicorn bounds neither how long a client may take to send a request's headers or body
nor how large or numerous the headers may be (only ``timeout_keep_alive`` between
requests exists), so slow-loris clients can hold connections open indefinitely and a
client can send megabytes of headers. :func:`guarded_protocol` returns a subclass of
uvicorn's ``HttpToolsProtocol`` that enforces :class:`HttpLimits`:

- ``header_timeout_s``: a request's line and headers must arrive within this time of the
  connection opening or the request's first byte; else ``408`` (if a request began) and
  the connection is closed;
- ``body_timeout_s``: its body must arrive within this time of the headers; else ``408``
  (unless a response has started) and the connection is closed;
- ``max_header_bytes``: request line plus header names and values; above it ``431``
  and the connection is closed (before the application sees the request);
- ``max_headers``: the number of header fields; above it ``431`` likewise.

Idle keep-alive connections are closed by uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_HEADERS = 100


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # 0 = none
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # 0 = none
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too big."""


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus :class:`HttpLimits` (set by :func:`guarded_protocol`)."""

    limits: HttpLimits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # request line + fields of the current request, parsed
        self._raw_header_bytes = 0  # bytes received while its headers are incomplete
        self._awaiting_headers = True
        self._header_count = 0
        self._message_begun = False
        self._refused = False

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            # httptools buffers a field until it ends, so count raw bytes too: a huge
            # header sent without its line end is refused before it is all buffered
            self._raw_header_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self._awaiting_headers and self._raw_header_bytes > self.limits.max_header_bytes:
                raise _HeadersTooLarge(
                    f"Request line and headers exceed {self.limits.max_header_bytes} bytes"
                )
        except _HeadersTooLarge as exc:
            self._refuse(431, str(exc))
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse(431, str(exc.__context__))
                return
            self._refuse(400, "Invalid HTTP request received.")
        except httptools.HttpParserError:
            self._refuse(400, "Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._header_count = 0
        self._message_begun = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools may deliver one header in pieces; each piece counts its bytes, and
        # a field is counted when its name starts (a value piece comes with a name b"").
        if name:
            self._header_count += 1
            if self._header_count > self.limits.max_headers:
                raise _HeadersTooLarge(
                    f"Request has more than {self.limits.max_headers} header fields"
                )
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._message_begun = False
        self._awaiting_headers = False
        self._raw_header_bytes = 0
        super().on_headers_complete()
        if self.limits.body_timeout_s > 0 and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self._awaiting_headers = True
        super().on_message_complete()

    # -- limits -----------------------------------------------------------------------------

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge(
                f"Request line and headers exceed {self.limits.max_header_bytes} bytes"
            )

    def _arm_header_timer(self) -> None:
        if self.limits.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timed_out
            )

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._message_begun:
            self._refuse(408, f"Request headers not received in {self.limits.header_timeout_s}s")
        else:  # an idle connection that never sent a request
            self._refused = True
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._refused = True
            self.transport.close()
            return
        if cycle is not None:
            cycle.response_complete = True  # the application's late response is dropped
        self._refuse(408, f"Request body not received in {self.limits.body_timeout_s}s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a plain-text ``message`` and close the connection."""
        self._refused = True
        self._cancel_timers()
        log.info("REST connection from %s refused: %s %s", self.client, status, message)
        body = message.encode("ascii", "replace")
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Bad Request"))
        self.transport.write(
            head
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "GuardedHttpToolsProtocol",
    "HttpLimits",
    "guarded_protocol",
]
