"""One version, one spelling: "01", "007" and 7 name versions 1 and 7, so a second spelling of a version is
the same cause and queues nothing more (found by the ingress fuzzing, tests/fuzz)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from functions import approvals
from shared import domain, runtime, webhooks
from shared.events import InboundEvent, InvalidEvent, ModelRegistered, interpret
from shared.services import Services
from signalbox.localhost.index import HostedFunction, index_functions
from tests.fakes import FakeBus, FakeRegistry, services


@pytest.mark.parametrize(("text", "expected"), [("1", "1"), ("01", "1"), ("007", "7"), ("2147483647", "2147483647")])
def test_a_version_number_has_one_spelling(text: str, expected: str) -> None:
    assert domain.version_number(text) == expected


@pytest.mark.parametrize("text", ["0", "00", "-1", "+1", " 1", "1.0", "", "2147483648", "\u0661", "9" * 40])
def test_what_is_not_a_version_number(text: str) -> None:
    with pytest.raises(ValueError, match="not a version number"):
        domain.version_number(text)


def _mlflow(version: Any) -> bytes:
    return json.dumps(
        {"entity": "model_version", "action": "created", "data": {"name": "iris-classifier", "version": version}}
    ).encode()


def _databricks(version: Any) -> bytes:
    return json.dumps(
        {"event": "MODEL_VERSION_CREATED", "model_name": "iris-classifier", "version": version, "event_timestamp": 1}
    ).encode()


@pytest.mark.parametrize("version", ["007", 7, "7"])
def test_webhook_versions_are_read_in_their_one_spelling(version: Any) -> None:
    assert webhooks.parse_mlflow(_mlflow(version), "d-1").version == "7"
    assert webhooks.parse_databricks(_databricks(version)).version == "7"


@pytest.mark.parametrize("version", ["0", 0, "000"])
def test_webhook_version_zero_is_refused(version: Any) -> None:
    for parse in (
        lambda: webhooks.parse_mlflow(_mlflow(version), "d-1"),
        lambda: webhooks.parse_databricks(_databricks(version)),
    ):
        with pytest.raises(webhooks.WebhookRejected, match="version number") as refused:
            parse()
        assert refused.value.status == 400


def _registered(version: Any) -> InboundEvent:
    return InboundEvent(
        id="e-1",
        type="Microsoft.MachineLearningServices.ModelRegistered",
        source="/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w",
        subject="models/iris-classifier",
        time=None,
        data={"ModelName": "iris-classifier", "ModelVersion": version},
        data_version="2",
        schema="eventgrid",
    )


@pytest.mark.parametrize(("version", "expected"), [("007", "7"), (7, "7"), ("1.2", "1.2")])
def test_model_registered_numbers_have_one_spelling_and_names_stay(version: Any, expected: str) -> None:
    known = interpret(_registered(version))
    assert isinstance(known, ModelRegistered) and known.model_version == expected


def test_model_registered_version_zero_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="ModelVersion"):
        interpret(_registered("0"))


@pytest.fixture
def approval(tmp_path: Any) -> Iterator[tuple[HostedFunction, Services]]:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(approvals.bp)
    (function,) = [f for f in index_functions(app) if f.name == "approval"]
    svc = services(SIGNALBOX_STATE_DIR=str(tmp_path))
    registry: FakeRegistry = svc.registry  # type: ignore[assignment]
    registry.register("iris-classifier", stage="staged", approval="pending")
    runtime.override(svc)
    try:
        yield function, svc
    finally:
        runtime.override(None)


def _decide(function: HostedFunction, version: str, decision: str = "approve") -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url=f"http://host/api/approvals/iris-classifier/{version}/{decision}",
        route_params={"model": "iris-classifier", "version": version, "decision": decision},
        body=b"",
    )
    response = function.call(req=request)
    assert isinstance(response, func.HttpResponse)
    return response


def test_an_approval_spelled_two_ways_is_one_decision(approval: tuple[HostedFunction, Services]) -> None:
    function, svc = approval
    bus: FakeBus = svc.bus  # type: ignore[assignment]
    for spelling in ("1", "01", "001"):
        answer = _decide(function, spelling)
        assert answer.status_code == 202 and json.loads(answer.get_body())["version"] == "1"
    (promote,) = bus.take("promote")
    assert promote.command.version == "1"  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["0", "-1", "2147483648"])
def test_an_approval_of_no_version_number_is_404(approval: tuple[HostedFunction, Services], version: str) -> None:
    function, svc = approval
    answer = _decide(function, version)
    assert answer.status_code == 404 and "version" in json.loads(answer.get_body())["error"]
    assert svc.bus.take("promote") == []  # type: ignore[attr-defined]
