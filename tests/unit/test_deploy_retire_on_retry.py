"""A deployment whose recording fails after the traffic moved still retires the old deployment.

Found by ``signalbox chaos``: the retry of such a delivery sees the new version routed, records it,
and no longer knows which deployment served before, so the old served entity stayed up for good.
"""

from __future__ import annotations

import pytest

from shared import domain, handlers
from shared.domain import Stage
from shared.errors import TransientError
from shared.handlers import deployment
from shared.ports import Deployment
from tests.fakes import FakeServing, services
from tests.unit.test_handlers import MODEL, drain, train_to_version


def test_the_old_deployment_is_stopped_when_recording_the_new_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services()
    svc.serving = serving = FakeServing()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    for kind in ("evaluate", "promote"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (deploy,) = svc.bus.take("deploy")
    record = deployment._make_production
    failures = iter([TransientError("MLflow registry append_history: 503")])

    def flaky(*args: object, **kwargs: object) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(deployment, "_make_production", flaky)
    with pytest.raises(TransientError):
        handlers.PIPELINE["deploy"](deploy, svc)  # the traffic moved; recording it failed
    assert handlers.PIPELINE["deploy"](deploy, svc) == "deployed"  # the retry finds it routed and records it
    assert svc.registry.stage(MODEL, v2) == "production" and svc.registry.stage(MODEL, v1) == "surpassed"
    assert [d.version for d in serving.running] == [v2]  # v1's deployment is not left running


def test_the_old_deployment_is_stopped_when_the_route_was_applied_but_its_answer_lost() -> None:
    svc = services()
    svc.serving = serving = FakeServing()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    for kind in ("evaluate", "promote"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (deploy,) = svc.bus.take("deploy")
    route = serving.route

    def applied_but_lost(endpoint: str, target: object) -> None:
        route(endpoint, target)  # type: ignore[arg-type]
        serving.route = route  # type: ignore[method-assign]
        raise TransientError("Databricks unreachable (ReadTimeout)")  # the update applied, the answer lost

    serving.route = applied_but_lost  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        handlers.PIPELINE["deploy"](deploy, svc)
    assert handlers.PIPELINE["deploy"](deploy, svc) == "deployed"  # the retry finds v2 routed and records it
    assert svc.registry.stage(MODEL, v2) == "production" and svc.registry.stage(MODEL, v1) == "surpassed"
    assert sorted(d.version for d in serving.running) == [v1, v2]
    (retire,) = svc.bus.take("deploy")  # the old one is stopped from a scheduled retire, with its guards
    (old,) = [d for d in serving.running if d.version == v1]
    assert (retire.command.retire_version, retire.command.retire_slot) == (v1, old.slot)

    def stop_by_slot(deployment: Deployment) -> None:
        # As the Databricks adapter does (by served entity name): the registry records the endpoint's
        # URL, not the slot's, so the fake's match on the whole Deployment would not apply here.
        gone = (deployment.slot, deployment.version)
        serving.running[:] = [d for d in serving.running if (d.slot, d.version) != gone]

    serving.stop = stop_by_slot  # type: ignore[method-assign]
    assert handlers.PIPELINE["deploy"](retire, svc) == "retired"
    assert [d.version for d in serving.running] == [v2]


def test_a_retire_waits_while_a_version_is_staged_and_then_stops_the_old_deployment() -> None:
    # Found by signalbox chaos: a retire skipped while a newer version was staged left the old served
    # entity up for good when that version never started (superseded or not approved).
    from tests.unit.test_cloud_degrades import _BusyEndpoint

    svc = services()
    svc.serving = serving = _BusyEndpoint()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    serving.busy = 1
    for kind in ("evaluate", "promote", "deploy"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (retire,) = svc.bus.take("deploy")
    v3 = train_to_version(svc, accuracy=0.95, event_id="c")
    for kind in ("evaluate", "promote"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    assert svc.registry.stage(MODEL, v3) == "staged"
    svc.bus.take("deploy")  # v3's deployment never runs: it stays staged
    assert handlers.PIPELINE["deploy"](retire, svc) == "retrying"
    (again,) = svc.bus.take("deploy")
    assert again.command.retire_version == v1 and again.command.attempt == 1
    assert sorted(d.version for d in serving.running) == [v1, v2]
    svc.registry.set_version_tags(MODEL, v3, {domain.STAGE: Stage.UNSTAGED})  # superseded, never started
    assert handlers.PIPELINE["deploy"](again, svc) == "retired"
    assert [d.version for d in serving.running] == [v2]


def test_after_readiness_checks_a_retry_that_finds_the_traffic_moved_still_retires_the_old_deployment() -> None:
    # Found by signalbox chaos: a readiness check's message (candidate slot set) whose route applied but
    # whose answer was lost: its retry saw the candidate serving and retired nothing.
    svc = services()
    svc.serving = serving = FakeServing()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    serving.slow_versions[v2] = 1
    for kind in ("evaluate", "promote", "deploy"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (check,) = svc.bus.take("deploy")  # the readiness check: the candidate is named on the command
    assert check.command.candidate_slot
    route = serving.route

    def applied_but_lost(endpoint: str, target: object) -> None:
        route(endpoint, target)  # type: ignore[arg-type]
        serving.route = route  # type: ignore[method-assign]
        raise TransientError("Databricks unreachable (ReadTimeout)")

    serving.route = applied_but_lost  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        handlers.PIPELINE["deploy"](check, svc)
    assert handlers.PIPELINE["deploy"](check, svc) == "deployed"
    assert svc.registry.stage(MODEL, v2) == "production"
    (retire,) = svc.bus.take("deploy")
    (old,) = [d for d in serving.running if d.version == v1]
    assert (retire.command.retire_version, retire.command.retire_slot) == (v1, old.slot)
