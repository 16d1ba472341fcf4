"""Envelopes: deterministic ids, lifecycle metadata, and errors that name the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared import queues
from shared.contracts import (
    ContractError,
    DeployVersion,
    Envelope,
    EvaluateVersion,
    PollRun,
    PromoteVersion,
    TrainModel,
    message_id_for,
    parse_envelope,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_the_same_cause_gives_the_same_message_id():
    a = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="eventgrid:1", environment="dev", now=NOW)
    b = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="eventgrid:1", environment="dev")
    c = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="eventgrid:2", environment="dev")
    assert a.message_id == b.message_id != c.message_id
    assert a.correlation_id == a.message_id and a.causation_id is None


def test_follow_carries_the_correlation_and_names_the_cause():
    first = Envelope.start(TrainModel(model_name="m", reason="drift"), cause="x", environment="prod", now=NOW)
    poll = first.follow(PollRun(model_name="m", backend="local", run_id="r1"), cause="poll:r1:0", now=NOW)
    evaluate = poll.follow(EvaluateVersion(model_name="m", version="3"), cause="version:m:3", now=NOW)
    assert poll.correlation_id == evaluate.correlation_id == first.correlation_id
    assert evaluate.causation_id == poll.message_id and poll.causation_id == first.message_id
    assert evaluate.environment == "prod"
    assert evaluate.message_id == message_id_for("evaluate", "version:m:3")


@pytest.mark.parametrize(
    ("command", "queue", "session"),
    [
        (TrainModel(model_name="m", reason="manual"), queues.TRAIN, None),
        (PollRun(model_name="m", backend="local", run_id="r"), queues.POLL_RUN, None),
        (EvaluateVersion(model_name="m", version="1"), queues.EVALUATE, None),
        (PromoteVersion(model_name="m", version="1", decision="won"), queues.PROMOTE, "m"),
        (DeployVersion(model_name="m", version="1"), queues.DEPLOY, "m"),
    ],
)
def test_every_command_round_trips_on_its_queue(command, queue, session):
    envelope = Envelope.start(command, cause="c", environment="dev", now=NOW)
    assert envelope.queue == queue and envelope.session_id == session
    assert parse_envelope(envelope.to_json(), queue=queue) == envelope


def _body(**changes):
    envelope = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="c", environment="dev", now=NOW)
    raw = json.loads(envelope.to_json())
    for path, value in changes.items():
        target = raw
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "(body)"),
        ("[1, 2]", "(body)"),
        (_body(schema_version=2), "schema_version"),
        (_body(schema_version=None), "schema_version"),
        (_body(correlation_id=None), "correlation_id"),
        (_body(command__reason=None), "command.reason"),
        (_body(command__reason="because"), "command.reason"),
        (_body(command__kind="explode"), "command"),
        (_body(command__surprise="x"), "command.surprise"),
        (_body(created_at="yesterday"), "created_at"),
    ],
)
def test_an_invalid_body_raises_an_error_naming_the_field(body, field):
    with pytest.raises(ContractError) as raised:
        parse_envelope(body, queue=queues.TRAIN)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_a_command_on_the_wrong_queue_is_refused():
    envelope = Envelope.start(DeployVersion(model_name="m", version="1"), cause="c", environment="dev")
    with pytest.raises(ContractError, match="does not belong on queue 'train'"):
        parse_envelope(envelope.to_json(), queue=queues.TRAIN)


def test_queue_definitions_are_read_with_their_settings():
    promote = queues.QUEUES[queues.PROMOTE]
    assert promote.requires_session and promote.max_delivery_count >= 1
    assert queues.parse_iso_duration("P1DT2H30M").total_seconds() == 95400
    with pytest.raises(ValueError, match="ISO 8601"):
        queues.parse_iso_duration("5 minutes")
