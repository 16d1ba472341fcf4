"""Cloud degrades the handlers absorb: runs the platform could not place, old deployments it could not stop yet."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared import handlers
from shared.errors import TransientError
from shared.ports import RunStatus
from tests.fakes import FakeCompute, FakeServing, services
from tests.unit.test_handlers import MODEL, blob, drain, train_to_version


def _launched(svc):
    handlers.land_blob(blob("e1", "iris/e1.csv", svc=svc), svc)
    (train,) = svc.bus.take("train")
    run_id = handlers.train(train, svc)
    (poll,) = svc.bus.take("poll-run")
    return train, run_id, poll


def test_a_run_that_failed_for_capacity_is_launched_again_as_a_new_run_later():
    svc = services(SIGNALBOX_RETRY_INITIAL_SECONDS=10, SIGNALBOX_RETRY_MAX_ATTEMPTS=2)
    compute: FakeCompute = svc.compute["local"]
    train, run_id, poll = _launched(svc)
    compute.states[run_id] = RunStatus(run_id, "failed", "MAX_CONCURRENT_RUNS_EXCEEDED", retryable=True)

    assert handlers.poll_run(poll, svc) == "retrying"
    ((relaunch, at),) = svc.bus.sent
    svc.bus.sent.clear()
    assert relaunch.command.kind == "train" and relaunch.command.relaunch == 1
    assert relaunch.command.data_uri == train.command.data_uri
    assert relaunch.correlation_id == train.correlation_id and relaunch.message_id != train.message_id
    assert at is not None and timedelta(seconds=5) <= at - svc.clock() <= timedelta(seconds=10)
    # A new idempotency key, so the platform starts a new run instead of answering the failed one.
    second_run = handlers.train(relaunch, svc)
    assert second_run != run_id
    assert [job.idempotency_key for job in compute.launched] == [train.message_id, relaunch.message_id]
    assert "TrainingFailed" not in svc.events.types()


def test_relaunches_stop_at_the_limit_and_the_failure_is_recorded():
    svc = services(SIGNALBOX_RETRY_MAX_ATTEMPTS=1)
    compute: FakeCompute = svc.compute["local"]
    _, run_id, poll = _launched(svc)
    compute.states[run_id] = RunStatus(run_id, "failed", "CLOUD_FAILURE", retryable=True)
    handlers.poll_run(poll, svc)
    (relaunch,) = svc.bus.take("train")
    second = handlers.train(relaunch, svc)
    (poll2,) = svc.bus.take("poll-run")
    compute.states[second] = RunStatus(second, "failed", "CLOUD_FAILURE", retryable=True)
    assert handlers.poll_run(poll2, svc) == "failed"
    assert svc.bus.take("train") == []
    assert "TrainingFailed" in svc.events.types()


def test_a_plain_failure_is_not_relaunched():
    svc = services()
    compute: FakeCompute = svc.compute["local"]
    _, run_id, poll = _launched(svc)
    compute.states[run_id] = RunStatus(run_id, "failed", "ValueError in train.py")
    assert handlers.poll_run(poll, svc) == "failed"
    assert svc.bus.take("train") == []


class _BusyEndpoint(FakeServing):
    """Stopping is refused while the endpoint applies its config update (Databricks), ``busy`` times."""

    busy: int = 0

    def stop(self, deployment):
        if self.busy > 0:
            self.busy -= 1
            raise TransientError("config update in progress on serving endpoint iris")
        super().stop(deployment)


def test_an_old_deployment_that_cannot_be_stopped_yet_is_stopped_later_not_left_serving():
    svc = services()
    svc.serving = serving = _BusyEndpoint()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    serving.busy = 2
    for kind in ("evaluate", "promote", "deploy"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    # The new version is recorded as serving at once; the old one is still running.
    assert svc.registry.stage(MODEL, v2) == "production" and svc.registry.stage(MODEL, v1) == "surpassed"
    assert sorted(d.version for d in serving.running) == [v1, v2]
    ((retire, at),) = svc.bus.sent
    svc.bus.sent.clear()
    assert retire.command.retire_slot and retire.command.retire_version == v1 and at is not None
    with pytest.raises(TransientError):  # still busy: the dispatcher retries it with backoff
        handlers.PIPELINE["deploy"](retire, svc)
    assert handlers.PIPELINE["deploy"](retire, svc) == "retired"
    assert [d.version for d in serving.running] == [v2]


def test_a_retire_never_stops_the_slot_that_serves():
    svc = services()
    svc.serving = serving = _BusyEndpoint()
    train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    train_to_version(svc, accuracy=0.9, event_id="b")
    serving.busy = 1
    for kind in ("evaluate", "promote", "deploy"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (retire,) = svc.bus.take("deploy")
    old = next(d for d in serving.running if d.slot == retire.command.retire_slot)
    serving.route("iris", old)  # traffic went back to that slot (a rollback) before the retire ran
    assert handlers.PIPELINE["deploy"](retire, svc) == "skipped"
    assert old in serving.running
