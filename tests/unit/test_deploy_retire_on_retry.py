"""A deployment whose recording fails after the traffic moved still retires the old deployment.

Found by ``signalbox chaos``: the retry of such a delivery sees the new version routed, records it,
and no longer knows which deployment served before, so the old served entity stayed up for good.
"""

from __future__ import annotations

import pytest

from shared import handlers
from shared.errors import TransientError
from shared.handlers import deployment
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
