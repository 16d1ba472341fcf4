"""Size and time limits, from outside: oversized bodies get 413, slow or lying clients 408 — and the host lives.

Raw sockets, because an HTTP library would not send a Content-Length that lies or a body that trickles.
Limits (signalbox/localhost/server.py, README "Security"): 1 MB on Event Grid deliveries, 100 MB on HTTP
triggers and endpoint invocations (the Functions host's own maxRequestLength); the host here runs with
``--request-timeout 2``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from signalbox.localhost.server import MAX_EVENT_GRID_BODY, MAX_HTTP_BODY
from tests.security.stack import REQUEST_TIMEOUT_SECONDS, SecureHost, http_functions
from tests.security.test_sec_keys import concrete_path

SLACK = 5.0  # scheduling slack on a loaded 2-core CI machine


def _connect(secure: SecureHost) -> socket.socket:
    parts = urlsplit(secure.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=REQUEST_TIMEOUT_SECONDS + SLACK)
    return sock


def _head(method: str, path: str, length: int | str, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the host sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        # Bytes a client still sends after the host hung up make its side reset the connection.
        if not data:
            raise
    return data


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, headers, body) until the host closes the connection."""
    data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _exchange(secure: SecureHost, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(secure) as sock:
        sock.sendall(raw)
        return _answer(sock)


def _alive(secure: SecureHost) -> None:
    assert secure.host.process.poll() is None, "the host died"
    started = time.monotonic()
    status = requests.get(f"{secure.url}/admin/host/status", headers={"x-functions-key": secure.host.master}, timeout=5)
    assert status.status_code == 200 and time.monotonic() - started < 2.0


def _key_for(secure: SecureHost, auth: str | None) -> str:
    return {"admin": secure.host.master, "function": secure.host.function_key}.get(auth or "", "")


def ingresses() -> list[tuple[str, str, str, int]]:
    """(name, method, path, limit) of every HTTP ingress: each HTTP function, Event Grid, endpoint scoring."""
    out = [
        (f["name"], (f["methods"] or ["POST"])[-1], concrete_path(f["route"] or f["name"]), MAX_HTTP_BODY)
        for f in http_functions()
    ]
    out.append(("eventgrid", "POST", "/runtime/webhooks/EventGrid?functionName=landing_events", MAX_EVENT_GRID_BODY))
    out.append(("endpoint", "POST", "/endpoints/iris/invocations", MAX_HTTP_BODY))
    return out


@pytest.mark.parametrize(("name", "method", "path", "limit"), ingresses(), ids=[i[0] for i in ingresses()])
def test_a_body_over_the_limit_gets_413_before_it_is_read(
    secure: SecureHost, name: str, method: str, path: str, limit: int
) -> None:
    auth = next((f["auth"] for f in http_functions() if f["name"] == name), "admin")
    key = secure.host.event_grid_key if name == "eventgrid" else _key_for(secure, auth)
    before = secure.enqueued()
    started = time.monotonic()
    # Only the head is sent: the host must answer from Content-Length, without waiting for 100 MB.
    status, headers, body = _exchange(secure, _head(method, path, limit + 1, f"x-functions-key: {key}\r\n"))
    assert status == 413 and headers.get("Connection") == "close", body
    assert str(limit) in json.loads(body)["message"]
    assert time.monotonic() - started < SLACK
    assert secure.enqueued() == before
    _alive(secure)


def test_event_grid_takes_a_body_of_exactly_1_mb(secure: SecureHost) -> None:
    # At the limit the body is read and judged on its content (not JSON here: 400), not on its size.
    path = "/runtime/webhooks/EventGrid?functionName=landing_events"
    head = _head("POST", path, MAX_EVENT_GRID_BODY, f"x-functions-key: {secure.host.event_grid_key}\r\n")
    status, _, body = _exchange(secure, head + b" " * (MAX_EVENT_GRID_BODY - 1) + b"x")
    assert status == 400 and b"not valid JSON" in body


def _lie(sock: socket.socket) -> None:
    # Announces 1000 bytes, sends 10, then waits: the host must give up, not wait forever.
    sock.sendall(b'{"a": 1234')


def _trickle(sock: socket.socket) -> None:
    # Every byte arrives well within a per-read timeout; only a deadline on the whole body ends it.
    try:
        for _ in range(40):
            sock.sendall(b" ")
            time.sleep(0.25)
    except OSError:  # the host hung up: that is the point
        pass


LIARS = {"lying Content-Length": _lie, "trickled body": _trickle}


@pytest.mark.parametrize("case", list(LIARS))
@pytest.mark.parametrize("target", ["github webhook", "eventgrid"])
def test_a_slow_or_lying_client_gets_408_and_does_not_block_others(secure: SecureHost, target: str, case: str) -> None:
    if target == "eventgrid":
        path = "/runtime/webhooks/EventGrid?functionName=landing_events"
        extra = f"x-functions-key: {secure.host.event_grid_key}\r\n"
    else:
        path, extra = "/api/webhooks/github", "X-GitHub-Event: ping\r\n"
    before = secure.enqueued()
    with _connect(secure) as sock:
        started = time.monotonic()
        sock.sendall(_head("POST", path, 1000, extra))
        sender = threading.Thread(target=LIARS[case], args=(sock,), daemon=True)
        sender.start()
        _alive(secure)  # served meanwhile: one slow client holds one thread, not the host
        status, headers, body = _answer(sock)
        elapsed = time.monotonic() - started
    assert status == 408, body
    assert REQUEST_TIMEOUT_SECONDS - 0.5 <= elapsed <= REQUEST_TIMEOUT_SECONDS + SLACK
    assert headers.get("Connection", "").lower() == "close"
    assert secure.enqueued() == before
    _alive(secure)


def test_a_body_cut_short_by_the_client_is_a_400(secure: SecureHost) -> None:
    with _connect(secure) as sock:
        sock.sendall(_head("POST", "/api/webhooks/github", 1000, "X-GitHub-Event: ping\r\n") + b'{"a": 1')
        sock.shutdown(socket.SHUT_WR)  # no more bytes will come
        status, _, body = _answer(sock)
    assert status == 400 and b"ended after 7 of 1000" in body
    _alive(secure)


def test_headers_that_never_finish_are_dropped(secure: SecureHost) -> None:
    with _connect(secure) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /api/webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(1024) == b""  # closed by the host's read timeout, with no request to answer
        assert time.monotonic() - started <= REQUEST_TIMEOUT_SECONDS + SLACK
    _alive(secure)


@pytest.mark.parametrize(
    ("length", "extra", "status"),
    [
        ("-1", "", 400),
        ("ten", "", 400),
        # Over any 64-bit length: not a number a server can read (Kestrel and h11 both answer 400).
        ("99999999999999999999999", "", 400),
        ("9223372036854775807", "", 413),
        ("", "Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_malformed_lengths_are_refused(secure: SecureHost, length: str, extra: str, status: int) -> None:
    head = _head("POST", "/api/webhooks/github", length, extra) if length else None
    if head is None:
        head = f"POST /api/webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    got, _, body = _exchange(secure, head + b"0\r\n\r\n" if extra else head)
    assert got == status, body
    _alive(secure)


@pytest.mark.parametrize("path", ["/api/status/iris-classifier", "/api/webhooks/nowhere", "/admin/host/status"])
def test_an_unread_body_is_never_taken_for_a_second_request(secure: SecureHost, path: str) -> None:
    # Refused before its body is read (no key, no route): the body must not run as a request of its own.
    smuggled = f"GET /admin/host/status?code={secure.host.master} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with _connect(secure) as sock:
        sock.sendall(_head("POST", path, len(smuggled)) + smuggled.encode())
        data = _read_all(sock)
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert data.startswith((b"HTTP/1.1 401", b"HTTP/1.1 404", b"HTTP/1.1 405")) and b"Connection: close" in data
