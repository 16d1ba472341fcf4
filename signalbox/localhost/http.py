"""The local host's HTTP layer: uvicorn (h11) serving a small ASGI app, with bounded work and deadlines.

h11 parses and frames every request (one Content-Length, ``Transfer-Encoding`` wins over it, no bare
line folding). This module adds what the Functions host's front end gives and uvicorn alone does not:

* a deadline on each request head, counted from the connection's start or the end of the previous
  answer, however often bytes arrive: a client trickling headers is dropped after ``request_timeout``;
* the body judged from its head (413 over the limit, 411 for chunked) before a byte of it is read, and
  one deadline on the whole body (408); an answer sent before the body was read closes the connection,
  so an unread body is never taken for the next request; a body cut short by a half-close gets 400;
* bounded work: functions run in ``maxConcurrentRequests`` threads, more than ``maxOutstandingRequests``
  accepted requests get 429 ("Too Busy"), as host.json's ``extensions.http`` sets them in Azure; more
  than ``max_connections`` open connections get 503.

A router (:data:`Router`, the host's routes and auth) decides on the event loop from the request head
alone; the blocking part (functions, SQLite, proxying) runs in the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit

from signalbox.localhost.config import HostConfigError, redact_keys

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("signalbox.host")

# host.json extensions.http defaults of the Functions host on the Consumption and Premium plans.
DEFAULT_MAX_CONCURRENT_REQUESTS = 100
DEFAULT_MAX_OUTSTANDING_REQUESTS = 200
DEFAULT_MAX_CONNECTIONS = 1000
MAX_HEAD_BYTES = 32 * 1024  # Kestrel's MaxRequestHeadersTotalSize
ADMIN_THREADS = 2
SERVER_NAME = "SignalboxLocalHost/2.0"
MAX_REQUEST_LINE = 8 * 1024  # Kestrel's MaxRequestLineSize: longer gets 414
_HEAD_END = re.compile(rb"\n\r?\n")
_CLOSE = (b"connection", b"close")
LINGER_SECONDS = 2.0  # a closing connection drops what the client still sends for at most this long
_EOF = "signalbox.client_eof"  # scope["extensions"] key: the client half-closed during this request
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True)
class HttpLimits:
    """How much work the host takes at once (host.json ``extensions.http``)."""

    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_outstanding_requests: int = DEFAULT_MAX_OUTSTANDING_REQUESTS
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_host_json(cls, path: Path) -> HttpLimits:
        """``maxConcurrentRequests`` and ``maxOutstandingRequests`` of host.json; -1 (unbounded, a Dedicated
        plan's default) and absent keep the Consumption defaults, so the local host stays bounded."""
        if not path.exists():
            return cls()
        try:
            http = (json.loads(path.read_text(encoding="utf-8")).get("extensions") or {}).get("http") or {}
        except (ValueError, AttributeError) as exc:
            raise HostConfigError(f"{path}: not valid JSON: {exc}") from None
        values = {}
        for key, default in (
            ("maxConcurrentRequests", DEFAULT_MAX_CONCURRENT_REQUESTS),
            ("maxOutstandingRequests", DEFAULT_MAX_OUTSTANDING_REQUESTS),
        ):
            raw = http.get(key, -1)
            if isinstance(raw, bool) or not isinstance(raw, int) or (raw < 1 and raw != -1):
                raise HostConfigError(f"{path}: extensions.http.{key} must be a whole number >= 1 (or -1), not {raw!r}")
            values[key] = default if raw == -1 else raw
        return cls(values["maxConcurrentRequests"], values["maxOutstandingRequests"])


@dataclass(frozen=True)
class Head:
    """A request as known before its body: what a router decides on."""

    method: str
    target: str  # the request target as sent: path and query
    path: str  # the target's path, still percent-encoded
    query: dict[str, str]
    headers: Mapping[str, str]  # names lower-cased; a repeated header's values joined with ","

    def header(self, name: str) -> str | None:
        """One header's value, by case-insensitive name."""
        return self.headers.get(name.lower())

    @property
    def announces_body(self) -> bool:
        """Whether a body follows the head."""
        return "transfer-encoding" in self.headers or (self.headers.get("content-length") or "0").strip() != "0"


@dataclass(frozen=True)
class Answer:
    """A response: status, body and headers (``Content-Type`` defaults to UTF-8 text)."""

    status: int
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(cls, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> Answer:
        """A JSON answer."""
        body = json.dumps(payload, default=str).encode()
        return cls(status, body, [("Content-Type", "application/json; charset=utf-8"), *headers])

    @classmethod
    def error(cls, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Answer:
        """The host's error body: ``{"error": <reason phrase>, "message": ...}``."""
        return cls.json(status, {"error": HTTPStatus(status).phrase, "message": message}, headers)


class Refusal(Exception):
    """A request refused with an HTTP error (status, message, extra headers)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def answer(self) -> Answer:
        """The error answer."""
        return Answer.error(self.status, self.message, list(self.headers.items()))


@dataclass(frozen=True)
class Work:
    """Run ``run`` with the request body in a pool thread.

    ``body_limit``: the most bytes accepted (413 above it); ``None`` leaves the body unread. ``admin``:
    the host's own endpoints, in a small pool of their own outside the request limits, so an operator can
    still look at a host that is busy.
    """

    run: Callable[[bytes], Answer]
    body_limit: int | None
    admin: bool = False


Router = Callable[[Head], Answer | Work]


class _ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


def _decode_head(scope: Mapping[str, Any]) -> Head:
    raw_path = cast(bytes, scope["raw_path"])
    query_string = cast(bytes, scope["query_string"])
    target = (raw_path + (b"?" + query_string if query_string else b"")).decode("latin-1")
    parts = urlsplit(target)
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return Head(
        method=str(scope["method"]),
        target=target,
        path=parts.path,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
    )


@dataclass
class _Exchange:
    """One request's body reading and answering, over ASGI."""

    scope: dict[str, Any]
    receive: Callable[[], Any]
    send: Callable[[dict[str, Any]], Any]
    head: Head
    body_done: bool = False

    def _client_eof(self) -> bool:
        return bool((self.scope.get("extensions") or {}).get(_EOF))

    async def read_body(self, limit: int, timeout: float) -> bytes:
        """The whole body, judged by its head first, within one deadline."""
        if "transfer-encoding" in self.head.headers:
            raise Refusal(411, "chunked request bodies are not supported; send Content-Length")
        length = int(self.head.header("content-length") or "0")  # h11 let only digits through
        if length > limit:
            raise Refusal(413, f"request body of {length} bytes is over the limit of {limit} bytes")
        if length == 0:
            self.body_done = True
            return b""
        # One deadline for the whole body: a per-read timeout alone lets a trickle go on forever.
        deadline = time.monotonic() + timeout
        chunks = bytearray()
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(self.receive(), left)
            except TimeoutError:
                raise Refusal(
                    408, f"got {len(chunks)} of {length} body bytes in {timeout:g} s; send the whole body"
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            chunks += chunk
            if not message.get("more_body", False):
                self.body_done = True
                return bytes(chunks)
            if self._client_eof():
                # Every byte before the half-close has been handed over by now: the rest never comes.
                raise Refusal(400, f"the body ended after {len(chunks)} of {length} bytes")

    async def answer(self, answer: Answer) -> None:
        """Send ``answer``; close the connection if the request's body was left unread."""
        if not 200 <= answer.status <= 599:
            log.error("a function answered with status %s, which is not a final HTTP status", answer.status)
            answer = Answer.error(500, "the function's response is not valid HTTP; see the host log")
        status = answer.status
        headers: list[tuple[bytes, bytes]] = []
        has_type = False
        for name, value in answer.headers:
            lowered = name.lower()
            if lowered in ("content-length", "connection"):
                continue  # framing is the server's
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value) or not _latin1(value):
                # Sent as is, a CR LF in a value would inject headers; h11 would refuse it mid-answer.
                log.error("dropped response header %r: not a valid HTTP header", name)
                continue
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
            has_type = has_type or lowered == "content-type"
        if not has_type:
            headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
        if status not in (204, 304):
            headers.append((b"Content-Length", str(len(answer.body)).encode()))
        # uvicorn adds Connection: close itself when the request asked for it.
        if self.head.announces_body and not self.body_done and _CLOSE not in self.scope["headers"]:
            # Whatever of the body is still on the wire must not be parsed as the next request.
            headers.append((b"Connection", b"close"))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        body = b"" if status in (204, 304) else answer.body
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class HostApp:
    """The ASGI app: route on the loop, read the body under its limits, run the work in a bounded pool."""

    def __init__(self, router: Router, limits: HttpLimits, request_timeout: float) -> None:
        self.router = router
        self.limits = limits
        self.request_timeout = request_timeout
        self.pool = ThreadPoolExecutor(limits.max_concurrent_requests, thread_name_prefix="http")
        self.admin_pool = ThreadPoolExecutor(ADMIN_THREADS, thread_name_prefix="http-admin")
        self.outstanding = 0  # only read and written on the event loop's thread

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        """Serve one HTTP request (the server runs no lifespan and no websockets)."""
        if scope["type"] != "http":
            return
        head = _decode_head(scope)
        exchange = _Exchange(scope, receive, send, head)
        log.debug("%s %s", head.method, redact_keys(head.target))
        try:
            decided = self.router(head)
            answer = decided if isinstance(decided, Answer) else await self._work(decided, exchange)
        except Refusal as refusal:
            answer = refusal.answer()
        except _ClientGone:
            return
        except Exception:
            log.error("host error on %s %s\n%s", head.method, redact_keys(head.target), traceback.format_exc())
            answer = Answer.error(500, "the local host failed to handle the request; see the host log")
        await exchange.answer(answer)

    async def _work(self, work: Work, exchange: _Exchange) -> Answer:
        loop = asyncio.get_running_loop()
        if work.admin:
            body = await self._body(work, exchange)
            return await loop.run_in_executor(self.admin_pool, work.run, body)
        if self.outstanding >= self.limits.max_outstanding_requests:
            raise Refusal(
                429,
                f"the host is too busy: {self.outstanding} requests outstanding "
                f"(maxOutstandingRequests {self.limits.max_outstanding_requests}); retry later",
                {"Retry-After": "1"},
            )
        self.outstanding += 1
        try:
            body = await self._body(work, exchange)
            return await loop.run_in_executor(self.pool, work.run, body)
        finally:
            self.outstanding -= 1

    async def _body(self, work: Work, exchange: _Exchange) -> bytes:
        if work.body_limit is None:
            return b""
        return await exchange.read_body(work.body_limit, self.request_timeout)

    def close(self) -> None:
        """Let running work finish; drop work not started."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.admin_pool.shutdown(wait=True, cancel_futures=True)


def _oversized_head(buffered: bytes) -> tuple[int, str] | None:
    """(status, message) when the head being received is already over a limit, else None."""
    if len(buffered) > MAX_REQUEST_LINE and buffered.find(b"\n", 0, MAX_REQUEST_LINE + 1) < 0:
        return 414, f"the request line is over {MAX_REQUEST_LINE} bytes"
    if len(buffered) > MAX_HEAD_BYTES and _HEAD_END.search(buffered, 0, MAX_HEAD_BYTES) is None:
        return 431, f"the request line and headers are over {MAX_HEAD_BYTES} bytes"
    return None


class _Transport:
    """A connection's transport for uvicorn, whose ``close()`` is the protocol's (it may linger)."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._transport = transport
        self._close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._close()


def _protocol_class(request_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline on each request head, lingering closes and half-closes answered."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

    linger_seconds = min(request_timeout, LINGER_SECONDS)

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _client_eof = False
        _lingering = False
        _socket: asyncio.Transport

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._socket = transport
            super().connection_made(cast(asyncio.Transport, _Transport(transport, self._close)))
            self._await_head()

        def _close(self) -> None:
            # Closed while the client still sends (a body left unread, a head refused), the socket would
            # answer those bytes with a reset, which can destroy the answer before the client reads it.
            # So: FIN after the answer, drop what still comes, close when the client does or after a while
            # (a lingering close, as nginx and Apache do).
            still_sending = self.conn.their_state in (h11.SEND_BODY, h11.ERROR)
            if still_sending and not self._lingering and not self._client_eof:
                self._linger()
            else:
                self._socket.close()

        def _linger(self) -> None:
            if not self._socket.can_write_eof() or self._socket.is_closing():
                self._socket.close()
                return
            self._lingering = True
            self._socket.write_eof()
            self.loop.call_later(linger_seconds, self._socket.close)

        def data_received(self, data: bytes) -> None:
            if not self._lingering:
                super().data_received(data)

        def _await_head(self) -> None:
            # Armed while no request is being handled; a new request (a new cycle) disarms it. Unlike
            # uvicorn's keep-alive timer it is not reset by incoming bytes, so a trickle cannot extend it.
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(request_timeout, self._head_overdue, self.cycle)

        def _head_overdue(self, waiting_on: RequestResponseCycle | None) -> None:
            if self.cycle is waiting_on and not self.transport.is_closing():
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()

        def handle_events(self) -> None:
            if self.conn.their_state is h11.IDLE:
                # Before h11 parses a head: too long a request line gets 414 and too big a head 431, as
                # from Kestrel (h11 alone answers both with a 400).
                refused = _oversized_head(self.conn.trailing_data[0])
                if refused is not None:
                    self._refuse(*refused)
                    return
            try:
                super().handle_events()
            except UnicodeDecodeError:  # uvicorn decodes the target as ASCII; h11 lets other bytes through
                self._refuse(400, "the request target is not ASCII; percent-encode it")

        def _refuse(self, status: int, message: str) -> None:
            body = Answer.error(status, message).body
            reason = HTTPStatus(status).phrase
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            self._linger()  # the rest of the head may still be on its way

        def on_response_complete(self) -> None:
            if self._lingering:
                return  # closing: no next request
            if self._client_eof:
                self.transport.close()  # the client half-closed: no request can follow
            elif not self.transport.is_closing():
                self._await_head()  # before super(): it may start a pipelined request at once
            super().on_response_complete()

        def eof_received(self) -> bool | None:  # type: ignore[override]
            cycle = self.cycle
            if self._lingering or cycle is None or cycle.response_complete:
                return None  # between requests: close
            # A half-close during a request: the answer can still be sent. The app learns of it through the
            # scope, and from a wake-up with no new bytes.
            self._client_eof = True
            cast(dict[str, Any], cycle.scope).setdefault("extensions", {})[_EOF] = True
            cycle.message_event.set()
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return Protocol


class HttpServer:
    """uvicorn serving a :class:`HostApp` on a socket bound at construction, in a background thread."""

    def __init__(
        self,
        router: Router,
        bind: str,
        port: int,
        *,
        request_timeout: float,
        limits: HttpLimits | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        # Bound now, so the port is known (and taken) before start(); connections wait in the backlog.
        self.socket = socket.create_server((bind, port), family=family, backlog=2048)
        self.limits = limits or HttpLimits()
        self.app = HostApp(router, self.limits, request_timeout)
        self.request_timeout = request_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the socket listens on."""
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Serve in a background thread (no signal handlers: those are the caller's)."""
        import uvicorn  # the CLI's host only: function_app never imports the server

        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            http=_protocol_class(self.request_timeout),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,  # the request line can carry ?code=<key>
            proxy_headers=False,  # nothing sits in front of the local host; X-Forwarded-* is not trusted
            server_header=False,
            headers=[("Server", SERVER_NAME)],
            limit_concurrency=self.limits.max_connections,
            backlog=2048,
            timeout_keep_alive=max(1, round(self.request_timeout)),
            timeout_graceful_shutdown=max(1, round(self.request_timeout)),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES + 1024,  # our 414/431 come first
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]}, name="http")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, let answers in progress finish (up to the request timeout), then the work."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=self.request_timeout + 10)
        self.socket.close()
        self.app.close()
