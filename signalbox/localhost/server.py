"""The local host: HTTP triggers, Event Grid deliveries, admin API and the trigger pumps.

It keeps the real Functions host's contract so the same ``function_app`` runs here
and in Azure: routes under ``/api``, auth levels with function and admin keys,
``/runtime/webhooks/EventGrid`` with the validation handshakes, ``/admin/*``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.adapters.local.queues import LocalQueues
from shared.events import InvalidEvent
from signalbox.localhost.config import (
    HostConfig,
    HostConfigError,
    HostKeys,
    load_local_settings,
    redact_keys,
)
from signalbox.localhost.eventgrid import parse_delivery, validation_code
from signalbox.localhost.index import EVENT_GRID, HTTP, SERVICE_BUS, TIMER, HostedFunction, index_functions, load_app
from signalbox.localhost.triggers import QueuePump, TimerRunner, invoke_event_grid

log = logging.getLogger("signalbox.host")

MAX_EVENT_GRID_BODY = 1024 * 1024  # Event Grid caps an event and a batch at 1 MB
MAX_HTTP_BODY = 100 * 1024 * 1024  # the Functions host's default maxRequestLength
REQUEST_TIMEOUT_SECONDS = 30.0  # headers, a whole body, an idle keep-alive connection
HOST_VERSION = "4.0-signalbox-local"


@dataclass
class HostSettings:
    """How to run a local host."""

    script_root: Path
    state_dir: Path
    port: int = 7071
    bind: str = "127.0.0.1"
    app_spec: str = "function_app:app"
    auth: bool = True
    only: tuple[str, ...] = ()  # run just these functions, like `func start --functions`
    # A client slower than this (headers, whole body) gets 408 and is disconnected, so a lying
    # Content-Length or a trickled body cannot hold a thread forever.
    request_timeout: float = REQUEST_TIMEOUT_SECONDS


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    invocations: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalHost:
    """One running local Functions host."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        root = settings.script_root.resolve()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        for name, value in load_local_settings(root / "local.settings.json").items():
            os.environ.setdefault(name, value)
        # The function code's local adapters share the host's state dir.
        os.environ["SIGNALBOX_STATE_DIR"] = str(settings.state_dir.resolve())
        self.config = HostConfig.load(root / "host.json")
        self.keys, self.keys_created = HostKeys.load_or_create(settings.state_dir)
        app = load_app(settings.app_spec, root)
        default_level = str(getattr(getattr(app, "auth_level", None), "value", "function")).lower()
        indexed = index_functions(app, default_auth_level=default_level)
        unknown = set(settings.only) - {f.name for f in indexed}
        if unknown:
            raise HostConfigError(f"--functions names unknown function(s): {', '.join(sorted(unknown))}")
        self.functions = {f.name: f for f in indexed if not settings.only or f.name in settings.only}
        self.queues = LocalQueues(settings.state_dir / "queues.sqlite3")
        self.stats = _Stats()
        self.pumps = [
            QueuePump(f, self.queues, self.config.service_bus, self.record)
            for f in self.functions.values()
            if f.trigger_type == SERVICE_BUS
        ]
        self.timers = [TimerRunner(f, self.record) for f in self.functions.values() if f.trigger_type == TIMER]
        self.httpd = ThreadingHTTPServer((settings.bind, settings.port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._serve_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Where the host listens."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, function: str, status: str, seconds: float, message_id: str | None) -> None:
        """Count one invocation (for /admin/host/status)."""
        with self.stats.lock:
            self.stats.invocations[f"{function}:{status}"] += 1

    def start(self) -> None:
        """Serve HTTP and start the pumps and timers, in background threads."""
        self._serve_thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._serve_thread.start()
        for pump in self.pumps:
            pump.start()
        for timer in self.timers:
            timer.start()

    def stop(self) -> None:
        """Stop accepting work and let running invocations finish."""
        self.httpd.shutdown()
        for pump in self.pumps:
            pump.stop(wait=True)
        for timer in self.timers:
            timer.stop()
        self.httpd.server_close()
        self.queues.close()

    def status(self) -> dict[str, Any]:
        """The body of ``GET /admin/host/status``."""
        with self.stats.lock:
            invocations = dict(self.stats.invocations)
        return {
            "id": self.instance_id,
            "state": "Running",
            "version": HOST_VERSION,
            "processUptime": int((time.monotonic() - self.stats.started) * 1000),
            "functions": len(self.functions),
            "invocations": invocations,
            "queues": {name: self.queues.counts(name) for name in self.queues.specs},
        }

    def print_banner(self, out: Any) -> None:
        """What Core Tools prints at start: the functions and where they answer."""
        print(f"Signalbox local host {HOST_VERSION} listening on {self.base_url}", file=out)
        print(f"State dir: {self.settings.state_dir}", file=out)
        if not self.settings.auth:
            print("Auth is off (--no-auth): keys are not checked, as with Core Tools.", file=out)
        else:
            # Only where the keys are: host output ends up in logs, and a key must never.
            made = "generated into" if self.keys_created else "in"
            keys_file = self.settings.state_dir / "host-keys.json"
            print(f"Keys (function, admin, Event Grid system): {made} {keys_file}", file=out)
        print("\nFunctions:", file=out)
        prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
        for f in self.functions.values():
            if f.trigger_type == HTTP and f.route is not None:
                methods = ",".join(sorted(f.methods)) or "*"
                print(f"  {f.name}: [{methods}] {self.base_url}{prefix}/{f.route.template}", file=out)
            elif f.trigger_type == EVENT_GRID:
                print(
                    f"  {f.name}: eventGridTrigger {self.base_url}/runtime/webhooks/EventGrid?functionName={f.name}",
                    file=out,
                )
            else:
                print(f"  {f.name}: {f.trigger_type}", file=out)


def _int32(text: str) -> bool:
    """Whether a route value passes ``{x:int}``: a 32-bit integer, as ASP.NET's int route constraint."""
    return re.fullmatch(r"-?[0-9]{1,10}", text) is not None and -(2**31) <= int(text) < 2**31


class _Reply(Exception):
    """A response decided while handling a request (an error with its status)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _handler_for(host: LocalHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "SignalboxLocalHost/1.0"
        protocol_version = "HTTP/1.1"
        # Socket read timeout: request line and headers, and idle keep-alive connections.
        timeout = host.settings.request_timeout

        def log_message(self, format: str, *args: Any) -> None:
            # The request line carries ?code=<key> when a caller authenticates in the URL.
            log.debug("%s - %s", self.address_string(), redact_keys(format % args))

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_OPTIONS(self) -> None:
            self._dispatch("OPTIONS")

        # -- plumbing -------------------------------------------------------------------

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if not self._body_read and self._announces_body():
                # A body left unread (refused before reading it) would be parsed as the next request.
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send(
                status,
                json.dumps(payload, default=str).encode(),
                {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
            )

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._json(status, {"error": HTTPStatus(status).phrase, "message": message}, headers)

        _body_read = False

        def _announces_body(self) -> bool:
            return "Transfer-Encoding" in self.headers or (self.headers.get("Content-Length") or "0").strip() != "0"

        def _body(self, limit: int) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise _Reply(411, "chunked request bodies are not supported; send Content-Length")
            raw_length = self.headers.get("Content-Length") or "0"
            try:
                length = int(raw_length)
            except ValueError:
                raise _Reply(400, f"Content-Length is not a number: {raw_length!r}") from None
            if length < 0:
                raise _Reply(400, "Content-Length is negative")
            if length > limit:
                self.close_connection = True
                raise _Reply(413, f"request body of {length} bytes is over the limit of {limit} bytes")
            body = self._read_exactly(length) if length else b""
            self._body_read = True
            return body

        def _read_exactly(self, length: int) -> bytes:
            # One deadline for the whole body: a per-read timeout alone lets a trickle go on forever.
            budget = host.settings.request_timeout
            deadline = time.monotonic() + budget
            chunks: list[bytes] = []
            remaining = length
            try:
                while remaining:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.connection.settimeout(left)
                    chunk = self.rfile.read1(min(remaining, 1 << 16))
                    if not chunk:
                        self.close_connection = True
                        raise _Reply(400, f"the body ended after {length - remaining} of {length} bytes")
                    chunks.append(chunk)
                    remaining -= len(chunk)
            except TimeoutError:
                self.close_connection = True
                raise _Reply(
                    408, f"got {length - remaining} of {length} body bytes in {budget:g} s; send the whole body"
                ) from None
            finally:
                self.connection.settimeout(self.timeout)
            return b"".join(chunks)

        def _key(self, query: dict[str, str]) -> str | None:
            return self.headers.get("x-functions-key") or query.get("code")

        def _require(self, level: str, query: dict[str, str], *, system: bool = False) -> None:
            if host.settings.auth and not host.keys.allows(level, self._key(query), system=system):
                needed = (
                    "the Event Grid system key or the admin key"
                    if system
                    else f"a{'n' if level == 'admin' else ''} {level} key"
                )
                raise _Reply(401, f"this endpoint needs {needed} (x-functions-key header or code query parameter)")

        def _dispatch(self, method: str) -> None:
            self._body_read = False
            try:
                parts = urlsplit(self.path)
                path = parts.path
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                lowered = path.lower().rstrip("/")
                prefix = f"/{host.config.route_prefix}".lower() if host.config.route_prefix else ""
                if lowered == "/runtime/webhooks/eventgrid":
                    self._event_grid(method, query)
                elif lowered.startswith("/endpoints/") and lowered.endswith("/invocations"):
                    self._endpoint(method, path)
                elif lowered.startswith("/admin/"):
                    self._admin(method, lowered, query)
                elif not prefix or lowered == prefix or lowered.startswith(prefix + "/"):
                    self._http_trigger(method, path[len(prefix) :], query)
                elif lowered in ("", "/"):
                    self._send(200, b"Signalbox local Functions host is running.\n")
                else:
                    raise _Reply(404, f"no route for {path}")
            except _Reply as reply:
                self._error(reply.status, reply.message, reply.headers)
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception:
                log.error("host error on %s %s\n%s", method, redact_keys(self.path), traceback.format_exc())
                self._error(500, "the local host failed to handle the request; see the host log")

        # -- HTTP triggers ----------------------------------------------------------------

        def _http_trigger(self, method: str, path: str, query: dict[str, str]) -> None:
            import azure.functions as func

            matched: tuple[HostedFunction, dict[str, str]] | None = None
            allowed: set[str] = set()
            for function in host.functions.values():
                if function.trigger_type != HTTP or function.route is None:
                    continue
                params = function.route.match(path)
                if params is None:
                    continue
                if function.methods and method not in function.methods:
                    allowed |= function.methods
                    continue
                bad_int = [p for p in function.route.int_params if p in params and not _int32(params[p])]
                if bad_int:
                    continue
                matched = (function, params)
                break
            if matched is None:
                if allowed:
                    raise _Reply(405, f"method {method} is not allowed here", {"Allow": ", ".join(sorted(allowed))})
                raise _Reply(404, f"no function answers {path or '/'}")
            function, route_params = matched
            self._require(function.auth_level, query)
            body = self._body(MAX_HTTP_BODY)
            request = func.HttpRequest(
                method=method,
                url=f"{host.base_url}{self.path}",
                headers={k: v for k, v in self.headers.items()},
                params=query,
                route_params=route_params,
                body=body,
            )
            started = time.monotonic()
            try:
                result = function.call(**{function.trigger_arg: request})
            except Exception as exc:
                host.record(function.name, "Failed", time.monotonic() - started, None)
                log.error(
                    "Executed 'Functions.%s' (Failed): %s: %s\n%s",
                    function.name,
                    type(exc).__name__,
                    exc,
                    traceback.format_exc(limit=5),
                )
                raise _Reply(500, f"function {function.name} failed; see the host log") from None
            host.record(function.name, "Succeeded", time.monotonic() - started, None)
            self._http_result(result)

        def _http_result(self, result: Any) -> None:
            import azure.functions as func

            if isinstance(result, func.HttpResponse):
                headers = dict(result.headers.items())
                if "content-type" not in {h.lower() for h in headers}:
                    mimetype = result.mimetype or "text/plain"
                    headers["Content-Type"] = f"{mimetype}; charset={result.charset or 'utf-8'}"
                self._send(result.status_code, result.get_body() or b"", headers)
            elif result is None:
                self._send(204, b"")
            elif isinstance(result, bytes):
                self._send(200, result, {"Content-Type": "application/octet-stream"})
            elif isinstance(result, str):
                self._send(200, result.encode())
            else:
                self._json(200, result)

        # -- Event Grid ---------------------------------------------------------------------

        def _event_grid(self, method: str, query: dict[str, str]) -> None:
            name = query.get("functionName", "")
            function = host.functions.get(name)
            if not name:
                raise _Reply(400, "functionName query parameter is required")
            if function is None:
                raise _Reply(404, f"no function named {name!r}")
            if function.trigger_type != EVENT_GRID:
                raise _Reply(400, f"function {name!r} is a {function.trigger_type}, not an eventGridTrigger")
            self._require("function", query, system=True)
            if method == "OPTIONS":
                # CloudEvents abuse protection (webhook validation handshake).
                origin = self.headers.get("WebHook-Request-Origin")
                if not origin:
                    raise _Reply(400, "OPTIONS needs a WebHook-Request-Origin header (CloudEvents validation)")
                self._send(200, b"", {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST"})
                return
            if method != "POST":
                raise _Reply(405, "Event Grid deliveries are POSTed", {"Allow": "POST, OPTIONS"})
            body = self._body(MAX_EVENT_GRID_BODY)
            event_type_header = (self.headers.get("aeg-event-type") or "").lower()
            try:
                events = parse_delivery(body, content_type=self.headers.get("Content-Type"))
            except InvalidEvent as exc:
                raise _Reply(400, f"not a valid Event Grid or CloudEvents delivery: {exc}") from None
            code = validation_code(events)
            if code is not None or event_type_header == "subscriptionvalidation":
                if code is None:
                    raise _Reply(400, "SubscriptionValidation without data.validationCode")
                log.info("Event Grid subscription validated for function %s", name)
                self._json(200, {"validationResponse": code})
                return
            if event_type_header == "unsubscribe":
                self._send(202, b"")
                return
            for delivered in events:
                event = delivered.event
                started = time.monotonic()
                log.info(
                    "Executing 'Functions.%s' (Reason='EventGrid trigger fired', EventId=%s, EventType=%s)",
                    name,
                    event.id,
                    event.type,
                )
                try:
                    invoke_event_grid(function, delivered.raw)
                except Exception as exc:
                    host.record(name, "Failed", time.monotonic() - started, event.id)
                    log.error(
                        "Executed 'Functions.%s' (Failed, EventId=%s): %s: %s\n%s",
                        name,
                        event.id,
                        type(exc).__name__,
                        exc,
                        traceback.format_exc(limit=5),
                    )
                    # A 5xx makes Event Grid retry the delivery, as the real extension does.
                    raise _Reply(500, f"function {name} failed on event {event.id}; the sender should retry") from None
                host.record(name, "Succeeded", time.monotonic() - started, event.id)
                log.info("Executed 'Functions.%s' (Succeeded, EventId=%s)", name, event.id)
            self._send(200, b"")

        # -- local endpoints ----------------------------------------------------------------

        def _endpoint(self, method: str, path: str) -> None:
            # The stable scoring URL of a local endpoint: whichever slot has the traffic now.
            from signalbox.localhost.endpoints import proxy_invocation

            if method != "POST":
                raise _Reply(405, "score with POST", {"Allow": "POST"})
            endpoint = path.strip("/").split("/")[1]
            body = self._body(MAX_HTTP_BODY)
            status, headers, payload = proxy_invocation(
                host.settings.state_dir, endpoint, body, self.headers.get("Content-Type")
            )
            self._send(status, payload, headers)

        # -- admin ----------------------------------------------------------------------------

        def _admin(self, method: str, path: str, query: dict[str, str]) -> None:
            self._require("admin", query)
            if path == "/admin/functions" and method == "GET":
                self._json(200, [f.describe() for f in host.functions.values()])
            elif path == "/admin/host/status" and method == "GET":
                self._json(200, host.status())
            elif path.startswith("/admin/functions/") and method == "POST":
                # Core Tools' way to run a non-HTTP function by hand.
                name = path.removeprefix("/admin/functions/")
                function = next((f for f in host.functions.values() if f.name.lower() == name), None)
                if function is None:
                    raise _Reply(404, f"no function named {name!r}")
                if function.trigger_type != TIMER:
                    raise _Reply(
                        400,
                        f"only timer functions can be run by hand here; {function.name} is a {function.trigger_type}",
                    )
                self._body(MAX_HTTP_BODY)
                runner = next(t for t in host.timers if t.function is function)
                threading.Thread(target=runner.fire, daemon=True).start()
                self._send(202, b"")
            else:
                raise _Reply(404, f"no admin endpoint {method} {path}")

    return Handler


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s %(message_id)s] %(message)s"


def configure_logging(stream: Any = None, filename: Any = None) -> None:
    """Host logs as Core Tools prints them, with each hop's correlation and message ids."""
    from shared import observability

    observability.install()
    if filename is not None:
        logging.basicConfig(filename=filename, level=logging.INFO, format=LOG_FORMAT)
    else:
        logging.basicConfig(stream=stream, level=logging.INFO, format=LOG_FORMAT)
    # The MLflow client and HTTP libraries are chatty at INFO; their warnings still show.
    for noisy in ("urllib3", "mlflow", "alembic", "azure", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_host(settings: HostSettings, out: Any) -> int:
    """Run a host in the foreground until interrupted (``signalbox host``)."""
    import signal

    configure_logging(stream=out)
    try:
        host = LocalHost(settings)
    except (HostConfigError, OSError) as exc:
        print(f"error: {exc}", file=out)
        return 2
    host.start()
    host.print_banner(out)
    out.flush()
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stopping.wait()
    print(f"\nStopping host ({datetime.now(UTC):%H:%M:%S}); letting running invocations finish.", file=out)
    host.stop()
    return 0
