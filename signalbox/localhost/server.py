"""The local host: HTTP triggers, Event Grid deliveries, admin API and the trigger pumps.

It keeps the real Functions host's contract so the same ``function_app`` runs here
and in Azure: routes under ``/api``, auth levels with function and admin keys,
``/runtime/webhooks/EventGrid`` with the validation handshakes, ``/admin/*``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.adapters.local.queues import LocalQueues
from shared.events import InvalidEvent
from signalbox.localhost.config import (
    HostConfig,
    HostConfigError,
    HostKeys,
    load_local_settings,
)
from signalbox.localhost.eventgrid import parse_delivery, validation_code
from signalbox.localhost.http import Answer, Head, HttpLimits, HttpServer, Refusal, Work
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
    # A client slower than this gets 408 (a body) or is disconnected (headers, an idle connection), so a
    # lying Content-Length or a trickle cannot hold the connection forever.
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
        self.timers = [
            TimerRunner(f, self.record, settings.state_dir / "timers")
            for f in self.functions.values()
            if f.trigger_type == TIMER
        ]
        self.http = HttpServer(
            _Routes(self),
            settings.bind,
            settings.port,
            request_timeout=settings.request_timeout,
            limits=HttpLimits.from_host_json(root / "host.json"),
        )

    @property
    def base_url(self) -> str:
        """Where the host listens."""
        host, port = self.http.address
        return f"http://{host}:{port}"

    def record(self, function: str, status: str, seconds: float, message_id: str | None) -> None:
        """Count one invocation (for /admin/host/status)."""
        with self.stats.lock:
            self.stats.invocations[f"{function}:{status}"] += 1

    def start(self) -> None:
        """Serve HTTP and start the pumps and timers, in background threads."""
        self.http.start()
        for pump in self.pumps:
            pump.start()
        for timer in self.timers:
            timer.start()

    def stop(self) -> None:
        """Stop accepting work and let running invocations finish."""
        self.http.stop()
        for pump in self.pumps:
            pump.stop(wait=True)
        for timer in self.timers:
            timer.stop()
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


def _http_request(method: str, url: str, head: Head, route_params: dict[str, str], body: bytes) -> Any:
    """The trigger's ``azure.functions.HttpRequest``, decoded by the library's own converter from the
    ``http`` datum the Python worker builds out of the host's RpcHttp (raw body bytes, string headers)."""
    from azure.functions import meta
    from azure.functions.http import HttpRequestConverter

    def strings(values: Mapping[str, str]) -> dict[str, meta.Datum]:
        return {name: meta.Datum(value, "string") for name, value in values.items()}

    datum = meta.Datum(
        {
            "method": meta.Datum(method, "string"),
            "url": meta.Datum(url, "string"),
            "headers": strings(head.headers),
            "body": meta.Datum(body, "bytes"),
            "params": strings(route_params),
            "query": strings(head.query),
        },
        "http",
    )
    return HttpRequestConverter.decode(datum, trigger_metadata={})


def _http_answer(result: Any) -> Answer:
    """A function's return value as the answer: HttpResponse and str through the library's output converter."""
    import azure.functions as func
    from azure.functions.http import HttpResponseConverter

    if isinstance(result, func.HttpResponse | str):
        datum = HttpResponseConverter.encode(result, expected_type=None)
        if datum.type == "string":
            return Answer(200, str(datum.value).encode())
        value = datum.value
        headers = [(name, str(header.value)) for name, header in value["headers"].items()]
        for cookie in value.get("cookies") or ():
            headers += [("Set-Cookie", morsel.OutputString()) for morsel in cookie.values()]
        return Answer(int(value["status_code"].value), bytes(value["body"].value or b""), headers)
    if result is None:
        return Answer(204)
    if isinstance(result, bytes):
        return Answer(200, result, [("Content-Type", "application/octet-stream")])
    return Answer.json(200, result)


class _Routes:
    """The host's routes and auth levels, decided from the request head; the work runs in the HTTP pools."""

    def __init__(self, host: LocalHost) -> None:
        self.host = host

    def __call__(self, head: Head) -> Answer | Work:
        path = head.path
        lowered = path.lower().rstrip("/")
        config = self.host.config
        prefix = f"/{config.route_prefix}".lower() if config.route_prefix else ""
        if lowered == "/runtime/webhooks/eventgrid":
            return self._event_grid(head)
        if lowered.startswith("/endpoints/") and lowered.endswith("/invocations"):
            return self._endpoint(head)
        if lowered.startswith("/admin/"):
            return self._admin(head, lowered)
        if not prefix or lowered == prefix or lowered.startswith(prefix + "/"):
            return self._http_trigger(head, path[len(prefix) :])
        if lowered in ("", "/"):
            return Answer(200, b"Signalbox local Functions host is running.\n")
        raise Refusal(404, f"no route for {path}")

    def _require(self, level: str, head: Head, *, system: bool = False) -> None:
        given = head.header("x-functions-key") or head.query.get("code")
        if self.host.settings.auth and not self.host.keys.allows(level, given, system=system):
            article = "an" if level == "admin" else "a"
            needed = "the Event Grid system key or the admin key" if system else f"{article} {level} key"
            raise Refusal(401, f"this endpoint needs {needed} (x-functions-key header or code query parameter)")

    # -- HTTP triggers ----------------------------------------------------------------

    def _http_trigger(self, head: Head, path: str) -> Work:
        matched: tuple[HostedFunction, dict[str, str]] | None = None
        allowed: set[str] = set()
        for function in self.host.functions.values():
            if function.trigger_type != HTTP or function.route is None:
                continue
            params = function.route.match(path)
            if params is None:
                continue
            if function.methods and head.method not in function.methods:
                allowed |= function.methods
                continue
            bad_int = [p for p in function.route.int_params if p in params and not _int32(params[p])]
            if bad_int:
                continue
            matched = (function, params)
            break
        if matched is None:
            if allowed:
                raise Refusal(405, f"method {head.method} is not allowed here", {"Allow": ", ".join(sorted(allowed))})
            raise Refusal(404, f"no function answers {path or '/'}")
        function, route_params = matched
        self._require(function.auth_level, head)
        return Work(lambda body: self._invoke_http(function, route_params, head, body), MAX_HTTP_BODY)

    def _invoke_http(self, function: HostedFunction, route_params: dict[str, str], head: Head, body: bytes) -> Answer:
        request = _http_request(head.method, f"{self.host.base_url}{head.target}", head, route_params, body)
        started = time.monotonic()
        try:
            result = function.call(**{function.trigger_arg: request})
        except Exception as exc:
            self.host.record(function.name, "Failed", time.monotonic() - started, None)
            log.error(
                "Executed 'Functions.%s' (Failed): %s: %s\n%s",
                function.name,
                type(exc).__name__,
                exc,
                traceback.format_exc(limit=5),
            )
            raise Refusal(500, f"function {function.name} failed; see the host log") from None
        self.host.record(function.name, "Succeeded", time.monotonic() - started, None)
        return _http_answer(result)

    # -- Event Grid ---------------------------------------------------------------------

    def _event_grid(self, head: Head) -> Answer | Work:
        name = head.query.get("functionName", "")
        function = self.host.functions.get(name)
        if not name:
            raise Refusal(400, "functionName query parameter is required")
        if function is None:
            raise Refusal(404, f"no function named {name!r}")
        if function.trigger_type != EVENT_GRID:
            raise Refusal(400, f"function {name!r} is a {function.trigger_type}, not an eventGridTrigger")
        self._require("function", head, system=True)
        if head.method == "OPTIONS":
            # CloudEvents abuse protection (webhook validation handshake).
            origin = head.header("WebHook-Request-Origin")
            if not origin:
                raise Refusal(400, "OPTIONS needs a WebHook-Request-Origin header (CloudEvents validation)")
            allowed = [("WebHook-Allowed-Origin", origin), ("WebHook-Allowed-Rate", "*"), ("Allow", "POST")]
            return Answer(200, b"", allowed)
        if head.method != "POST":
            raise Refusal(405, "Event Grid deliveries are POSTed", {"Allow": "POST, OPTIONS"})
        return Work(lambda body: self._deliver(function, head, body), MAX_EVENT_GRID_BODY)

    def _deliver(self, function: HostedFunction, head: Head, body: bytes) -> Answer:
        name = function.name
        event_type_header = (head.header("aeg-event-type") or "").lower()
        try:
            events = parse_delivery(body, content_type=head.header("Content-Type"))
        except InvalidEvent as exc:
            raise Refusal(400, f"not a valid Event Grid or CloudEvents delivery: {exc}") from None
        code = validation_code(events)
        if code is not None or event_type_header == "subscriptionvalidation":
            if code is None:
                raise Refusal(400, "SubscriptionValidation without data.validationCode")
            log.info("Event Grid subscription validated for function %s", name)
            return Answer.json(200, {"validationResponse": code})
        if event_type_header == "unsubscribe":
            return Answer(202)
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
                self.host.record(name, "Failed", time.monotonic() - started, event.id)
                log.error(
                    "Executed 'Functions.%s' (Failed, EventId=%s): %s: %s\n%s",
                    name,
                    event.id,
                    type(exc).__name__,
                    exc,
                    traceback.format_exc(limit=5),
                )
                # A 5xx makes Event Grid retry the delivery, as the real extension does.
                raise Refusal(500, f"function {name} failed on event {event.id}; the sender should retry") from None
            self.host.record(name, "Succeeded", time.monotonic() - started, event.id)
            log.info("Executed 'Functions.%s' (Succeeded, EventId=%s)", name, event.id)
        return Answer(200)

    # -- local endpoints ----------------------------------------------------------------

    def _endpoint(self, head: Head) -> Work:
        # The stable scoring URL of a local endpoint: whichever slot has the traffic now.
        from signalbox.localhost.endpoints import proxy_invocation

        if head.method != "POST":
            raise Refusal(405, "score with POST", {"Allow": "POST"})
        endpoint = head.path.strip("/").split("/")[1]
        state_dir = self.host.settings.state_dir

        def score(body: bytes) -> Answer:
            status, headers, payload = proxy_invocation(state_dir, endpoint, body, head.header("Content-Type"))
            return Answer(status, payload, list(headers.items()))

        return Work(score, MAX_HTTP_BODY)

    # -- admin ----------------------------------------------------------------------------

    def _admin(self, head: Head, path: str) -> Answer | Work:
        self._require("admin", head)
        host, method = self.host, head.method
        if path == "/admin/functions" and method == "GET":
            return Answer.json(200, [f.describe() for f in host.functions.values()])
        if path == "/admin/host/status" and method == "GET":
            return Work(lambda _body: Answer.json(200, host.status()), None, admin=True)
        if path.startswith("/admin/functions/") and method == "POST":
            # Core Tools' way to run a non-HTTP function by hand.
            name = path.removeprefix("/admin/functions/")
            function = next((f for f in host.functions.values() if f.name.lower() == name), None)
            if function is None:
                raise Refusal(404, f"no function named {name!r}")
            if function.trigger_type != TIMER:
                raise Refusal(
                    400,
                    f"only timer functions can be run by hand here; {function.name} is a {function.trigger_type}",
                )
            runner = next(t for t in host.timers if t.function is function)

            def fire(_body: bytes) -> Answer:
                threading.Thread(target=runner.fire, daemon=True).start()
                return Answer(202)

            return Work(fire, MAX_HTTP_BODY, admin=True)
        raise Refusal(404, f"no admin endpoint {method} {path}")


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
    for noisy in ("urllib3", "mlflow", "alembic", "azure", "httpx", "uvicorn"):
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
