"""shared.events and the local host's delivery reading: both schemas, the worker's bound types, typed events.

Events reach ``shared.events`` as the Python worker binds them; here they are split from a delivery by
``signalbox.localhost.eventgrid.parse_delivery`` and bound by azure-functions' own converter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared import events
from shared.events import (
    DRIFT_ALERT_TYPE,
    BlobCreated,
    DatasetDriftDetected,
    DriftAlert,
    InboundEvent,
    InvalidEvent,
    KnownEvent,
    ModelRegistered,
    RunCompleted,
    RunStatusChanged,
    interpret,
)
from signalbox.localhost.eventgrid import SUBSCRIPTION_VALIDATION_TYPE, DeliveredEvent, validation_code
from signalbox.localhost.eventgrid import parse_delivery as parse_delivered

REPO = Path(__file__).resolve().parents[2]

FIXTURES = REPO / "tests" / "fixtures" / "events"
WORKSPACE_TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/signalbox-rg/providers"
    "/Microsoft.MachineLearningServices/workspaces/signalbox-ws"
)

BLOB_PATH = "iris/2026/11/23/batch-001.csv"
RUN_TAGS = {"model_name": "iris-classifier", "reason": "landing"}
RUN_PROPERTIES = {
    "azureml.git.commit": "5adc0a4fe02504a586f09a4fcbb241f9a4012062",
    "data_uri": "https://signalboxlanding.blob.core.windows.net/landing/iris/2026/11/23/batch-001.csv",
}

# What each fixture interprets to; the Event Grid and CloudEvents files of one event give the same.
EXPECTED: dict[str, KnownEvent] = {
    "blob_created": BlobCreated(
        event_id="9aeb0fdf-c01e-0131-0922-9eb54906e209",
        url="https://signalboxlanding.blob.core.windows.net/landing/iris/2026/11/23/batch-001.csv",
        account="signalboxlanding",
        container="landing",
        blob_path=BLOB_PATH,
        content_length=4551,
        content_type="text/csv",
        etag='"0x8DDAB3C1F2E4D5A"',
        api="PutBlockList",
    ),
    "model_registered": ModelRegistered(
        event_id="3f1c2a9e-7d41-4e0b-9c8a-1b2d3e4f5a60",
        model_name="iris-classifier",
        model_version="3",
        tags={"stage": "candidate", "framework": "sklearn"},
        properties={"accuracy": "0.967"},
        workspace="signalbox-ws",
    ),
    "run_completed": RunCompleted(
        event_id="7c2e5b1a-04d9-4f63-8e2a-9b1c0d7e6f54",
        experiment_id="0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        experiment_name="iris-classifier-train",
        run_id="iris-train_1763888102_a1b2c3d4",
        run_type="azureml.scriptrun",
        run_status="Completed",
        tags=RUN_TAGS,
        properties=RUN_PROPERTIES,
        workspace="signalbox-ws",
    ),
    "run_status_changed": RunStatusChanged(
        event_id="b4d8f2c6-1a3e-4b5d-9f7a-2c4e6a8b0d13",
        experiment_id="0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        experiment_name="iris-classifier-train",
        run_id="iris-train_1763888102_a1b2c3d4",
        run_type=None,
        run_status="Failed",
        tags=RUN_TAGS,
        properties=RUN_PROPERTIES,
        workspace="signalbox-ws",
    ),
    "dataset_drift_detected": DatasetDriftDetected(
        event_id="e1a7c3b9-5d2f-4a86-b0e4-6c8a2f1d3b75",
        data_drift_id="01d29aa4-e6a4-470a-9ef3-66660d21f8ef",
        data_drift_name="iris-landing-drift",
        run_id="01d29aa4-e6a4-470a-9ef3-66660d21f8ef_1763856000000",
        base_dataset_id="3c56d136-0f64-4657-a0e8-5162089a88a3",
        target_dataset_id="d7e74d2e-c972-4266-b5fb-6c9c182d2a74",
        drift_coefficient=0.8350349068479208,
        start_time=datetime(2026, 11, 22, tzinfo=UTC),
        end_time=datetime(2026, 11, 23, tzinfo=UTC),
        workspace="signalbox-ws",
    ),
    "drift_alert": DriftAlert(
        event_id="5f0c7a3e-8c1d-4b7e-9a51-2d4c6e8f1a20",
        model_name="iris-classifier",
        metric="psi",
        score=0.31,
        threshold=0.2,
        source="/signalbox/drift-monitor",
    ),
}

EVENT_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json") if not p.name.startswith("subscription_validation"))
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json"))


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse_delivery(body: bytes | str, content_type: str | None = None) -> list[InboundEvent]:
    """The checked envelopes of a delivery's events."""
    return [d.event for d in parse_delivered(body, content_type=content_type)]


def only(body: bytes | str, content_type: str | None = None) -> InboundEvent:
    parsed = parse_delivery(body, content_type=content_type)
    assert len(parsed) == 1
    return parsed[0]


def bind(raw: dict[str, Any]) -> Any:
    """``raw`` bound by azure-functions' own Event Grid converter, from the data the Functions host sends."""
    from azure.functions.eventgrid import EventGridEventInConverter

    from signalbox.localhost.triggers import event_grid_input

    data, metadata = event_grid_input(raw, "test")
    return EventGridEventInConverter.decode(data, trigger_metadata=metadata)


def eventgrid_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "1",
        "topic": WORKSPACE_TOPIC,
        "subject": "models/iris-classifier:1",
        "eventType": "Microsoft.MachineLearningServices.ModelRegistered",
        "eventTime": "2026-11-23T09:00:00Z",
        "data": {"ModelName": "iris-classifier", "ModelVersion": 1},
        "dataVersion": "",
    }
    event.update(overrides)
    return event


def cloudevent(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "1",
        "source": "/signalbox/drift-monitor",
        "type": DRIFT_ALERT_TYPE,
        "data": {"model_name": "iris-classifier"},
    }
    event.update(overrides)
    return event


def with_data(event: InboundEvent, data: Any) -> InboundEvent:
    return replace(event, data=data)


# -- fixtures ----------------------------------------------------------------------------------------


def test_every_expected_event_has_both_schemas_except_ours() -> None:
    for stem in EXPECTED:
        assert f"{stem}.cloudevents.json" in ALL_FIXTURES
        assert f"{stem}.eventgrid.json" in ALL_FIXTURES


@pytest.mark.parametrize("name", EVENT_FIXTURES)
def test_fixture_parses_and_interprets(name: str) -> None:
    stem, schema, _ = name.split(".")
    event = only(read(name))

    assert event.schema == schema
    assert event.time is not None
    assert event.time.tzinfo is UTC
    assert interpret(event) == EXPECTED[stem]


@pytest.mark.parametrize("name", EVENT_FIXTURES)
def test_fixture_envelope_fields(name: str) -> None:
    raw = load(name)
    item = raw[0] if isinstance(raw, list) else raw
    event = only(read(name))

    assert event.id == item["id"]
    assert event.subject == item["subject"]
    assert event.data == item["data"]
    if event.schema == "cloudevents":
        assert event.type == item["type"]
        assert event.source == item["source"]
        assert event.data_version is None
    else:
        assert event.type == item["eventType"]
        assert event.source == item["topic"]
        assert event.data_version == item["dataVersion"]


def test_azure_times_with_seven_fraction_digits_become_aware_utc() -> None:
    event = only(read("blob_created.eventgrid.json"))

    assert event.time == datetime(2026, 11, 23, 8, 15, 2, 958410, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-06-26T18:41:00.9584103Z", datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC)),
        ("2017-06-26T18:41:00.958410312Z", datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC)),
        ("2017-06-26T18:41:00Z", datetime(2017, 6, 26, 18, 41, tzinfo=UTC)),
        ("2017-06-26T20:41:00.5+02:00", datetime(2017, 6, 26, 18, 41, 0, 500000, tzinfo=UTC)),
        ("2017-06-26T18:41:00", datetime(2017, 6, 26, 18, 41, tzinfo=UTC)),
    ],
)
def test_event_times(text: str, expected: datetime) -> None:
    event = only(json.dumps(eventgrid_event(eventTime=text)))

    assert event.time == expected
    assert event.time is not None and event.time.tzinfo is UTC


def test_subscription_validation_fixture() -> None:
    delivered = parse_delivered(read("subscription_validation.eventgrid.json"))
    parsed = [d.event for d in delivered]

    assert validation_code(delivered) == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    assert parsed[0].subject == ""
    assert interpret(parsed[0]) is None


@pytest.mark.parametrize("name", EVENT_FIXTURES)
def test_validation_code_is_none_for_other_events(name: str) -> None:
    assert validation_code(parse_delivered(read(name))) is None


def test_validation_code_without_code_is_none() -> None:
    body = json.dumps([eventgrid_event(eventType=SUBSCRIPTION_VALIDATION_TYPE, data={})])

    assert validation_code(parse_delivered(body)) is None


def test_module_docstring_example_is_the_drift_alert_fixture() -> None:
    doc = events.__doc__ or ""
    example = json.loads(doc[doc.index("{") : doc.rindex("}") + 1])

    assert example == load("drift_alert.cloudevents.json")
    assert interpret(only(json.dumps(example), "application/cloudevents+json")) == EXPECTED["drift_alert"]


# -- delivery shapes ---------------------------------------------------------------------------------


def test_eventgrid_single_object_and_array_give_the_same_event() -> None:
    item = load("model_registered.eventgrid.json")[0]

    assert parse_delivery(json.dumps(item)) == parse_delivery(json.dumps([item]))


def test_cloudevents_single_batch_and_detected_give_the_same_event() -> None:
    item = load("blob_created.cloudevents.json")[0]

    single = parse_delivery(json.dumps(item), content_type="application/cloudevents+json; charset=utf-8")
    batch = parse_delivery(json.dumps([item]), content_type="application/cloudevents-batch+json")
    detected = parse_delivery(json.dumps(item), content_type="application/json")
    untyped = parse_delivery(json.dumps([item]).encode())

    assert single == batch == detected == untyped
    assert single[0].schema == "cloudevents"


def test_batch_of_several_events_keeps_order() -> None:
    items = [load(name)[0] for name in ("run_completed.cloudevents.json", "model_registered.cloudevents.json")]

    parsed = parse_delivery(json.dumps(items), content_type="application/cloudevents-batch+json")

    assert [type(interpret(e)) for e in parsed] == [RunCompleted, ModelRegistered]


def test_str_and_bytes_with_bom_are_accepted() -> None:
    text = (FIXTURES / "run_completed.eventgrid.json").read_text()

    assert parse_delivered(text) == parse_delivered(b"\xef\xbb\xbf" + text.encode())


def test_a_delivered_event_keeps_its_json_object_as_sent() -> None:
    items = [load("run_completed.cloudevents.json")[0], {**cloudevent(), "comexampleextension": "x"}]

    delivered = parse_delivered(json.dumps(items), content_type="application/cloudevents-batch+json")

    assert [d.raw for d in delivered] == items
    assert all(isinstance(d, DeliveredEvent) for d in delivered)


def test_cloudevent_optional_attributes() -> None:
    event = only(json.dumps(cloudevent()))

    assert event.subject == ""
    assert event.time is None
    assert interpret(event) == DriftAlert(
        event_id="1",
        model_name="iris-classifier",
        metric=None,
        score=None,
        threshold=None,
        source="/signalbox/drift-monitor",
    )


def test_cloudevent_base64_data_is_bytes() -> None:
    item = cloudevent(data_base64="aGVsbG8=")
    del item["data"]

    assert only(json.dumps(item)).data == b"hello"


def test_eventgrid_topic_is_optional() -> None:
    item = eventgrid_event()
    del item["topic"]
    del item["dataVersion"]

    event = only(json.dumps(item))

    assert event.source == ""
    assert event.data_version is None
    registered = interpret(event)
    assert isinstance(registered, ModelRegistered)
    assert registered.workspace is None


# -- invalid deliveries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{not json", None, "body: not valid JSON"),
        (b"", None, "body: not valid JSON"),
        (b"\xff\xfe{}", None, "body: not valid UTF-8"),
        (b'[{"id": NaN}]', None, "body: not valid JSON"),
        (b"[]", None, "body: empty array: no events"),
        (b"[]", "application/cloudevents-batch+json", "body: empty array: no events"),
        (b'"text"', None, "body: not a JSON object or array"),
        (b"42", None, "body: not a JSON object or array"),
        (b"[]", "application/cloudevents+json", "body: application/cloudevents+json must be one JSON object"),
        (b"{}", "application/cloudevents-batch+json", "body: application/cloudevents-batch+json must be a JSON array"),
    ],
)
def test_invalid_bodies(body: bytes, content_type: str | None, message: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_delivery(body, content_type=content_type)

    assert str(raised.value) == message
    assert raised.value.field == "body"


def test_non_object_item_names_its_index() -> None:
    with pytest.raises(InvalidEvent, match=r"^event\[1\]: not a JSON object$"):
        parse_delivery(json.dumps([eventgrid_event(), 42]))


@pytest.mark.parametrize("field", ["id", "eventType", "subject", "eventTime", "data"])
def test_missing_eventgrid_field_names_field_and_index(field: str) -> None:
    broken = eventgrid_event()
    del broken[field]

    with pytest.raises(InvalidEvent) as raised:
        parse_delivery(json.dumps([eventgrid_event(), eventgrid_event(), broken]))

    assert str(raised.value) == f"event[2].{field}: missing"
    assert raised.value.field == f"event[2].{field}"


@pytest.mark.parametrize("field", ["id", "source", "type"])
def test_missing_cloudevents_field_names_field_and_index(field: str) -> None:
    broken = cloudevent()
    del broken[field]

    with pytest.raises(InvalidEvent, match=rf"^event\[1\]\.{field}: missing$"):
        parse_delivery(json.dumps([cloudevent(), broken]), content_type="application/cloudevents-batch+json")


def test_cloudevents_content_type_requires_specversion() -> None:
    broken = cloudevent()
    del broken["specversion"]

    with pytest.raises(InvalidEvent, match=r"^event\[0\]\.specversion: missing$"):
        parse_delivery(json.dumps(broken), content_type="application/cloudevents+json")


@pytest.mark.parametrize("version", ["0.3", "1", "2.0"])
def test_unknown_specversion(version: str) -> None:
    with pytest.raises(InvalidEvent, match=r"^event\[0\]\.specversion: unsupported CloudEvents version"):
        parse_delivery(json.dumps([cloudevent(specversion=version)]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eventTime": "yesterday"}, "event[0].eventTime: not an ISO 8601 time: 'yesterday'"),
        ({"id": 7}, "event[0].id: not a string"),
        ({"id": ""}, "event[0].id: empty"),
        ({"eventType": None}, "event[0].eventType: missing"),
        ({"topic": 3}, "event[0].topic: not a string"),
        ({"dataVersion": 1}, "event[0].dataVersion: not a string"),
    ],
)
def test_invalid_eventgrid_fields(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_delivery(json.dumps(eventgrid_event(**overrides)))

    assert str(raised.value) == message


def test_invalid_cloudevent_time_and_base64() -> None:
    with pytest.raises(InvalidEvent, match=r"^event\[0\]\.time: not an ISO 8601 time"):
        parse_delivery(json.dumps(cloudevent(time="soon")))
    item = cloudevent(data_base64="not base64!")
    del item["data"]
    with pytest.raises(InvalidEvent, match=r"^event\[0\]\.data_base64: not valid base64$"):
        parse_delivery(json.dumps(item))


# -- interpret ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "Microsoft.Storage.BlobDeleted",
        "Microsoft.MachineLearningServices.ModelDeployed",
        "com.example.something",
    ],
)
def test_unknown_event_type_interprets_to_none(event_type: str) -> None:
    event = only(json.dumps(eventgrid_event(eventType=event_type)))

    assert interpret(event) is None


def test_event_type_matches_case_insensitively() -> None:
    event = only(json.dumps(eventgrid_event(eventType="microsoft.machinelearningservices.modelregistered")))

    assert isinstance(interpret(event), ModelRegistered)


def test_pascal_and_camel_case_model_registered_are_equal() -> None:
    pascal = only(read("model_registered.eventgrid.json"))
    camel = with_data(
        pascal,
        {
            "modelName": "iris-classifier",
            "modelVersion": "3",
            "modelTags": {"stage": "candidate", "framework": "sklearn"},
            "modelProperties": {"accuracy": "0.967"},
        },
    )

    assert interpret(camel) == interpret(pascal) == EXPECTED["model_registered"]


@pytest.mark.parametrize("name", ["run_completed.eventgrid.json", "run_status_changed.cloudevents.json"])
def test_pascal_and_camel_case_run_events_are_equal(name: str) -> None:
    camel = only(read(name))
    pascal = with_data(camel, {key[0].upper() + key[1:]: value for key, value in camel.data.items()})

    assert "RunId" in pascal.data
    assert interpret(pascal) == interpret(camel)


def test_pascal_and_camel_case_dataset_drift_are_equal() -> None:
    pascal = only(read("dataset_drift_detected.cloudevents.json"))
    camel = with_data(pascal, {key[0].lower() + key[1:]: value for key, value in pascal.data.items()})

    assert "dataDriftId" in camel.data
    assert interpret(camel) == interpret(pascal)


@pytest.mark.parametrize(("version", "expected"), [(20, "20"), ("20", "20"), (20.0, "20"), ("1.2", "1.2")])
def test_model_version_is_always_a_string(version: Any, expected: str) -> None:
    event = only(json.dumps(eventgrid_event(data={"ModelName": "iris-classifier", "ModelVersion": version})))

    registered = interpret(event)

    assert isinstance(registered, ModelRegistered)
    assert registered.model_version == expected
    assert registered.tags == {}
    assert registered.properties == {}
    assert registered.workspace == "signalbox-ws"


def test_run_completed_with_an_explicit_status_keeps_it() -> None:
    event = only(read("run_completed.eventgrid.json"))

    completed = interpret(with_data(event, {**event.data, "runStatus": "Finalizing"}))

    assert isinstance(completed, RunCompleted)
    assert completed.run_status == "Finalizing"


def test_run_completed_and_status_changed_are_distinct_types() -> None:
    completed = interpret(only(read("run_completed.eventgrid.json")))
    changed = interpret(only(read("run_status_changed.eventgrid.json")))

    assert type(completed) is RunCompleted
    assert type(changed) is RunStatusChanged
    assert not isinstance(changed, RunCompleted)


def test_drift_alert_in_eventgrid_schema() -> None:
    event = only(read("drift_alert.eventgrid.json"))

    assert event.schema == "eventgrid"
    assert interpret(event) == EXPECTED["drift_alert"]


def test_drift_alert_integer_score() -> None:
    event = only(json.dumps(cloudevent(data={"model_name": "m", "score": 1, "threshold": "0.5"})))

    alert = interpret(event)

    assert isinstance(alert, DriftAlert)
    assert alert.score == 1.0
    assert isinstance(alert.score, float)
    assert alert.threshold == 0.5


@pytest.mark.parametrize(
    ("name", "remove", "field"),
    [
        ("model_registered.eventgrid.json", "ModelName", "data.ModelName"),
        ("model_registered.cloudevents.json", "ModelVersion", "data.ModelVersion"),
        ("run_completed.eventgrid.json", "runId", "data.runId"),
        ("run_status_changed.cloudevents.json", "runStatus", "data.runStatus"),
        ("dataset_drift_detected.eventgrid.json", "DataDriftId", "data.DataDriftId"),
        ("dataset_drift_detected.cloudevents.json", "DataDriftName", "data.DataDriftName"),
        ("blob_created.eventgrid.json", "url", "data.url"),
        ("drift_alert.cloudevents.json", "model_name", "data.model_name"),
    ],
)
def test_known_type_missing_required_field_names_it(name: str, remove: str, field: str) -> None:
    event = only(read(name))
    data = dict(event.data)
    del data[remove]

    with pytest.raises(InvalidEvent) as raised:
        interpret(with_data(event, data))

    assert raised.value.field == field
    assert str(raised.value) == f"{field}: missing"


@pytest.mark.parametrize(
    ("name", "data_patch", "message"),
    [
        ("model_registered.eventgrid.json", {"ModelVersion": True}, "data.ModelVersion: not a string or integer"),
        ("model_registered.eventgrid.json", {"ModelTags": ["a"]}, "data.ModelTags: not a JSON object"),
        ("blob_created.eventgrid.json", {"contentLength": "big"}, "data.contentLength: not an integer: 'big'"),
        ("dataset_drift_detected.eventgrid.json", {"DriftCoefficient": "high"}, "data.DriftCoefficient: not a number"),
        ("dataset_drift_detected.eventgrid.json", {"StartTime": "monday"}, "data.StartTime: not an ISO 8601 time"),
        ("drift_alert.cloudevents.json", {"score": "nan"}, "data.score: not a finite number"),
        ("run_completed.eventgrid.json", {"runId": 12}, "data.runId: not a string"),
    ],
)
def test_known_type_with_a_bad_field_names_it(name: str, data_patch: dict[str, Any], message: str) -> None:
    event = only(read(name))

    with pytest.raises(InvalidEvent, match=f"^{message}"):
        interpret(with_data(event, {**event.data, **data_patch}))


def test_known_type_without_object_data() -> None:
    event = only(json.dumps(eventgrid_event(data=None)))

    with pytest.raises(InvalidEvent, match=r"^data: not a JSON object$"):
        interpret(event)


def test_blob_path_is_url_decoded_and_may_nest() -> None:
    event = only(read("blob_created.cloudevents.json"))
    subject = "blobServices/default/containers/landing/blobs/iris/2026/11/23/batch%20001%2Bv2.csv"
    url = "https://signalboxlanding.blob.core.windows.net/landing/iris/2026/11/23/batch%20001%2Bv2.csv"

    blob = interpret(replace(event, subject=subject, data={**event.data, "url": url}))

    assert isinstance(blob, BlobCreated)
    assert blob.container == "landing"
    assert blob.blob_path == "iris/2026/11/23/batch 001+v2.csv"


def test_blob_account_and_path_from_url_when_topic_and_subject_say_nothing() -> None:
    event = only(read("blob_created.eventgrid.json"))

    blob = interpret(replace(event, source="", subject="not-a-blob-subject"))

    assert isinstance(blob, BlobCreated)
    assert (blob.account, blob.container, blob.blob_path) == ("signalboxlanding", "landing", BLOB_PATH)


def test_blob_account_from_an_emulator_url() -> None:
    event = only(read("blob_created.eventgrid.json"))
    url = "http://127.0.0.1:10000/devstoreaccount1/landing/iris/2026/11/23/batch-001.csv"

    blob = interpret(replace(event, source="", data={**event.data, "url": url}))

    assert isinstance(blob, BlobCreated)
    assert (blob.account, blob.container, blob.blob_path) == ("devstoreaccount1", "landing", BLOB_PATH)


def test_blob_without_a_usable_subject_or_url() -> None:
    event = only(read("blob_created.eventgrid.json"))
    broken = replace(event, subject="elsewhere", data={"url": "https://acct.blob.core.windows.net/"})

    with pytest.raises(InvalidEvent, match=r"^subject: "):
        interpret(broken)


# -- the function worker's types ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_the_worker_bound_event_reads_as_the_delivered_one(name: str) -> None:
    import azure.functions as func

    for delivered in parse_delivered(read(name)):
        bound = bind(delivered.raw)

        # A CloudEvents subscription binds CloudEvent, an Event Grid one EventGridEvent.
        expected = func.CloudEvent if delivered.event.schema == "cloudevents" else func.EventGridEvent
        assert type(bound) is expected
        back = InboundEvent.from_function_event(bound)
        assert back == delivered.event
        assert interpret(back) == interpret(delivered.event)


def test_a_cloudevent_with_base64_data_binds_to_bytes() -> None:
    item = cloudevent(data_base64="aGVsbG8=")
    del item["data"]

    assert InboundEvent.from_function_event(bind(item)).data == b"hello"
    broken = {**item, "data_base64": "not base64!"}
    with pytest.raises(InvalidEvent, match=r"^event\.data_base64: not valid base64$"):
        InboundEvent.from_function_event(bind(broken))


def test_an_eventgrid_event_with_data_version_1_0_stays_an_eventgrid_event() -> None:
    back = InboundEvent.from_function_event(bind(eventgrid_event(dataVersion="1.0")))

    assert (back.schema, back.data_version) == ("eventgrid", "1.0")
    assert isinstance(interpret(back), ModelRegistered)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**cloudevent(), "type": None}, "event.type: missing"),
        ({k: v for k, v in cloudevent().items() if k != "source"}, "event.source: missing"),
        (cloudevent(id=7), "event.id: not a string"),
        (cloudevent(subject=["a"]), "event.subject: not a string"),
        (cloudevent(specversion="0.3"), "event.specversion: unsupported CloudEvents version '0.3' (only 1.0)"),
        (cloudevent(specversion=None), "event.specversion: unsupported CloudEvents version None (only 1.0)"),
        ({"hello": "world"}, "event.id: missing"),
        (eventgrid_event(eventType=12), "event.event_type: not a string"),
        (eventgrid_event(topic={"a": 1}), "event.topic: not a string"),
    ],
)
def test_whatever_the_converter_binds_is_checked(raw: dict[str, Any], message: str) -> None:
    # The converter checks nothing: every attribute may be None or any JSON type.
    with pytest.raises(InvalidEvent) as raised:
        InboundEvent.from_function_event(bind(raw))

    assert str(raised.value) == message


def test_from_function_event_naive_time_is_utc() -> None:
    import azure.functions as func

    bound = func.EventGridEvent(
        id="1",
        data={"model_name": "m"},
        topic="",
        subject="",
        event_type=DRIFT_ALERT_TYPE,
        event_time=datetime(2026, 11, 23, 8, 0),
        data_version="",
    )

    assert InboundEvent.from_function_event(bound).time == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    # The converter itself yields a naive time for a time without an offset.
    naive = bind(eventgrid_event(eventTime="2026-11-23T08:00:00"))
    assert naive.event_time == datetime(2026, 11, 23, 8, 0)
    assert InboundEvent.from_function_event(naive).time == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_from_function_event_accepts_text_times_and_rejects_others() -> None:
    import azure.functions as func

    bound = bind(load("drift_alert.eventgrid.json")[0])
    kwargs = {
        "id": bound.id,
        "data": bound.get_json(),
        "topic": bound.topic,
        "subject": bound.subject,
        "event_type": bound.event_type,
        "data_version": bound.data_version,
    }

    text = InboundEvent.from_function_event(func.EventGridEvent(**kwargs, event_time="2026-11-23T08:30:00Z"))
    assert text.time == datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
    with pytest.raises(InvalidEvent, match=r"^event\.event_time: not a time"):
        InboundEvent.from_function_event(func.EventGridEvent(**kwargs, event_time=12))
    with pytest.raises(InvalidEvent, match=r"^event\.id: missing$"):
        InboundEvent.from_function_event(func.EventGridEvent(**{**kwargs, "id": ""}, event_time=None))


def test_importing_events_loads_neither_azure_nor_pydantic() -> None:
    code = (
        "import sys, shared.events\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'azure', 'pydantic'})\n"
        "assert not loaded, loaded\n"
    )

    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
