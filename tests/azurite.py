"""Azurite (Microsoft's storage emulator, from npm) on 127.0.0.1, and a fault-injecting proxy for it.

``.ci/run`` installs Azurite into ``.azurite/`` (git-ignored); elsewhere run the same line:
``npm install --prefix .azurite azurite@3.35.0`` (3.35 is the last release that runs on node 18/20).
Without it the Azurite tests fail in CI (``CI=true``) and are skipped, with that hint, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.adapters.local.net import free_port

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = "npm install --prefix .azurite azurite@3.35.0"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key: public, documented, and valid only in the emulator.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_blob() -> Path:
    """The ``azurite-blob`` launcher; fails the test in CI and skips it elsewhere when it is missing."""
    for candidate in (os.environ.get("AZURITE_BLOB"), REPO / ".azurite/node_modules/.bin/azurite-blob"):
        if candidate and Path(candidate).is_file() and shutil.which("node"):
            return Path(candidate)
    found = shutil.which("azurite-blob")
    if found and shutil.which("node"):
        return Path(found)
    reason = f"Azurite is not installed (run `{INSTALL_HINT}`; node 18+ needed)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: .ci/run should have installed it")
    pytest.skip(reason)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Azurite:
    """One Azurite blob service in memory on a free port; ``https`` with a certificate and OAuth.

    In-memory persistence excludes ``--location``; Azurite runs in a temporary folder all the same.
    """

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.binary = azurite_blob()
        self.scheme = "https" if cert else "http"
        self.workspace = tempfile.TemporaryDirectory(prefix="azurite-")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._start(cert, key)

    def _start(self, cert: Path | None, key: Path | None) -> None:
        log = Path(self.workspace.name) / "azurite.log"
        for _ in range(3):  # a free port can be taken between the probe and Azurite's bind
            self.port = free_port()
            command = [
                str(self.binary),
                "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--inMemoryPersistence",
                "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
            ]  # fmt: skip
            if cert and key:
                command += ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]
            with log.open("wb") as out:
                self.process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workspace.name
                )
            if _wait_for_port(self.port, self.process, time.monotonic() + 30):
                return
            self.stop()
        raise RuntimeError(f"Azurite did not start: {log.read_text(errors='replace')[-2000:]}")

    @property
    def url(self) -> str:
        """The account URL (path-style, as the emulator serves it)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        self.workspace.cleanup()


def _status(code: int, reason: str, extra: str = "") -> bytes:
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


# Plain-text answers, as a load balancer or an overloaded front end sends them (no x-ms-error-code).
FAULTS = {
    "503": _status(503, "Service Unavailable"),
    "500": _status(500, "Internal Server Error"),
    "429": _status(429, "Too Many Requests", "Retry-After: 1\r\n"),
}


@dataclass
class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_port``, one request per connection.

    Each request takes the next scripted fault (``"503"``, ``"500"``, ``"429"``, ``"stall"``: read the
    request, never answer) or, once the script is spent, goes through to the upstream. ``seen``
    records ``(method, path, fault)`` per request.
    """

    upstream_port: int
    script: deque[str] = field(default_factory=deque)
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def faults(self, *names: str) -> None:
        with self._lock:
            self.script.clear()
            self.script.extend(names)
            self.seen.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                head, body = _read_request(conn)
            except OSError:
                return
            if not head:
                return
            method, path = head.split(b" ", 2)[:2]
            with self._lock:
                fault = self.script.popleft() if self.script else "pass"
                self.seen.append((method.decode(), path.decode(), fault))
            if fault == "stall":
                self._closed.wait(60)  # the client's read timeout ends this, or the proxy's close
            elif fault in FAULTS:
                conn.sendall(FAULTS[fault])
            else:
                self._forward(conn, head, body)

    def _forward(self, conn: socket.socket, head: bytes, body: bytes) -> None:
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as upstream:
            upstream.sendall(request)
            while chunk := upstream.recv(65536):
                conn.sendall(chunk)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._thread.join(timeout=5)


def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body
