"""MonitorQueueDepths through azure-monitor-query's own MetricsQueryClient, against a local HTTPS server.

The server answers ``GET {resourceUri}/providers/Microsoft.Insights/metrics`` with the shapes of the
Azure Monitor REST reference (Metrics - List, api-version 2024-02-01: ``value[].timeseries[].data[]``,
``metadatavalues`` naming the ``EntityName`` dimension, points without a value for minutes that have
no data yet) and with ARM's error bodies (403 AuthorizationFailed, 404 ResourceNotFound, 429 with
Retry-After, a plain-text 503). The SDK builds the request, signs it with a bearer token and parses
the answer; only the answer is ours.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken

from shared.adapters.local.net import free_port
from shared.errors import PermanentError, TransientError
from shared.queue_depths import MONITORING_READER, MonitorQueueDepths
from tests.tls import self_signed_certificate

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-signalbox-dev"
    "/providers/Microsoft.ServiceBus/namespaces/sb-sig-dev"
)
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.not-a-real-token"
QUEUES = ("train", "poll-run", "evaluate", "promote", "deploy")
METRICS_PATH = f"{RESOURCE_ID}/providers/Microsoft.Insights/metrics"


def point(minute: int, average: float | None) -> dict[str, Any]:
    """One data point; a minute without data has only its time stamp (as Azure Monitor sends it)."""
    stamp = {"timeStamp": f"2026-12-06T05:{minute:02d}:00Z"}
    return stamp if average is None else {**stamp, "average": average}


def series(entity: str, *points: dict[str, Any], dimension: str = "EntityName") -> dict[str, Any]:
    return {
        "metadatavalues": [{"name": {"value": dimension, "localizedValue": dimension}, "value": entity}],
        "data": list(points),
    }


def metric(name: str, description: str, *timeseries: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{RESOURCE_ID}/providers/Microsoft.Insights/metrics/{name}",
        "type": "Microsoft.Insights/metrics",
        "name": {"value": name, "localizedValue": description},
        "displayDescription": description,
        "unit": "Count",
        "timeseries": list(timeseries),
        "errorCode": "Success",
    }


def metrics_response(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "cost": 597,
        "timespan": "2026-12-06T04:52:00Z/2026-12-06T05:02:00Z",
        "interval": "PT1M",
        "value": list(metrics),
        "namespace": "Microsoft.ServiceBus/namespaces",
        "resourceregion": "westeurope",
    }


def arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class FakeMonitor:
    """Azure Resource Manager's metrics endpoint on 127.0.0.1 (HTTPS): answers queued per request."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.answers: list[Answer] = []
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                with fake.lock:
                    fake.requests.append(Request(url.path, parse_qs(url.query), dict(self.headers.items())))
                    known = url.path == METRICS_PATH and fake.answers
                    answer = fake.answers.pop(0) if known else Answer(404, arm_error("NotFound", url.path))
                text = isinstance(answer.body, str)
                data = (answer.body if text else json.dumps(answer.body)).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "text/plain" if text else "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, status: int, body: Any, **headers: str) -> None:
        with self.lock:
            self.answers.append(Answer(status, body, headers))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StubCredential:
    """A token credential: records the scopes it was asked for."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(TOKEN, 4_000_000_000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def monitor(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMonitor]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = FakeMonitor(*certificate)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


def depths_over(
    monitor: FakeMonitor, certificate: tuple[Path, Path], **options: Any
) -> tuple[MonitorQueueDepths, StubCredential]:
    credential = StubCredential()
    made: list[StubCredential] = []

    def make() -> StubCredential:
        made.append(credential)
        return credential

    depths = MonitorQueueDepths(
        RESOURCE_ID, make, names=QUEUES, endpoint=monitor.base, connection_verify=str(certificate[0]), **options
    )
    return depths, credential


# -- the answer ---------------------------------------------------------------------------------------


def test_the_latest_minute_with_a_value_of_each_metric_per_queue(monitor, certificate):
    monitor.answer(
        200,
        metrics_response(
            metric(
                "ActiveMessages",
                "Count of active messages in a Queue/Topic.",
                series("train", point(58, 7.0), point(59, 4.0), point(0, None), point(1, None)),
                series("evaluate", point(59, 1.0), point(0, 2.4)),
                series("deploy", point(0, None)),  # no value in the window yet
            ),
            metric(
                "ScheduledMessages",
                "Count of scheduled messages in a Queue/Topic.",
                series("poll-run", point(0, 12.0)),
            ),
            metric(
                "DeadletteredMessages",
                "Count of dead-lettered messages in a Queue/Topic.",
                series("train", point(0, 3.0)),
                series("promote", point(0, 1.0)),
            ),
        ),
    )
    depths, credential = depths_over(monitor, certificate)
    assert depths.depths() == {
        "train": {"active": 4, "scheduled": 0, "locked": 0, "dead_letter": 3},
        "poll-run": {"active": 0, "scheduled": 12, "locked": 0, "dead_letter": 0},
        "evaluate": {"active": 2, "scheduled": 0, "locked": 0, "dead_letter": 0},
        "promote": {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 1},
        "deploy": {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0},
    }
    assert credential.scopes == [f"{monitor.base}/.default"]  # the endpoint's audience (ARM in Azure)


def test_the_request_the_sdk_sends(monitor, certificate):
    monitor.answer(200, metrics_response())
    depths, _ = depths_over(monitor, certificate)
    depths.depths()
    (request,) = monitor.requests
    assert request.path == METRICS_PATH
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    query = {name: values[0] for name, values in request.query.items()}
    assert query["api-version"] == "2024-02-01"
    assert query["metricnames"].split(",") == ["ActiveMessages", "ScheduledMessages", "DeadletteredMessages"]
    assert query["aggregation"] == "Average"
    assert query["interval"] == "PT1M"
    start, end = (datetime.fromisoformat(moment) for moment in query["timespan"].split("/"))
    assert end - start == timedelta(minutes=10) and end.tzinfo is not None
    assert abs(datetime.now(UTC) - end) < timedelta(minutes=2)
    assert query["metricnamespace"] == "Microsoft.ServiceBus/namespaces"
    assert query["top"] == str(len(QUEUES))
    assert query["$filter"] == " or ".join(f"EntityName eq '{q}'" for q in QUEUES)


def test_dimension_and_entity_names_match_whatever_their_case(monitor, certificate):
    monitor.answer(
        200,
        metrics_response(
            metric(
                "ActiveMessages",
                "Count of active messages in a Queue/Topic.",
                series("TRAIN", point(0, 5.0), dimension="entityname"),
                series("other-queue", point(0, 99.0)),  # not one of ours
            )
        ),
    )
    depths, _ = depths_over(monitor, certificate)
    answer = depths.depths()
    assert answer["train"]["active"] == 5
    assert set(answer) == set(QUEUES)


def test_answers_are_cached_for_a_while(monitor, certificate):
    clock = Clock()
    one = metrics_response(metric("ActiveMessages", "a", series("train", point(0, 1.0))))
    two = metrics_response(metric("ActiveMessages", "a", series("train", point(1, 2.0))))
    monitor.answer(200, one)
    monitor.answer(200, two)
    depths, _ = depths_over(monitor, certificate, clock=clock, cache_seconds=30)
    first = depths.depths()
    first["train"]["active"] = 1000  # a caller's change does not reach the cache
    clock.now += 29
    assert depths.depths()["train"]["active"] == 1
    assert len(monitor.requests) == 1
    clock.now += 2
    assert depths.depths()["train"]["active"] == 2
    assert len(monitor.requests) == 2


def test_the_credential_is_made_once_on_first_use(monitor, certificate):
    made: list[int] = []

    def make() -> StubCredential:
        made.append(1)
        return StubCredential()

    depths = MonitorQueueDepths(
        RESOURCE_ID, make, names=QUEUES, endpoint=monitor.base, connection_verify=str(certificate[0]), cache_seconds=0
    )
    assert made == []
    monitor.answer(200, metrics_response())
    monitor.answer(200, metrics_response())
    depths.depths()
    depths.depths()
    assert made == [1] and len(monitor.requests) == 2


# -- what goes wrong ----------------------------------------------------------------------------------

AUTHORIZATION_FAILED = (
    "The client 'aaaaaaaa-0000-0000-0000-000000000000' with object id 'aaaaaaaa-0000-0000-0000-000000000000' does "
    "not have authorization to perform action 'microsoft.insights/metrics/read' over scope "
    f"'{RESOURCE_ID}/providers/microsoft.insights' or the scope is invalid. If access was recently granted, "
    "please refresh your credentials."
)


@pytest.mark.parametrize(
    ("status", "body", "headers", "becomes", "says"),
    [
        (403, arm_error("AuthorizationFailed", AUTHORIZATION_FAILED), {}, PermanentError, "Monitoring Reader"),
        (
            404,
            arm_error("ResourceNotFound", f"The Resource '{RESOURCE_ID}' was not found."),
            {},
            PermanentError,
            "SIGNALBOX_SERVICEBUS_RESOURCE_ID",
        ),
        (
            400,
            arm_error("BadRequest", "Failed to find metric configuration for provider: Microsoft.ServiceBus"),
            {},
            PermanentError,
            "BadRequest",
        ),
        (
            401,
            arm_error("InvalidAuthenticationToken", "The access token is invalid."),
            {},
            PermanentError,
            "managed identity",
        ),
        (429, arm_error("TooManyRequests", "Rate limit exceeded."), {"Retry-After": "17"}, TransientError, "429"),
        (503, "upstream request timeout", {}, TransientError, "retry later"),
    ],
    ids=["403", "404", "400", "401", "429", "503-plain-text"],
)
def test_errors_say_what_to_fix_or_to_retry(monitor, certificate, status, body, headers, becomes, says):
    monitor.answer(status, body, **headers)
    depths, _ = depths_over(monitor, certificate)
    with pytest.raises(becomes, match=says) as raised:
        depths.depths()
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert len(monitor.requests) == 1  # no retry: the ops page asks again at its next refresh
    assert TOKEN not in str(raised.value)
    if status == 403:
        assert MONITORING_READER in str(raised.value) and "AuthorizationFailed" in str(raised.value)


def test_a_failure_is_not_cached(monitor, certificate):
    monitor.answer(503, "Service Unavailable")
    monitor.answer(200, metrics_response(metric("DeadletteredMessages", "d", series("deploy", point(0, 2.0)))))
    depths, _ = depths_over(monitor, certificate)
    with pytest.raises(TransientError):
        depths.depths()
    assert depths.depths()["deploy"]["dead_letter"] == 2


def test_an_unreachable_endpoint_is_transient(certificate):
    port = free_port()  # nothing listens there
    depths = MonitorQueueDepths(
        RESOURCE_ID,
        StubCredential,
        names=QUEUES,
        endpoint=f"https://127.0.0.1:{port}",
        connection_verify=str(certificate[0]),
    )
    with pytest.raises(TransientError, match="unreachable"):
        depths.depths()


def test_a_credential_that_cannot_get_a_token_is_permanent(monitor, certificate):
    from azure.core.exceptions import ClientAuthenticationError

    class NoToken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise ClientAuthenticationError("ManagedIdentityCredential authentication unavailable")

    depths = MonitorQueueDepths(
        RESOURCE_ID, NoToken, names=QUEUES, endpoint=monitor.base, connection_verify=str(certificate[0])
    )
    with pytest.raises(PermanentError, match="managed identity"):
        depths.depths()
    assert monitor.requests == []


# -- wiring -------------------------------------------------------------------------------------------


def test_the_service_bus_wiring_picks_azure_monitor_when_the_resource_id_is_set():
    from shared.adapters import Wiring
    from shared.adapters.servicebus import make_queues
    from shared.queue_depths import ServiceBusQueueDepths
    from shared.settings import Settings

    namespace = "sb-sig-dev.servicebus.windows.net"
    with_id = Settings.model_validate(
        {"ServiceBusConnection__fullyQualifiedNamespace": namespace, "SIGNALBOX_SERVICEBUS_RESOURCE_ID": RESOURCE_ID}
    )
    _, _, depths = make_queues(Wiring(settings=with_id, tracking_uri="", registry_uri=None))
    assert isinstance(depths, MonitorQueueDepths) and depths.resource_id == RESOURCE_ID
    assert depths.names == tuple(QUEUES)
    without = Settings.model_validate({"ServiceBusConnection__fullyQualifiedNamespace": namespace})
    _, _, depths = make_queues(Wiring(settings=without, tracking_uri="", registry_uri=None))
    assert isinstance(depths, ServiceBusQueueDepths)


def test_the_resource_id_setting_must_be_a_service_bus_namespace():
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError, match="SIGNALBOX_SERVICEBUS_RESOURCE_ID"):
        Settings.model_validate({"SIGNALBOX_SERVICEBUS_RESOURCE_ID": "sb-sig-dev.servicebus.windows.net"})
    lower = RESOURCE_ID.lower()  # ARM ids are case-insensitive
    assert Settings.model_validate({"SIGNALBOX_SERVICEBUS_RESOURCE_ID": lower}).servicebus_resource_id == lower
