"""Transient failures are retried later by a scheduled re-send with backoff; the last retry dead-letters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared import dispatch, domain, handlers
from shared.contracts import Envelope, TrainModel
from shared.errors import PermanentError, TransientError
from tests.fakes import services

MODEL = "iris-classifier"


def _train(svc) -> Envelope:
    command = TrainModel(model_name=MODEL, reason="landing", data_uri="file:///tmp/x.csv")
    return Envelope.start(command, cause="eventgrid:e1", environment="dev", now=svc.clock())


def _failing(monkeypatch, error: Exception) -> list[Envelope]:
    seen: list[Envelope] = []

    def handler(envelope: Envelope, svc: object) -> None:
        seen.append(envelope)
        raise error

    monkeypatch.setitem(handlers.PIPELINE, "train", handler)
    return seen


def test_a_transient_failure_is_sent_again_later_as_the_same_command(monkeypatch):
    svc = services(SIGNALBOX_RETRY_INITIAL_SECONDS=10, SIGNALBOX_RETRY_MAX_SECONDS=600)
    _failing(monkeypatch, TransientError("429 from the workspace"))
    original = _train(svc)

    outcome = dispatch.run_command("train", original.to_json(), {}, svc)

    assert outcome == "retrying"
    ((retry, at),) = svc.bus.sent
    assert retry.retry == 1 and retry.command == original.command
    # Same identity (follow-ups and idempotency keys derive from it), its own transport id.
    assert retry.message_id == original.message_id and retry.correlation_id == original.correlation_id
    assert retry.transport_id != original.transport_id
    assert at is not None and timedelta(seconds=5) <= at - svc.clock() <= timedelta(seconds=10)


def test_retries_back_off_exponentially_up_to_the_cap_then_dead_letter_with_the_reason(monkeypatch):
    svc = services(
        SIGNALBOX_RETRY_INITIAL_SECONDS=10, SIGNALBOX_RETRY_MAX_SECONDS=60, SIGNALBOX_RETRY_MAX_ATTEMPTS=4
    )
    _failing(monkeypatch, TransientError("endpoint is Updating"))
    envelope = _train(svc)
    windows = []
    for _ in range(4):
        dispatch.run_command("train", envelope.to_json(), {}, svc)
        ((envelope, at),) = svc.bus.sent
        svc.bus.sent.clear()
        windows.append((at - svc.clock()).total_seconds())
    assert envelope.retry == 4
    assert 5 <= windows[0] <= 10 and 10 <= windows[1] <= 20 and 20 <= windows[2] <= 40 and 30 <= windows[3] <= 60
    with pytest.raises(PermanentError, match="gave up after 4 retries of a transient failure: endpoint is Updating"):
        dispatch.run_command("train", envelope.to_json(), {}, svc)
    assert svc.bus.sent == []


def test_other_failures_are_not_retried_by_resending(monkeypatch):
    svc = services()
    _failing(monkeypatch, PermanentError("403: the identity lacks the AzureML Data Scientist role"))
    with pytest.raises(PermanentError, match="403"):
        dispatch.run_command("train", _train(svc).to_json(), {}, svc)
    assert svc.bus.sent == []


def test_a_retried_train_launches_one_run_per_cause(monkeypatch):
    # The retry keeps the message id, so the job's idempotency key is the same on every attempt.
    svc = services()
    keys = []
    launch = svc.compute["local"].launch

    def flaky_launch(job):
        keys.append(job.idempotency_key)
        if len(keys) == 1:
            raise TransientError("503")
        return launch(job)

    monkeypatch.setattr(svc.compute["local"], "launch", flaky_launch)
    envelope = _train(svc)
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///tmp/x.csv")
    assert dispatch.run_command("train", envelope.to_json(), {}, svc) == "retrying"
    (retry,) = svc.bus.take("train")
    dispatch.run_command("train", retry.to_json(), {}, svc)
    assert keys == [envelope.message_id, envelope.message_id]


def test_retry_delay_is_jittered_within_the_upper_half_of_the_window():
    assert domain.retry_delay(1, 4, 100, 0.0) == timedelta(seconds=2)
    assert domain.retry_delay(1, 4, 100, 0.999).total_seconds() == pytest.approx(4, abs=0.01)
    assert domain.retry_delay(10, 4, 100, 0.0) == timedelta(seconds=50)
