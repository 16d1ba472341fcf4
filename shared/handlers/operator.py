"""An operator in an incident: roll back, hold, release, read the history (CLI, HTTP and the ops page).

The HTTP functions (``functions/operator.py``) parse and call these; the CLI and the ops page
call those functions. A rollback is checked here (so a refusal is an answer, not a dead letter)
and runs on the deploy queue in the model's session (``shared.handlers.deployment.rollback``).
A hold and a release are model tags written here; a release sends the deployment the hold kept
back. One request id is one action: the same id again answers the same and changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import domain, history
from shared.contracts import DeployVersion, PromoteVersion, RollbackModel
from shared.domain import Approval, LifecycleEvent, Outcome, Stage
from shared.errors import InvalidInput, RollbackRefused, UnknownVersion
from shared.handlers.common import log, start
from shared.handlers.deployment import rollback_refusal, served_before

if TYPE_CHECKING:
    from shared.ports import ModelVersion
    from shared.services import Services

MAX_NAME = 200
MAX_REASON = 1000


def _required(value: object, name: str, limit: int) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidInput(f"{name}: required (a non-empty string)")
    if len(text) > limit:
        raise InvalidInput(f"{name}: at most {limit} characters")
    return text


def _optional(value: object, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: expected a string")
    return _required(value, name, limit) if value.strip() else ""


def _target(svc: Services, model_name: str, versions: list[ModelVersion], current: ModelVersion | None) -> ModelVersion:
    """The previous production version: of the versions that served, the one deployed last, not the current."""
    served = [v for v in versions if served_before(v) and (current is None or v.version != current.version)]
    if not served:
        raise RollbackRefused(f"{model_name}: no earlier version has served, nothing to roll back to")

    def deployed_at(v: ModelVersion) -> tuple[str, int]:
        at = domain.read_record(v.tags.get(domain.DEPLOYMENT)).get("at")
        return (str(at or ""), int(v.version) if v.version.isdigit() else 0)

    return max(served, key=deployed_at)


def request_rollback(
    model_name: str, to_version: str | None, by: object, reason: object, request_id: str, svc: Services
) -> dict[str, Any]:
    """Check a rollback and queue it on the model's deploy session; the 202 answer.

    Raises ``UnknownModel``/``UnknownVersion`` (404), ``RollbackRefused`` (409: nothing to roll back
    to, a version that never served, its model files gone, already in production), ``InvalidInput`` (400).
    """
    who = _required(by, "by", MAX_NAME)
    why = _required(reason, "reason", MAX_REASON)
    request = _required(request_id, "request_id", MAX_NAME)
    model = svc.catalogue.get(model_name)
    versions = svc.registry.list_versions(model.name)
    production = domain.with_stage(versions, Stage.PRODUCTION)
    current = production[-1] if production else None
    answer = {"model": model.name, "request_id": request, "outcome": Outcome.QUEUED.value}
    if current is not None:
        done = domain.read_record(current.tags.get(domain.DEPLOYMENT))
        if done.get("request_id") == request:  # a double click after the rollback ran: the same answer
            return {**answer, "to_version": current.version, "from_version": done.get("rollback_from")}
    if to_version is None:
        target = _target(svc, model.name, versions, current)
    else:
        number = domain.version_number(to_version)  # ValueError: the caller answers 404
        found = [v for v in versions if v.version == number]
        if not found:
            raise UnknownVersion(f"model {model.name} version {number} is not registered")
        target = found[0]
    refusal = rollback_refusal(svc, model, target)
    if refusal is not None:
        raise RollbackRefused(refusal)
    from_version = current.version if current is not None else None
    command = RollbackModel(
        model_name=model.name,
        to_version=target.version,
        from_version=from_version,
        requested_by=who,
        reason=why,
        request_id=request,
    )
    envelope = start(svc, command, cause=f"rollback:{model.name}:{request}")
    svc.bus.send(envelope)
    svc.events.publish(
        LifecycleEvent.ROLLBACK_REQUESTED,
        model.name,
        {"version": target.version, "from_version": from_version, "by": who, "reason": why},
    )
    history.record(
        svc,
        model.name,
        history.Entry(
            "rollback",
            f"rollback to v{target.version} requested" + (f" (v{from_version} serves)" if from_version else ""),
            who=who,
            why=why,
            version=target.version,
            detail={"request_id": request, "from_version": from_version},
            correlation_id=envelope.correlation_id,
            cause=envelope.message_id,
        ),
    )
    log.info("rollback of %s to v%s queued by %s: %s", model.name, target.version, who, why)
    return {**answer, "to_version": target.version, "from_version": from_version}


def hold(model_name: str, by: object, reason: object, request_id: str, svc: Services) -> dict[str, Any]:
    """Stop automatic deployment of the model until it is released (training and evaluation go on)."""
    who = _required(by, "by", MAX_NAME)
    why = _required(reason, "reason", MAX_REASON)
    request = _required(request_id, "request_id", MAX_NAME)
    model = svc.catalogue.get(model_name)
    current = domain.hold_of(svc.registry.model_tags(model.name))
    if current is not None:
        outcome = Outcome.HELD if current.get("request_id") == request else Outcome.ALREADY_HELD
        return {"model": model.name, "held": current, "outcome": outcome.value, "request_id": request}
    at = svc.clock()
    svc.registry.set_model_tag(
        model.name, domain.HOLD, domain.record(by=who, reason=why, at=at.isoformat(), request_id=request)
    )
    svc.events.publish(LifecycleEvent.MODEL_HELD, model.name, {"by": who, "reason": why})
    history.record(
        svc,
        model.name,
        history.Entry(
            "hold",
            f"{model.name} held: no automatic deployment",
            who=who,
            why=why,
            detail={"request_id": request},
            correlation_id=request,
            cause=f"hold:{model.name}:{request}",
        ),
    )
    held = {"by": who, "reason": why, "at": at.isoformat(), "request_id": request}
    return {"model": model.name, "held": held, "outcome": Outcome.HELD.value, "request_id": request}


def release(model_name: str, by: object, reason: object, request_id: str, svc: Services) -> dict[str, Any]:
    """Lift the hold; a staged winner that waited is sent on (deployed if approved, else promoted again)."""
    who = _required(by, "by", MAX_NAME)
    why = _optional(reason, "reason", MAX_REASON)
    request = _required(request_id, "request_id", MAX_NAME)
    model = svc.catalogue.get(model_name)
    tags = svc.registry.model_tags(model.name)
    current = domain.hold_of(tags)
    answer: dict[str, Any] = {"model": model.name, "held": None, "request_id": request, "sent": None}
    if current is None:
        last = domain.read_record(tags.get(domain.HOLD))
        outcome = Outcome.RELEASED if last.get("released_request_id") == request else Outcome.NOT_HELD
        return {**answer, "outcome": outcome.value}
    at = svc.clock()
    svc.registry.set_model_tag(
        model.name,
        domain.HOLD,
        domain.record(
            released=True,
            released_by=who,
            released_reason=why,
            released_at=at.isoformat(),
            released_request_id=request,
            **{k: v for k, v in current.items() if v is not None},
        ),
    )
    svc.events.publish(LifecycleEvent.MODEL_RELEASED, model.name, {"by": who, "reason": why})
    cause = f"release:{model.name}:{request}"
    history.record(
        svc,
        model.name,
        history.Entry(
            "release",
            f"{model.name} released: automatic deployment resumes",
            who=who,
            why=why or f"held since {current.get('at')} by {current.get('by')}: {current.get('reason')}",
            detail={"request_id": request, "hold": current},
            correlation_id=request,
            cause=cause,
        ),
    )
    answer["sent"] = _send_waiting(svc, model.name, cause)
    return {**answer, "outcome": Outcome.RELEASED.value}


def _send_waiting(svc: Services, model_name: str, cause: str) -> dict[str, str] | None:
    """The staged version's next step after a release: its deployment, or its promotion again."""
    staged = svc.registry.versions_with_tag(model_name, domain.STAGE, Stage.STAGED)
    if not staged:
        return None
    version = staged[-1]
    approval = version.tags.get(domain.APPROVAL)
    if approval == Approval.PENDING:
        return None  # a person approves it now
    # The cause names the release: duplicate detection still holds the deploy the hold stopped.
    command: DeployVersion | PromoteVersion
    if approval in (Approval.APPROVED, Approval.AUTO):
        command = DeployVersion(model_name=model_name, version=version.version)
    else:  # released before its promotion recorded an approval: promote it again
        command = PromoteVersion(model_name=model_name, version=version.version, decision="won")
    envelope = start(svc, command, cause=f"{cause}:{command.kind}:{version.version}")
    correlation = version.tags.get(domain.CORRELATION_ID)
    if correlation:
        envelope = envelope.model_copy(update={"correlation_id": correlation})
    svc.bus.send(envelope)
    return {"kind": command.kind, "version": version.version}


def read_history(model_name: str, since: datetime | None, svc: Services) -> dict[str, Any]:
    """The model's history, newest first (``UnknownModel`` for a model not in the catalogue)."""
    model = svc.catalogue.get(model_name)
    return {
        "model": model.name,
        "since": since.isoformat() if since else None,
        "entries": history.read(svc, model.name, since),
    }
