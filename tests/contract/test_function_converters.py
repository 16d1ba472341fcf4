"""Trigger inputs built as the Functions host sends them, bound by azure-functions' own converters.

The Functions host hands the Python worker the trigger's data and its trigger metadata as typed data
(Azure/azure-functions-host GrpcMessageConversionExtensions.ToRpc: a string as ``string``, a JObject as
``json``, every other .NET value - int, long, DateTime, dictionaries - Json.NET-serialised as ``json``;
null values left out), and the worker calls the binding's converter
(``EventGridEventInConverter.decode`` / ``ServiceBusMessageInConverter.decode``). The local host does the
same through ``signalbox.localhost.triggers``; these tests check the shapes and drive the real converters,
then the whole path through a running local host.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
import requests
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.servicebus import ServiceBusMessageInConverter
from azure.functions.timer import TimerRequestConverter

from shared import runtime
from shared.adapters.local.queues import LocalQueues, OutboundMessage
from shared.events import DRIFT_ALERT_TYPE, DriftAlert, InboundEvent, interpret
from shared.queues import load_queue_specs
from signalbox.localhost.eventgrid import parse_delivery
from signalbox.localhost.triggers import _dotnet_time, event_grid_input, service_bus_input, timer_input
from tests.hosting import REPO, start_host

FIXTURES = REPO / "tests" / "fixtures" / "events"
TEST_QUEUES = REPO / "tests" / "apps" / "queues.json"


def fixture(name: str) -> dict[str, Any]:
    document = json.loads((FIXTURES / name).read_text())
    return document[0] if isinstance(document, list) else document


def cloudevent(event_type: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/signalbox/drift-monitor",
        "type": event_type,
        "time": "2026-11-23T08:30:00.1234567Z",
        "subject": "models/iris-classifier",
        "datacontenttype": "application/json",
        "data": data,
        **extra,
    }


def bind_event(raw: dict[str, Any], function: str = "alert_events") -> Any:
    data, metadata = event_grid_input(raw, function)
    return EventGridEventInConverter.decode(data, trigger_metadata=metadata)


# -- Event Grid ----------------------------------------------------------------------------------------


def test_event_grid_input_is_what_the_host_sends() -> None:
    raw = fixture("blob_created.eventgrid.json")

    data, metadata = event_grid_input(raw, "landing_events")

    # The extension hands over the event's JObject (ToString(Formatting.None)) and binding data {"data": ...}.
    assert data.type == "json"
    assert data.value == json.dumps(raw, separators=(",", ":"))  # compact, as Formatting.None writes it
    assert set(metadata) == {"data", "sys"}
    assert metadata["data"].type == "json" and json.loads(metadata["data"].value) == raw["data"]
    system = json.loads(metadata["sys"].value)
    assert system["MethodName"] == "landing_events"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z", system["UtcNow"])
    assert uuid.UUID(system["RandGuid"])
    # An event without "data" has no "data" binding data (the host leaves nulls out).
    assert set(event_grid_input({"id": "1"}, "f")[1]) == {"sys"}


@pytest.mark.parametrize(
    ("name", "bound_type"),
    [
        ("blob_created.eventgrid.json", func.EventGridEvent),
        ("blob_created.cloudevents.json", func.CloudEvent),
        ("drift_alert.eventgrid.json", func.EventGridEvent),
        ("drift_alert.cloudevents.json", func.CloudEvent),
        ("run_completed.cloudevents.json", func.CloudEvent),
    ],
)
def test_the_delivery_schema_picks_the_bound_type(name: str, bound_type: type) -> None:
    raw = fixture(name)

    bound = bind_event(raw)

    assert type(bound) is bound_type
    assert bound.id == raw["id"]
    if bound_type is func.CloudEvent:
        assert (bound.type, bound.source, bound.specversion) == (raw["type"], raw["source"], "1.0")
        assert not hasattr(bound, "event_type")  # the attribute functions/ingress.py used to read
    else:
        assert (bound.event_type, bound.topic, bound.data_version) == (
            raw["eventType"],
            raw["topic"],
            raw["dataVersion"],
        )
    assert bound.get_json() == raw["data"]


@pytest.mark.parametrize(
    ("content_type", "schema"),
    [
        ("application/cloudevents-batch+json", "cloudevents"),
        ("application/json", "eventgrid"),
    ],
)
def test_a_batch_binds_one_event_per_invocation_in_order(content_type: str, schema: str) -> None:
    names = ["run_completed", "model_registered", "run_status_changed"]
    items = [fixture(f"{n}.{schema}.json") for n in names]

    bound = [
        bind_event(d.raw, "workspace_events") for d in parse_delivery(json.dumps(items), content_type=content_type)
    ]

    assert [b.id for b in bound] == [i["id"] for i in items]
    assert {type(b) for b in bound} == {func.CloudEvent if schema == "cloudevents" else func.EventGridEvent}
    assert [type(interpret(InboundEvent.from_function_event(b))).__name__ for b in bound] == [
        "RunCompleted",
        "ModelRegistered",
        "RunStatusChanged",
    ]


def test_cloudevent_extension_attributes_and_seven_digit_times_survive_binding() -> None:
    raw = cloudevent(DRIFT_ALERT_TYPE, {"model_name": "iris-classifier"}, traceparent="00-abc-def-01")

    bound = bind_event(raw)

    assert bound.extension_attrs == {"traceparent": "00-abc-def-01"}
    assert bound.time == datetime(2026, 11, 23, 8, 30, 0, 123456, tzinfo=UTC)
    assert interpret(InboundEvent.from_function_event(bound)) == DriftAlert(
        event_id=raw["id"],
        model_name="iris-classifier",
        metric=None,
        score=None,
        threshold=None,
        source="/signalbox/drift-monitor",
    )


def test_a_time_the_converter_cannot_read_fails_the_binding_as_in_the_worker() -> None:
    # RFC 3339 allows an offset; azure-functions 1.x reads only UTC ("Z", "+00:00") or no offset, so the
    # worker fails the invocation before the function runs (Event Grid then retries and dead-letters).
    raw = cloudevent(DRIFT_ALERT_TYPE, {"model_name": "iris-classifier"}, time="2026-11-23T10:30:00+02:00")

    assert parse_delivery(json.dumps(raw))  # a valid envelope
    with pytest.raises(ValueError):
        bind_event(raw)


# -- functions/ingress.py reads whichever type was bound -------------------------------------------------


class _Published:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, event_type: str, subject: str, data: dict[str, Any]) -> None:
        self.events.append((str(event_type), subject, dict(data)))


@pytest.fixture
def published() -> Iterator[_Published]:
    recorder = _Published()
    runtime.override(SimpleNamespace(events=recorder))  # type: ignore[arg-type]
    try:
        yield recorder
    finally:
        runtime.override(None)


def test_an_unknown_cloudevent_is_ignored_not_raised(published: _Published) -> None:
    from functions.ingress import _event

    raw = cloudevent("com.example.something.else", {"anything": 1})

    assert _event(bind_event(raw)) is None
    assert published.events == []


@pytest.mark.parametrize(
    "raw",
    [
        cloudevent(DRIFT_ALERT_TYPE, {"metric": "psi"}),  # no model_name
        cloudevent(DRIFT_ALERT_TYPE, ["not", "an", "object"]),
        cloudevent("Microsoft.Storage.BlobCreated", {"url": "https://a.blob.core.windows.net/landing/../x"}),
        {**cloudevent(DRIFT_ALERT_TYPE, {"model_name": "m"}), "source": None},
        {**cloudevent(DRIFT_ALERT_TYPE, {"model_name": "m"}), "subject": 42},
    ],
    ids=["no-model-name", "data-not-object", "blob-traversal", "no-source", "subject-not-text"],
)
def test_a_malformed_cloudevent_is_refused_on_the_record_not_raised(published: _Published, raw: dict[str, Any]) -> None:
    from functions.ingress import _event

    assert _event(bind_event(raw)) is None

    assert len(published.events) == 1
    kind, subject, data = published.events[0]
    assert kind == "EventRefused"
    assert data["event_id"] == raw["id"]
    assert data["event_type"] == raw["type"]
    assert data["reason"]
    assert subject == (raw["subject"] if isinstance(raw["subject"], str) else "")


def test_a_malformed_eventgrid_event_is_refused_too(published: _Published) -> None:
    from functions.ingress import _event

    raw = {**fixture("drift_alert.eventgrid.json"), "id": str(uuid.uuid4()), "data": {"metric": "psi"}}

    assert _event(bind_event(raw)) is None
    assert [(k, d["event_id"], d["event_type"]) for k, _, d in published.events] == [
        ("EventRefused", raw["id"], DRIFT_ALERT_TYPE)
    ]


# -- Service Bus ---------------------------------------------------------------------------------------


@pytest.fixture
def queues(tmp_path: Path) -> LocalQueues:
    return LocalQueues(tmp_path / "queues.sqlite3", specs=load_queue_specs(TEST_QUEUES))


def _received(queues: LocalQueues, queue: str, message: OutboundMessage) -> Any:
    assert queues.send(queue, message)
    [received] = queues.receive(queue)
    return received


def test_service_bus_metadata_has_the_host_keys_and_typed_data(queues: LocalQueues) -> None:
    message = _received(
        queues,
        "promote",
        OutboundMessage(
            body='{"id": "a"}',
            message_id="m-1",
            session_id="iris-classifier",
            correlation_id="c-1",
            subject="promote",
            content_type="application/json",
            application_properties={"attempt": 2, "cause": "landing"},
        ),
    )

    data, metadata = service_bus_input(message, "promote_version")

    assert (data.type, data.value) == ("string", '{"id": "a"}')
    strings = {"LockToken", "MessageId", "ContentType", "Subject", "Label", "CorrelationId", "SessionId"}
    jsons = {"DeliveryCount", "SequenceNumber", "ExpiresAtUtc", "ExpiresAt", "EnqueuedTimeUtc", "EnqueuedTime"}
    jsons |= {"ApplicationProperties", "UserProperties", "sys"}
    assert set(metadata) == strings | jsons  # null-valued keys (ReplyTo, To, DeadLetterSource, ...) left out
    assert {k for k, v in metadata.items() if v.type == "string"} == strings
    assert {k for k, v in metadata.items() if v.type == "json"} == jsons
    assert metadata["DeliveryCount"].value == "1"
    assert json.loads(metadata["UserProperties"].value) == {"attempt": 2, "cause": "landing"}
    # DateTime (from DateTimeOffset.DateTime) has no offset; DateTimeOffset has +00:00.
    enqueued = json.loads(metadata["EnqueuedTimeUtc"].value)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?", enqueued)
    assert json.loads(metadata["EnqueuedTime"].value) == enqueued + "+00:00"


def test_service_bus_message_bound_by_the_library(queues: LocalQueues) -> None:
    message = _received(
        queues,
        "promote",
        OutboundMessage(
            body='{"id": "a"}',
            message_id="m-2",
            session_id="iris-classifier",
            correlation_id="c-2",
            subject="promote",
            content_type="application/json",
            application_properties={"attempt": 2},
        ),
    )

    data, metadata = service_bus_input(message, "promote_version")
    bound = ServiceBusMessageInConverter.decode(data, trigger_metadata=metadata)

    assert isinstance(bound, func.ServiceBusMessage)
    assert bound.get_body() == b'{"id": "a"}'
    assert (bound.message_id, bound.session_id, bound.correlation_id) == ("m-2", "iris-classifier", "c-2")
    assert (bound.content_type, bound.subject, bound.label) == ("application/json", "promote", "promote")
    assert (bound.delivery_count, bound.sequence_number) == (1, message.sequence_number)
    assert bound.lock_token == message.lock_token
    assert bound.application_properties == bound.user_properties == {"attempt": 2}
    # As in Azure: EnqueuedTimeUtc arrives without an offset, so the converter makes it naive (UTC clock).
    assert bound.enqueued_time_utc is not None and bound.enqueued_time_utc.tzinfo is None
    assert bound.enqueued_time_utc.replace(tzinfo=UTC) - message.enqueued_time < timedelta(microseconds=1)
    assert bound.expires_at_utc == message.expires_at.replace(tzinfo=None)
    # Keys the Service Bus extension does not send stay None, as in Azure.
    assert bound.locked_until is None and bound.scheduled_enqueue_time_utc is None and bound.reply_to is None
    assert bound.metadata is not None and bound.metadata["sys"]["MethodName"] == "promote_version"


def test_a_body_that_is_not_utf8_is_bound_as_bytes(queues: LocalQueues) -> None:
    message = _received(queues, "train", OutboundMessage(body=b"\xff\xfe\x00binary", message_id="m-3"))

    data, metadata = service_bus_input(message, "train")
    bound = ServiceBusMessageInConverter.decode(data, trigger_metadata=metadata)

    assert data.type == "bytes"
    assert bound.get_body() == b"\xff\xfe\x00binary"
    assert bound.session_id is None and "SessionId" not in metadata


@pytest.mark.parametrize(
    ("value", "offset", "text"),
    [
        (datetime(2026, 11, 23, 8, 0, 0, tzinfo=UTC), False, "2026-11-23T08:00:00"),
        (datetime(2026, 11, 23, 8, 0, 0, 120000, tzinfo=UTC), False, "2026-11-23T08:00:00.12"),
        (datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC), True, "2026-11-23T08:00:00.123456+00:00"),
        (datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=UTC), True, "2026-11-23T10:00:00.000001+00:00"),
    ],
)
def test_times_are_written_as_json_net_writes_them(value: datetime, offset: bool, text: str) -> None:
    assert _dotnet_time(value, offset=offset) == text


# -- timers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("past_due", [True, False])
def test_a_timer_binds_from_the_serialised_timer_info(past_due: bool) -> None:
    data = timer_input(past_due=past_due)

    bound = TimerRequestConverter.decode(data, trigger_metadata={})

    assert data.type == "json" and json.loads(data.value)["IsPastDue"] is past_due
    assert isinstance(bound, func.TimerRequest)
    assert (bound.past_due, bound.schedule, bound.schedule_status) == (past_due, {"AdjustForDST": True}, {})


# -- through a running local host ------------------------------------------------------------------------


def _status(host: Any) -> dict[str, int]:
    status = requests.get(f"{host.url}/admin/host/status", headers={"x-functions-key": host.master}, timeout=10)
    return dict(status.json()["invocations"])


def _refused(state: Path) -> list[dict[str, Any]]:
    path = state / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["type"] == "io.signalbox.EventRefused"]


@pytest.fixture(scope="module")
def app_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    state = tmp_path_factory.mktemp("converters") / "state"
    env = {"SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml")}
    host = start_host(state, env=env, extra_args=("--functions", "alert_events", "workspace_events"))
    try:
        yield host, state
    finally:
        host.stop()


def _deliver(host: Any, function: str, body: Any, content_type: str) -> requests.Response:
    return requests.post(
        f"{host.url}/runtime/webhooks/EventGrid",
        params={"functionName": function},
        headers={
            "x-functions-key": host.event_grid_key,
            "aeg-event-type": "Notification",
            "Content-Type": content_type,
        },
        data=json.dumps(body),
        timeout=60,
    )


def test_cloudevents_of_unknown_type_and_malformed_answer_200_and_are_not_retried(app_host: tuple[Any, Path]) -> None:
    host, state = app_host
    unknown = cloudevent("com.example.unknown", {"x": 1})
    malformed = cloudevent(DRIFT_ALERT_TYPE, {"metric": "psi"})  # no model_name
    before = _status(host)

    single = _deliver(host, "alert_events", unknown, "application/cloudevents+json; charset=utf-8")
    batch = _deliver(
        host, "alert_events", [cloudevent("com.example.other", None), malformed], "application/cloudevents-batch+json"
    )
    workspace = _deliver(host, "workspace_events", malformed, "application/cloudevents+json")

    # 200: Event Grid counts the delivery done (a 5xx would make it retry for a day).
    assert (single.status_code, batch.status_code, workspace.status_code) == (200, 200, 200), host.log()[-3000:]
    after = _status(host)
    assert after.get("alert_events:Succeeded", 0) - before.get("alert_events:Succeeded", 0) == 3
    assert after.get("alert_events:Failed", 0) == before.get("alert_events:Failed", 0)
    assert after.get("workspace_events:Succeeded", 0) - before.get("workspace_events:Succeeded", 0) == 1
    # Each subscription that got the drift alert without a model refused it once, on the record; the
    # unknown types were ignored without a record.
    refused = [e for e in _refused(state) if e["data"]["event_id"] in (unknown["id"], malformed["id"])]
    assert [e["data"]["event_id"] for e in refused] == [malformed["id"]] * 2
    assert {e["data"]["event_type"] for e in refused} == {DRIFT_ALERT_TYPE}
    assert all("data.model_name: missing" in e["data"]["reason"] for e in refused)


def test_an_eventgrid_schema_delivery_of_unknown_type_answers_200(app_host: tuple[Any, Path]) -> None:
    host, _ = app_host
    event = {**fixture("drift_alert.eventgrid.json"), "id": str(uuid.uuid4()), "eventType": "Contoso.Unknown"}

    answer = _deliver(host, "alert_events", [event], "application/json")

    assert answer.status_code == 200


def test_the_local_host_binds_each_schema_to_its_type(tmp_path: Path) -> None:
    record_file = tmp_path / "records.jsonl"
    env = {"TEST_RECORD_FILE": str(record_file), "WORK_QUEUE": "train", "SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES)}
    host = start_host(tmp_path / "state", app="tests.apps.queue_app:app", env=env, extra_args=("--functions", "grid"))
    try:
        cloud = [cloudevent("com.example.a", {}), cloudevent("com.example.b", {})]
        grid = {**fixture("blob_created.eventgrid.json"), "id": "eg-1"}
        assert _deliver(host, "grid", cloud, "application/cloudevents-batch+json").status_code == 200
        assert _deliver(host, "grid", [grid], "application/json").status_code == 200
    finally:
        host.stop()

    got = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [(r["id"], r["type"], r["bound"]) for r in got] == [
        (cloud[0]["id"], "com.example.a", "CloudEvent"),
        (cloud[1]["id"], "com.example.b", "CloudEvent"),
        ("eg-1", "Microsoft.Storage.BlobCreated", "EventGridEvent"),
    ]
