"""EventGridLifecycleEvents drives the real EventGridPublisherClient against a local fake of the topic's publish API.

The fake answers as Event Grid's publish API documents: 200 with an empty body on success, and a
JSON ``{"error": {"code", "message"}}`` body with 400, 401, 404, 413, 429 or 503.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from shared.adapters.azure.events import LIFECYCLE_EVENT_TYPES, EventGridLifecycleEvents
from shared.adapters.local.landing import LocalLifecycleEvents
from shared.adapters.local.net import free_port
from shared.domain import LifecycleEvent
from shared.errors import PermanentError, TransientError
from tests.tls import self_signed_certificate

KEY = "sb0xTopicKey+NotReal/ButNeverLogIt=="
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json; charset=utf-8"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    status: int = 200
    code: str = ""
    message: str = ""
    delay: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    events: list[dict[str, Any]]


class FakeTopic(BaseHTTPRequestHandler):
    """The publish endpoint of an Event Grid custom topic."""

    protocol_version = "HTTP/1.1"
    requests: ClassVar[list[Recorded]] = []
    replies: ClassVar[list[Reply]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.delay:
            time.sleep(reply.delay)
        payload = b""
        if reply.status != 200:
            payload = json.dumps({"error": {"code": reply.code, "message": reply.message}}).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTopic)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    FakeTopic.requests = []
    FakeTopic.replies = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    scheme = "https" if context is not None else "http"
    yield f"{scheme}://127.0.0.1:{server.server_address[1]}/api/events"
    server.shutdown()
    server.server_close()


@pytest.fixture
def topic() -> Iterator[str]:
    yield from serve()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_topic(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    cert_path, key_path = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))  # requests trusts the fake's certificate
    yield from serve(context)


def events(endpoint: str, **kwargs: Any) -> EventGridLifecycleEvents:
    kwargs.setdefault("retry_total", 0)
    if "credential" not in kwargs:
        kwargs.setdefault("key", KEY)
    return EventGridLifecycleEvents(endpoint, **kwargs)


# -- what the SDK sends --------------------------------------------------------------------


def test_publish_posts_a_cloudevents_batch_with_the_key(topic, caplog):
    caplog.set_level(logging.DEBUG)
    publisher = events(topic)
    publisher.publish("VersionDeployed", "iris", {"version": "3", "slot": "green"})
    [request] = FakeTopic.requests
    assert request.path == "/api/events?api-version=2018-01-01"
    assert request.headers["aeg-sas-key"] == KEY
    assert request.headers["content-type"] == CLOUDEVENTS_BATCH
    [event] = request.events
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.signalbox.VersionDeployed"
    assert event["source"] == "/signalbox"
    assert event["subject"] == "iris"
    assert event["data"] == {"version": "3", "slot": "green"}
    assert event["datacontenttype"] == "application/json"
    assert event["id"] and event["time"]
    assert KEY not in caplog.text
    assert "is not a known attribute" not in caplog.text  # the per-call options' SDK warnings are filtered


def test_the_event_is_the_one_the_local_publisher_writes(topic, tmp_path):
    data = {"version": "3", "at": dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC), "won": True}
    events(topic, source="/signalbox/prod").publish("VersionEvaluated", "iris", data)
    LocalLifecycleEvents(tmp_path / "events.jsonl", source="/signalbox/prod").publish("VersionEvaluated", "iris", data)
    local = json.loads((tmp_path / "events.jsonl").read_text())
    [cloud] = FakeTopic.requests[0].events
    for varying in ("id", "time"):
        assert cloud.pop(varying) and local.pop(varying)
    assert cloud == local


def test_one_client_serves_every_publish(topic, monkeypatch):
    import azure.eventgrid

    built: list[Any] = []
    real = azure.eventgrid.EventGridPublisherClient

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(azure.eventgrid, "EventGridPublisherClient", counting)
    publisher = events(topic)
    for event_type in ("TrainingStarted", "TrainingSucceeded", "VersionStaged"):
        publisher.publish(event_type, "iris", {})
    assert len(built) == 1 and len(FakeTopic.requests) == 3
    publisher.close()
    publisher.publish("VersionApproved", "iris", {})
    assert len(built) == 2


def test_a_bare_topic_host_gets_the_publish_path(topic):
    events(topic.removesuffix("/api/events")).publish("DataLanded", "iris", {"bytes": 10})
    assert FakeTopic.requests[0].path.startswith("/api/events?")


# -- documented responses ------------------------------------------------------------------

TOPIC_HOST = "SIGNALBOX-TOPIC.WESTEUROPE-1.EVENTGRID.AZURE.NET"
RESPONSES = [
    (Reply(429, "TooManyRequests", "Too many requests for this topic."), TransientError, "retry later"),
    (Reply(503, "ServiceUnavailable", "The service is unavailable."), TransientError, "retry later"),
    (Reply(500, "InternalServerError", "Internal error."), TransientError, "retry later"),
    (
        Reply(401, "Unauthorized", f"The request authorization key is not authorized for {TOPIC_HOST}. key={KEY}"),
        PermanentError,
        "check SIGNALBOX_EVENTGRID_KEY",
    ),
    (Reply(403, "Forbidden", "Publishing is forbidden."), PermanentError, "'EventGrid Data Sender' role"),
    (
        Reply(404, "NotFound", f"The topic {TOPIC_HOST} was not found."),
        PermanentError,
        "check SIGNALBOX_EVENTGRID_ENDPOINT",
    ),
    (Reply(400, "BadRequest", "Required property 'source' was not set."), PermanentError, "refused the event"),
    (Reply(413, "RequestEntityTooLarge", "The maximum size (1536000) has been exceeded."), PermanentError, "1 MB"),
]


@pytest.mark.parametrize(("reply", "becomes", "says"), RESPONSES, ids=[str(r[0].status) for r in RESPONSES])
def test_responses_become_transient_or_permanent_errors(topic, reply, becomes, says, caplog):
    caplog.set_level(logging.DEBUG)
    FakeTopic.replies = [reply]
    with pytest.raises(becomes) as raised:
        events(topic).publish("ApprovalRequested", "iris", {"version": "3"})
    text = str(raised.value)
    assert says in text
    assert f"publishing io.signalbox.ApprovalRequested to {topic}" in text
    assert str(reply.status) in text  # the operator sees what the topic answered
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert KEY not in text and KEY not in caplog.text
    assert len(FakeTopic.requests) == 1


def test_the_sdk_retries_an_unavailable_topic_within_its_budget(topic):
    FakeTopic.replies = [Reply(503, "ServiceUnavailable", "busy")]
    events(topic, retry_total=1).publish("DriftDetected", "iris", {"alert_id": "a1"})
    assert len(FakeTopic.requests) == 2
    FakeTopic.requests.clear()
    FakeTopic.replies = [Reply(503, "ServiceUnavailable", "busy")] * 2
    with pytest.raises(TransientError):
        events(topic, retry_total=1).publish("DriftDetected", "iris", {"alert_id": "a1"})
    assert len(FakeTopic.requests) == 2


def test_a_throttled_publish_is_left_to_redelivery(topic):
    # azure-core retries a POST only on 500/503/504 or with Retry-After; a bare 429 comes straight back.
    FakeTopic.replies = [Reply(429, "TooManyRequests", "slow down")]
    with pytest.raises(TransientError, match="429"):
        events(topic, retry_total=2).publish("DriftDetected", "iris", {"alert_id": "a1"})
    assert len(FakeTopic.requests) == 1


def test_an_unreachable_topic_is_transient():
    port = free_port()  # nothing listens there
    with pytest.raises(TransientError, match="could not be reached"):
        events(f"http://127.0.0.1:{port}/api/events").publish("DataLanded", "iris", {})


def test_a_topic_slower_than_the_timeout_is_transient(topic):
    FakeTopic.replies = [Reply(delay=1.0)]
    started = time.monotonic()
    with pytest.raises(TransientError):
        events(topic, timeout=0.3).publish("DataLanded", "iris", {})
    assert time.monotonic() - started < 1.0


# -- managed identity (bearer tokens need https) ----------------------------------------------


class StubCredential:
    def __init__(self, fail: bool = False) -> None:
        self.scopes: list[str] = []
        self.fail = fail

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        if self.fail:
            raise ClientAuthenticationError("ManagedIdentityCredential: no identity assigned")
        return AccessToken("stub-access-token", int(time.time()) + 3600)


def test_a_credential_sends_a_bearer_token_over_https(tls_topic):
    credential = StubCredential()
    events(tls_topic, credential=credential).publish("VersionStaged", "iris", {"version": "3"})
    [request] = FakeTopic.requests
    assert request.headers["authorization"] == "Bearer stub-access-token"
    assert "aeg-sas-key" not in request.headers
    assert credential.scopes == ["https://eventgrid.azure.net/.default"]


def test_a_missing_role_is_permanent_and_names_it(tls_topic):
    FakeTopic.replies = [Reply(403, "Forbidden", "Principal does not have access")]
    with pytest.raises(PermanentError, match="'EventGrid Data Sender' role"):
        events(tls_topic, credential=StubCredential()).publish("VersionStaged", "iris", {})


def test_a_credential_without_a_token_is_permanent(tls_topic):
    with pytest.raises(PermanentError, match="no Azure credential could get a token"):
        events(tls_topic, credential=StubCredential(fail=True)).publish("VersionStaged", "iris", {})
    assert FakeTopic.requests == []


def test_without_a_key_default_azure_credential_is_used(tls_topic, monkeypatch):
    import azure.identity

    built: list[StubCredential] = []
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda: built.append(StubCredential()) or built[-1])
    publisher = EventGridLifecycleEvents(tls_topic, retry_total=0)
    publisher.publish("VersionStaged", "iris", {})
    publisher.publish("VersionApproved", "iris", {})
    assert len(built) == 1
    assert FakeTopic.requests[1].headers["authorization"] == "Bearer stub-access-token"


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "settings", "says"),
    [
        ("", {"key": KEY}, "SIGNALBOX_EVENTGRID_ENDPOINT is empty"),
        ("signalbox.westeurope-1.eventgrid.azure.net", {"key": KEY}, "must be an https URL"),
        ("http://signalbox.westeurope-1.eventgrid.azure.net/api/events", {"key": KEY}, "must use https"),
        ("http://127.0.0.1:8080/api/events", {"credential": StubCredential()}, "must use https"),
        ("https://t.eventgrid.azure.net/api/events", {"key": KEY, "credential": StubCredential()}, "not both"),
    ],
)
def test_settings_are_checked_up_front(endpoint, settings, says):
    with pytest.raises(ValueError, match=says) as raised:
        EventGridLifecycleEvents(endpoint, **settings)
    assert KEY not in str(raised.value)


def test_the_key_stays_out_of_the_repr():
    assert KEY not in repr(EventGridLifecycleEvents("https://t.eventgrid.azure.net/api/events", key=KEY))


def test_every_event_type_the_code_publishes_is_listed():
    published: set[str] = set()
    for path in [*(REPO / "shared").rglob("*.py"), *(REPO / "functions").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        published |= set(re.findall(r"\.publish\(\s*\"([A-Za-z]+)\"", text))
        # The handlers name the type by its member: LifecycleEvent.VERSION_DEPLOYED.
        members = re.findall(r"\.publish\(\s*LifecycleEvent\.([A-Z_]+)", text)
        published |= {LifecycleEvent[name].value for name in members}
    assert published, "found no publish calls: has the pattern changed?"
    assert published <= set(LIFECYCLE_EVENT_TYPES), sorted(published - set(LIFECYCLE_EVENT_TYPES))
    assert len(set(LIFECYCLE_EVENT_TYPES)) == len(LIFECYCLE_EVENT_TYPES) == 23
