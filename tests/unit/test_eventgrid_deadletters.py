"""Event Grid's own dead letters: the documented blob layout and event formats, filters, replay with
loop protection and dry run, the local folder the local host fills, the admin functions and the CLI.

The dead-letter blobs here follow Microsoft's "Event Grid message delivery and retry" (Delivery
event formats: the event plus ``deadLetterReason``, ``deliveryAttempts``, ``lastDeliveryOutcome``,
``publishTime``, ``lastDeliveryAttemptTime``; CloudEvents 1.0: the same attributes in lower case)
and "Dead letter and retry policies" (blob names: the subscription in upper case, then
``yyyy/m/d/h/<guid>.json``, not zero-padded).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.eventgrid_deadletters import (
    MAX_DELIVERY_ATTEMPTS,
    TIME_TO_LIVE_EXCEEDED,
    DeliveryFailed,
    LocalEventGridDeadLetters,
    Retries,
    RetryPolicy,
    deliver_with_retries,
    local_eventgrid_dead_letters,
    write_dead_letter,
)
from shared.deadletters import eventgrid
from shared.deadletters.eventgrid import (
    EventGridFilters,
    HttpEventGridDelivery,
    function_for,
    parse_blob,
    parse_blob_name,
)

# An Event Grid schema dead letter laid out as the documentation's example (values our own).
EVENTGRID_SCHEMA_DEAD_LETTER = {
    "id": "5f2d7a3c-1b0e-4c8e-9a51-0c6f1f0e2b11",
    "eventTime": "2026-12-06T04:10:11.1234567Z",
    "eventType": "Microsoft.Storage.BlobCreated",
    "dataVersion": "",
    "metadataVersion": "1",
    "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.Storage/storageAccounts/stland",
    "subject": "/blobServices/default/containers/landing/blobs/iris/batch-001.csv",
    "data": {
        "api": "PutBlob",
        "eTag": "0x8DE0000000000A1",
        "contentType": "text/csv",
        "contentLength": 1234,
        "blobType": "BlockBlob",
        "url": "https://stland.blob.core.windows.net/landing/iris/batch-001.csv",
        "sequencer": "0000000000000000000000000001550800000000000510aa",
    },
    "deadLetterReason": "MaxDeliveryAttemptsExceeded",
    "deliveryAttempts": 30,
    "lastDeliveryOutcome": "GenericError",
    "lastHttpStatusCode": 500,
    "publishTime": "2026-12-06T04:10:12.0265758Z",
    "lastDeliveryAttemptTime": "2026-12-07T04:09:58.0465788Z",
}
CLOUDEVENTS_DEAD_LETTER = {
    "id": "c0ffee00-3ca0-4254-8f99-1395b394588e",
    "source": "/signalbox/monitor",
    "specversion": "1.0",
    "subject": "iris-classifier",
    "type": "io.signalbox.drift.detected",
    "datacontenttype": "application/json",
    "data": {"model_name": "iris-classifier", "metric": "psi", "score": 0.4, "threshold": 0.2},
    "deadletterreason": "TimeToLiveExceeded",
    "deliveryattempts": 12,
    "lastdeliveryoutcome": "Busy",
    "publishtime": "2026-12-06T03:00:01.4018726Z",
}
BLOB_TIME = datetime(2026, 12, 7, 4, 15, tzinfo=UTC)


def landing_blob(guid: str = "11111111-1111-1111-1111-111111111111") -> str:
    return f"LANDING-EVENTS/2026/12/7/4/{guid}.json"


# -- the documented formats --------------------------------------------------------------------------


def test_an_event_grid_schema_dead_letter_is_read_as_documented():
    [dead] = parse_blob(landing_blob(), json.dumps([EVENTGRID_SCHEMA_DEAD_LETTER]).encode(), blob_time=BLOB_TIME)
    assert (dead.subscription, dead.topic, dead.function, dead.schema) == (
        "LANDING-EVENTS",
        None,
        "landing_events",
        "eventgrid",
    )
    assert dead.event_id == EVENTGRID_SCHEMA_DEAD_LETTER["id"]
    assert dead.event_type == "Microsoft.Storage.BlobCreated"
    assert dead.reason == "MaxDeliveryAttemptsExceeded" and dead.delivery_attempts == 30
    assert dead.last_delivery_outcome == "GenericError" and dead.last_http_status_code == 500
    # Seven fractional digits, as Event Grid writes them.
    assert dead.publish_time == datetime(2026, 12, 6, 4, 10, 12, 26575, tzinfo=UTC)
    assert dead.last_delivery_attempt_time == datetime(2026, 12, 7, 4, 9, 58, 46578, tzinfo=UTC)
    assert dead.dead_lettered_time == BLOB_TIME
    # What is replayed is the event as delivered: every dead-letter attribute gone, the rest untouched.
    original = {k: v for k, v in EVENTGRID_SCHEMA_DEAD_LETTER.items() if k not in eventgrid_fields()}
    assert dead.event == original


def eventgrid_fields() -> set[str]:
    return {
        "deadLetterReason",
        "deliveryAttempts",
        "lastDeliveryOutcome",
        "lastHttpStatusCode",
        "publishTime",
        "lastDeliveryAttemptTime",
    }


def test_a_cloudevents_dead_letter_carries_the_attributes_in_lower_case():
    name = "TOPIC-SIGNALBOX/DRIFT-ALERTS/2026/12/6/3/22222222-2222-2222-2222-222222222222.json"
    [dead] = parse_blob(name, json.dumps([CLOUDEVENTS_DEAD_LETTER]).encode())
    assert (dead.topic, dead.subscription, dead.function, dead.schema) == (
        "TOPIC-SIGNALBOX",
        "DRIFT-ALERTS",
        "alert_events",
        "cloudevents",
    )
    assert dead.reason == "TimeToLiveExceeded" and dead.delivery_attempts == 12
    assert dead.last_delivery_outcome == "Busy" and dead.last_http_status_code is None
    assert dead.event_type == "io.signalbox.drift.detected"
    assert "deadletterreason" not in dead.event and dead.event["specversion"] == "1.0"
    # No blob time and no last attempt: the hour in the blob's name is not used, the publish time is.
    assert dead.dead_lettered_time == datetime(2026, 12, 6, 3, 0, 1, 401872, tzinfo=UTC)


def test_one_blob_may_hold_several_events():
    second = {**EVENTGRID_SCHEMA_DEAD_LETTER, "id": "second"}
    found = parse_blob(landing_blob(), json.dumps([EVENTGRID_SCHEMA_DEAD_LETTER, second]).encode())
    assert [(d.index, d.event_id) for d in found] == [(0, EVENTGRID_SCHEMA_DEAD_LETTER["id"]), (1, "second")]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # The documentation's example: the subscription in upper case, the date and hour not zero-padded.
        ("MY-BLOB-SUBSCRIPTION/2019/8/8/5/111111111-1111-1111-1111-111111111111.json", (None, "MY-BLOB-SUBSCRIPTION")),
        (
            "EVGS-SIGNALBOX-LANDING-DEV/LANDING-EVENTS/2026/12/06/05/x.json",
            ("EVGS-SIGNALBOX-LANDING-DEV", "LANDING-EVENTS"),
        ),
        ("landing_events/2026/12/6/5/x.json", (None, "landing_events")),
    ],
)
def test_blob_names_give_the_topic_and_the_subscription(name, expected):
    parsed = parse_blob_name(name)
    assert parsed is not None and (parsed.topic, parsed.subscription) == expected
    assert parsed.hour is not None and parsed.hour.tzinfo is UTC


def test_replay_counts_and_other_files_are_not_dead_letters():
    assert parse_blob_name("signalbox-replays/LANDING-EVENTS/abc.json") is None
    assert parse_blob_name("LANDING-EVENTS/2026/12/6/5/readme.txt") is None
    with pytest.raises(ValueError, match="not JSON"):
        parse_blob(landing_blob(), b"not json")
    with pytest.raises(ValueError, match="not an event"):
        parse_blob(landing_blob(), b'[{"no": "id"}]')


@pytest.mark.parametrize(
    ("subscription", "function"),
    [
        ("LANDING-EVENTS", "landing_events"),
        ("landing-events", "landing_events"),
        ("DRIFT-ALERTS", "alert_events"),
        ("WORKSPACE-EVENTS-PROD", "workspace_events"),
        ("landing_events", "landing_events"),  # locally the folder is the function
        ("SOMEONE-ELSES-SUBSCRIPTION", None),
    ],
)
def test_subscriptions_map_to_the_functions_infra_points_them_at(subscription, function):
    assert function_for(subscription) == function


def test_the_infra_subscriptions_are_the_ones_mapped():
    """Every subscription infra creates names a function the mapping knows, and it is the function it calls."""
    import re

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "infra/modules/subscriptions.bicep").read_text()
    pairs = re.findall(r"eventSubscriptions@[^\n]*\n\s*parent: \w+\n\s*name: '([^']+)'.*?functions/(\w+)'", text, re.S)
    assert pairs == [("landing-events", "landing_events"), ("drift-alerts", "alert_events")]
    for subscription, function in pairs:
        assert function_for(subscription.upper()) == function
    main = (repo / "infra/main.bicep").read_text()
    workspace = re.search(r"eventSubscriptionName: '([^']+)'", main)
    assert workspace is not None
    assert function_for(workspace.group(1).replace("${environmentName}", "dev").upper()) == "workspace_events"


# -- the local folder and its writer -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalEventGridDeadLetters:
    return local_eventgrid_dead_letters(tmp_path)


def put(store: LocalEventGridDeadLetters, name: str, events: list[dict[str, Any]]) -> Path:
    path = store.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(events))
    return path


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {**EVENTGRID_SCHEMA_DEAD_LETTER, "id": event_id, **extra}


def test_the_local_host_writes_dead_letters_in_event_grid_s_format(tmp_path, store):
    first = datetime(2026, 12, 6, 5, 0, 0, tzinfo=UTC)
    plain = {k: v for k, v in EVENTGRID_SCHEMA_DEAD_LETTER.items() if k not in eventgrid_fields()}
    cloud = {k: v for k, v in CLOUDEVENTS_DEAD_LETTER.items() if k[:4] not in ("dead", "deli", "last", "publ")}
    now = datetime(2026, 12, 6, 5, 1, tzinfo=UTC)
    path = write_dead_letter(
        tmp_path,
        "landing_events",
        [plain],
        reason=MAX_DELIVERY_ATTEMPTS,
        attempts=3,
        last_outcome="GenericError",
        last_status=500,
        first_attempt=first,
        last_attempt=first + timedelta(seconds=2),
        now=now,
    )
    assert path.relative_to(store.root).parts[:5] == ("landing_events", "2026", "12", "6", "5")
    written = json.loads(path.read_text())
    assert written == [
        {
            **plain,
            "deadLetterReason": "MaxDeliveryAttemptsExceeded",
            "deliveryAttempts": 3,
            "lastDeliveryOutcome": "GenericError",
            "lastHttpStatusCode": 500,
            "publishTime": "2026-12-06T05:00:00Z",
            "lastDeliveryAttemptTime": "2026-12-06T05:00:02Z",
        }
    ]
    cloud_path = write_dead_letter(
        tmp_path,
        "alert_events",
        [cloud],
        reason=TIME_TO_LIVE_EXCEEDED,
        attempts=2,
        last_outcome="Busy",
        last_status=503,
        first_attempt=first,
        last_attempt=first,
    )
    assert json.loads(cloud_path.read_text())[0]["deadletterreason"] == "TimeToLiveExceeded"
    # Read back by the same code that reads Azure's container.
    found = eventgrid.select(store)
    assert [(d.function, d.reason, d.schema, dict(d.event)) for d in found] == [
        ("alert_events", "TimeToLiveExceeded", "cloudevents", cloud),
        ("landing_events", "MaxDeliveryAttemptsExceeded", "eventgrid", plain),
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_delivery_is_retried_then_dead_lettered_after_its_attempts(tmp_path, store):
    clock, calls = FakeClock(), []

    def deliver() -> None:
        calls.append(clock.now)
        raise DeliveryFailed("host answered 500", 500)

    policy = RetryPolicy(max_attempts=4, time_to_live=3600, pause=2)
    path = deliver_with_retries(
        deliver, tmp_path, "landing_events", [event("e1")], policy, sleep=clock.sleep, clock=clock
    )
    assert calls == [0, 2, 4, 6]
    assert path is not None
    [dead] = eventgrid.select(store)
    assert (dead.reason, dead.delivery_attempts, dead.last_http_status_code) == (MAX_DELIVERY_ATTEMPTS, 4, 500)


def test_a_delivery_is_dead_lettered_when_its_time_to_live_runs_out_first(tmp_path, store):
    clock = FakeClock()

    def deliver() -> None:
        raise DeliveryFailed("host answered 503", 503)

    policy = RetryPolicy(max_attempts=30, time_to_live=5, pause=2)
    deliver_with_retries(deliver, tmp_path, "landing_events", [event("e1")], policy, sleep=clock.sleep, clock=clock)
    [dead] = eventgrid.select(store)
    # Tries at 0, 2 and 4 s; the next would be at 6 s, past the 5 s time to live.
    assert (dead.reason, dead.delivery_attempts, dead.last_delivery_outcome) == (TIME_TO_LIVE_EXCEEDED, 3, "Busy")


def test_a_delivery_that_succeeds_writes_nothing(tmp_path, store):
    tries = iter([DeliveryFailed("500", 500), None])

    def deliver() -> None:
        failure = next(tries)
        if failure:
            raise failure

    clock = FakeClock()
    assert (
        deliver_with_retries(
            deliver, tmp_path, "x", [event("e")], RetryPolicy(3, 60, 1), sleep=clock.sleep, clock=clock
        )
        is None
    )
    assert eventgrid.select(store) == []


def test_retries_of_a_watcher_wait_their_pause_and_forget_on_success():
    clock = FakeClock()
    retries = Retries(RetryPolicy(max_attempts=2, time_to_live=60, pause=5), clock=clock)
    assert retries.due("a")
    assert retries.failed("a", 500) is None
    assert not retries.due("a")
    clock.sleep(5)
    assert retries.due("a")
    assert retries.failed("a", 500) == MAX_DELIVERY_ATTEMPTS
    retries.forget("a")
    assert retries.due("a") and retries.failed("a", 500) is None  # a fresh count


# -- filters ----------------------------------------------------------------------------------------


def test_filters_by_function_or_subscription_reason_since_event_id_and_limit(store):
    put(store, landing_blob("a"), [event("e1")])
    put(store, "DRIFT-ALERTS/2026/12/7/4/b.json", [{**CLOUDEVENTS_DEAD_LETTER, "id": "e2"}])
    put(store, landing_blob("c"), [event("e3", deadLetterReason="TimeToLiveExceeded")])
    old = store.root / landing_blob("a")
    import os

    os.utime(old, (0, datetime(2026, 1, 1, tzinfo=UTC).timestamp()))

    def ids(**criteria: Any) -> list[str]:
        return [d.event_id for d in eventgrid.select(store, EventGridFilters(**criteria))]

    assert ids() == ["e2", "e1", "e3"]  # blob name order
    assert ids(function="landing_events") == ["e1", "e3"]
    assert ids(function="landing-events") == ["e1", "e3"]  # the subscription, any case
    assert ids(reason="timetoliveexceeded") == ["e2", "e3"]
    assert ids(since=datetime(2026, 6, 1, tzinfo=UTC)) == ["e2", "e3"]
    assert ids(event_id="e3") == ["e3"]
    assert ids(limit=2) == ["e2", "e1"]
    with pytest.raises(ValueError, match="timezone-aware"):
        EventGridFilters(since=datetime(2026, 1, 1))


def test_parse_filters_reads_the_queue_spellings_too_and_names_bad_fields():
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    parsed = eventgrid.parse_filters(
        {"source": "eventgrid", "queue": "landing_events", "message_id": "e1", "since": "2h"}, now=now
    )
    assert parsed == EventGridFilters(function="landing_events", event_id="e1", since=now - timedelta(hours=2))
    with pytest.raises(ValueError, match=r"unknown field.*correlation_id"):
        eventgrid.parse_filters({"correlation_id": "x"}, now=now)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        eventgrid.parse_filters({"limit": "0"}, now=now)
    with pytest.raises(ValueError, match="source must be queues or eventgrid"):
        eventgrid.source_of({"source": "kafka"})


# -- replay: delivered, removed after a 2xx only, loop protection, dry run ----------------------------


class Recorder:
    """Delivers by recording; answers the statuses given, in turn (then the last one)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses) or [200]
        self.delivered: list[tuple[str, dict[str, Any], str]] = []

    def deliver(self, function: str, event: Any, schema: str) -> int:
        self.delivered.append((function, dict(event), schema))
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


def test_replay_delivers_the_original_event_and_removes_it_only_after_a_2xx(store):
    path = put(store, landing_blob(), [EVENTGRID_SCHEMA_DEAD_LETTER])
    failing = Recorder(500)
    report = eventgrid.replay(store, failing)
    assert report.counts() == {"failed": 1} and "answered 500" in report.outcomes[0].detail
    assert path.exists(), "a refused replay must leave the dead letter in place"
    [again] = eventgrid.select(store)
    assert again.replay_count == 1

    accepting = Recorder(202)
    report = eventgrid.replay(store, accepting)
    assert report.counts() == {"replayed": 1} and report.outcomes[0].replay_count == 2
    function, delivered, schema = accepting.delivered[0]
    assert (function, schema) == ("landing_events", "eventgrid")
    assert not eventgrid_fields() & set(delivered) and delivered["id"] == EVENTGRID_SCHEMA_DEAD_LETTER["id"]
    assert not path.exists() and eventgrid.select(store) == []
    assert not list(store.root.rglob("*.lease")), "no lock left behind"


def test_an_event_at_the_maximum_replay_count_is_skipped_and_a_re_dead_letter_keeps_its_count(tmp_path, store):
    put(store, landing_blob(), [event("e1")])
    refusing = Recorder(500)
    for _ in range(2):
        eventgrid.replay(store, refusing, max_replays=2)
    report = eventgrid.replay(store, refusing, max_replays=2)
    assert report.counts() == {"skipped": 1} and "maximum is 2" in report.outcomes[0].detail
    assert len(refusing.delivered) == 2

    # Fixed, allowed once more: replayed and gone.
    assert eventgrid.replay(store, Recorder(200), max_replays=3).counts() == {"replayed": 1}
    # The same event dead-lettered again later (the local host writes it again): it comes back with its count.
    write_dead_letter(
        tmp_path,
        "landing_events",
        [{k: v for k, v in event("e1").items() if k not in eventgrid_fields()}],
        reason=MAX_DELIVERY_ATTEMPTS,
        attempts=3,
        last_outcome="GenericError",
        last_status=500,
        first_attempt=datetime.now(UTC),
        last_attempt=datetime.now(UTC),
    )
    [back] = eventgrid.select(store)
    assert back.replay_count == 3
    assert eventgrid.replay(store, Recorder(200), max_replays=3).counts() == {"skipped": 1}


def test_dry_run_delivers_nothing_and_changes_nothing(store):
    path = put(store, landing_blob(), [event("e1"), event("e2")])
    before = path.read_bytes()
    recorder = Recorder(200)
    report = eventgrid.replay(store, recorder, dry_run=True)
    assert report.dry_run and report.counts() == {"would_replay": 2}
    assert recorder.delivered == [] and path.read_bytes() == before
    assert store.replay_counts() == {}
    assert eventgrid.purge(store, confirm=None, dry_run=True).counts() == {"would_purge": 2} and path.exists()


def test_replaying_one_event_of_a_blob_keeps_the_others_in_it(store):
    path = put(store, landing_blob(), [event("e1"), event("e2"), event("e3")])
    report = eventgrid.replay(store, Recorder(200), EventGridFilters(event_id="e2"))
    assert report.counts() == {"replayed": 1}
    assert [e["id"] for e in json.loads(path.read_text())] == ["e1", "e3"]
    # A partly refused blob: the accepted one goes, the refused one stays.
    report = eventgrid.replay(store, Recorder(200, 500))
    assert [(o.event_id, o.status) for o in report.outcomes] == [("e1", "replayed"), ("e3", "failed")]
    assert [e["id"] for e in json.loads(path.read_text())] == ["e3"]


def test_a_blob_leased_by_another_run_is_skipped_not_replayed_twice(store):
    name = landing_blob()
    put(store, name, [event("e1")])
    lease = store.lock(name)
    assert lease is not None and store.lock(name) is None
    recorder = Recorder(200)
    report = eventgrid.replay(store, recorder)
    assert report.counts() == {"skipped": 1} and recorder.delivered == []
    store.release(name, lease)
    assert eventgrid.replay(store, recorder).counts() == {"replayed": 1}


def test_an_event_for_no_known_function_fails_and_stays(store):
    path = put(store, "SOMEONE-ELSES/2026/12/7/4/x.json", [event("e1")])
    recorder = Recorder(200)
    report = eventgrid.replay(store, recorder)
    assert report.counts() == {"failed": 1} and "no function is known" in report.outcomes[0].detail
    assert recorder.delivered == [] and path.exists()


def test_purge_deletes_only_what_matches(store):
    put(store, landing_blob("a"), [event("e1")])
    put(store, landing_blob("b"), [event("e2")])
    assert eventgrid.purge(store, EventGridFilters(event_id="e1"), confirm="all").counts() == {"purged": 1}
    assert [d.event_id for d in eventgrid.select(store)] == ["e2"]


def test_the_overview_count(store):
    assert eventgrid.overview_count(store) == {"eventgrid_dead_letters": 0}
    put(store, landing_blob(), [event("e1"), event("e2")])
    assert eventgrid.overview_count(store) == {"eventgrid_dead_letters": 2}
    assert eventgrid.overview_count(None) == {}


# -- the webhook delivery, against an HTTP server ------------------------------------------------------


class FunctionApp:
    """A stand-in Functions host: records Event Grid webhook requests, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                app.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(app.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def function_app() -> Iterator[FunctionApp]:
    app = FunctionApp()
    yield app
    app.close()


def test_http_delivery_posts_to_the_event_grid_webhook_as_event_grid_does(function_app):
    delivery = HttpEventGridDelivery(function_app.url, "the-system-key")
    assert delivery.deliver("landing_events", {"id": "e1"}, "eventgrid") == 200
    function_app.status = 500
    assert delivery.deliver("alert_events", {"id": "c1", "specversion": "1.0"}, "cloudevents") == 500
    first, second = function_app.requests
    assert first["path"] == "/runtime/webhooks/EventGrid?functionName=landing_events"
    assert first["headers"]["aeg-event-type"] == "Notification"
    assert first["headers"]["x-functions-key"] == "the-system-key"
    assert first["headers"]["content-type"] == "application/json" and first["body"] == [{"id": "e1"}]
    assert second["headers"]["content-type"] == "application/cloudevents+json"
    assert second["body"] == {"id": "c1", "specversion": "1.0"}
    with pytest.raises(OSError, match="cannot reach"):
        HttpEventGridDelivery("http://127.0.0.1:9", None, timeout=2).deliver("x", {"id": "e"}, "eventgrid")


# -- the admin functions and the CLI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_functions() -> dict[str, Any]:
    import azure.functions as func

    from functions import operations
    from signalbox.localhost.index import index_functions

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(operations.bp)
    return {f.name: f for f in index_functions(app, default_auth_level="function")}


def call(fn: Any, method: str, url: str, body: Any = None, headers: Any = None, **params: str) -> tuple[int, Any]:
    import azure.functions as func

    raw = json.dumps(body).encode() if body is not None else b""
    route = {"message_id": url.rsplit("/", 1)[1]} if fn.name == "deadletters_show" else {}
    request = func.HttpRequest(
        method=method, url=url, params=params, body=raw, headers=headers or {}, route_params=route
    )
    response = fn.call(**{fn.trigger_arg: request})
    return response.status_code, json.loads(response.get_body())


@pytest.fixture
def wired(store, function_app) -> Iterator[LocalEventGridDeadLetters]:
    from shared import runtime
    from tests.fakes import services

    svc = services()
    svc.eventgrid_dead_letters = store
    svc.settings = svc.settings.model_copy(update={"host_url": function_app.url})
    runtime.override(svc)
    try:
        yield store
    finally:
        runtime.override(None)


def test_the_admin_functions_list_show_replay_and_purge_with_source_eventgrid(admin_functions, wired, function_app):
    base = "http://localhost/api/ops/deadletters"
    put(wired, landing_blob("a"), [event("e1")])
    put(wired, "DRIFT-ALERTS/2026/12/7/4/b.json", [{**CLOUDEVENTS_DEAD_LETTER, "id": "e2"}])

    status, listing = call(
        admin_functions["deadletters_list"], "GET", base, source="eventgrid", function="landing_events"
    )
    assert status == 200 and listing["count"] == 1
    assert listing["filters"] == {"source": "eventgrid", "function": "landing_events"}
    assert (
        listing["dead_letters"][0]["event_id"] == "e1"
        and listing["dead_letters"][0]["reason"] == "MaxDeliveryAttemptsExceeded"
    )

    status, shown = call(admin_functions["deadletters_show"], "GET", f"{base}/e2", source="eventgrid")
    assert status == 200 and shown["function"] == "alert_events" and shown["schema"] == "cloudevents"
    assert "deadletterreason" not in shown["event"]
    status, missing = call(admin_functions["deadletters_show"], "GET", f"{base}/nope", source="eventgrid")
    assert status == 404 and "nope" in missing["error"]

    status, dry = call(
        admin_functions["deadletters_replay"], "POST", f"{base}/replay", {"source": "eventgrid", "dry_run": True}
    )
    assert status == 200 and dry["counts"] == {"would_replay": 2} and function_app.requests == []

    status, replayed = call(
        admin_functions["deadletters_replay"],
        "POST",
        f"{base}/replay",
        {"source": "eventgrid", "event_id": "e1"},
        headers={"x-functions-key": "admin-key-of-the-caller"},
    )
    assert status == 200 and replayed["counts"] == {"replayed": 1}
    [request] = function_app.requests
    assert request["path"] == "/runtime/webhooks/EventGrid?functionName=landing_events"
    assert request["headers"]["x-functions-key"] == "admin-key-of-the-caller"

    status, refused = call(admin_functions["deadletters_purge"], "POST", f"{base}/purge", {"source": "eventgrid"})
    assert status == 400 and "confirm with 'all'" in refused["error"]
    status, purged = call(
        admin_functions["deadletters_purge"], "POST", f"{base}/purge", {"source": "eventgrid", "confirm": "all"}
    )
    assert status == 200 and purged["counts"] == {"purged": 1} and eventgrid.select(wired) == []

    status, bad = call(admin_functions["deadletters_list"], "GET", base, source="eventgrid", correlation_id="x")
    assert status == 400 and "correlation_id" in bad["error"]


def run_cli(argv: list[str]) -> int:
    from signalbox import dlq

    parser = argparse.ArgumentParser(prog="signalbox")
    dlq.add_parser(parser.add_subparsers(dest="command", required=True))
    return dlq.run(parser.parse_args(argv))


def test_the_cli_works_directly_on_the_local_folder(tmp_path, store, function_app, capsys):
    put(store, landing_blob("a"), [event("e1")])
    (tmp_path / "host-keys.json").write_text(json.dumps({"systemKeys": {"eventgrid_extension": "eg-key"}}))
    common = ["--state-dir", str(tmp_path), "--source", "eventgrid"]

    assert run_cli(["dlq", "list", *common]) == 0
    out = capsys.readouterr().out
    assert "e1" in out and "landing_events" in out and "MaxDeliveryAttemptsExceeded" in out

    assert run_cli(["dlq", "show", "e1", *common]) == 0
    assert "event (as it is replayed)" in capsys.readouterr().out

    assert run_cli(["dlq", "replay", "--dry-run", *common, "--deliver-to", function_app.url]) == 0
    assert "would replay: landing_events e1" in capsys.readouterr().out and function_app.requests == []

    function_app.status = 500
    assert run_cli(["dlq", "replay", *common, "--deliver-to", function_app.url, "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["counts"] == {"failed": 1} and answer["outcomes"][0]["http_status"] == 500
    assert function_app.requests[0]["headers"]["x-functions-key"] == "eg-key"

    function_app.status = 200
    assert (
        run_cli(["dlq", "replay", "landing_events", *common, "--deliver-to", function_app.url, "--max-replays", "1"])
        == 0
    )
    assert "skipped" in capsys.readouterr().out and len(function_app.requests) == 1
    assert run_cli(["dlq", "replay", "landing_events", *common, "--deliver-to", function_app.url]) == 0
    assert "replayed: landing_events e1 (replay 2)" in capsys.readouterr().out
    assert run_cli(["dlq", "list", *common]) == 0
    assert "no Event Grid dead letters" in capsys.readouterr().out

    assert run_cli(["dlq", "list", *common, "--correlation-id", "x"]) == 2


# -- infra: the setting names the container the subscriptions dead-letter to, and the identity may use it ----


def test_infra_points_the_setting_at_the_dead_letter_container_the_identity_owns():
    from tests.unit import test_infra as infra

    value = infra.app_settings()["SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL"]
    # https://<account>.blob.core.windows.net/ + the dead-letter container, both of functionapp.bicep.
    assert value == "${storage.properties.primaryEndpoints.blob}${deadLetter.name}"
    resources = infra.bicep(infra.module_file("functionapp"))["resources"]
    assert resources["deadLetter"]["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"
    assert infra.unwrap(resources["deadLetter"]["config"])["name"] == "deadLetterContainer"
    # Every subscription dead-letters there ...
    subscriptions = infra.module_file("subscriptions")
    assert infra.path_of(infra.passed(subscriptions, "deadLetterStorageAccountName")) == [
        "functionApp",
        "outputs",
        "storageAccountName",
    ]
    assert infra.path_of(infra.passed(subscriptions, "deadLetterContainer")) == [
        "functionApp",
        "outputs",
        "deadLetterContainer",
    ]
    workspace = infra.module_file("workspace")
    assert infra.path_of(infra.passed(workspace, "deadLetterContainer")) == [
        "functionApp",
        "outputs",
        "deadLetterContainer",
    ]
    # ... and the identity holds Storage Blob Data Owner on that account (list, read, lease, write, delete).
    roles = infra.bicep(infra.module_file("roles"))
    owners = [
        infra.unwrap(r["config"])
        for r in infra.resources(roles, "Microsoft.Authorization/roleAssignments").values()
        if infra.path_of(
            infra.unwrap(r["config"])["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        )
        == ["roles", "storageBlobDataOwner"]
    ]
    assert len(owners) == 1
    scope = roles["resources"][owners[0]["scope"]]
    storage_param = infra.unwrap(scope["config"])["name"]
    assert infra.path_of(infra.passed(infra.module_file("roles"), storage_param)) == [
        "functionApp",
        "outputs",
        "storageAccountName",
    ]
