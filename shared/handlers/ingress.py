"""Ingress handlers: an authenticated inbound event → exactly one command per cause."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from shared import domain, events
from shared.contracts import EvaluateVersion, PollRun, PromoteVersion, TrainModel
from shared.domain import Approval, LifecycleEvent, Outcome, Stage
from shared.errors import ModelHeld, NotAwaitingApproval
from shared.handlers.common import known_model, log, start

if TYPE_CHECKING:
    from shared.events import BlobCreated, DriftAlert, KnownEvent
    from shared.services import Services
    from shared.webhooks import GithubPush


def landing_cause(container: str, blob_path: str, etag: str | None) -> str | None:
    """The cause of training on one write of a landed file: its name and its ETag, as storage reports them.

    The BlobCreated event of a write and a landing sweep that lists the file derive the same cause,
    so the same message id, and duplicate detection keeps them to one training. The name, not the
    URL: an event's URL may name the Data Lake endpoint (``dfs``) where a listing names ``blob``.
    None without an ETag. The quotes HTTP and Event Grid put around it, and a weak ``W/``, are dropped.
    """
    tag = (etag or "").strip().removeprefix("W/").strip('"')
    return f"blob:{container}/{blob_path}@{tag}" if tag else None


def land_blob(blob: BlobCreated, svc: Services) -> Outcome:
    """New data in the landing zone → train the model whose prefix holds it.

    One training per write of the file (``landing_cause``); an event without an ETag is one cause per event.
    """
    model = svc.catalogue.for_blob(blob.container, blob.blob_path)
    if model is None:
        log.info("ignored blob %s/%s: no catalogue entry has that container and prefix", blob.container, blob.blob_path)
        return Outcome.IGNORED
    try:
        size = svc.landing.size(blob.url)
        problem = "the file is empty" if size == 0 else None
    except OSError as exc:
        problem = f"the file cannot be read: {exc}"
    if problem:
        reason = domain.record(data_uri=blob.url, reason=problem, event_id=blob.event_id, at=svc.clock())
        svc.registry.set_model_tag(model.name, domain.LAST_REFUSAL, reason)
        svc.events.publish(LifecycleEvent.DATA_REFUSED, model.name, {"data_uri": blob.url, "reason": problem})
        log.warning("refused %s for model %s: %s", blob.url, model.name, problem)
        return Outcome.REFUSED
    # Drift and code pushes retrain on the newest landed data. Each landing's training records it
    # (a registry write per event would bound ingest by the registry); the first landing this worker
    # sees records it at once, so a drift alert that follows finds data before any training ran.
    if model.name not in svc.landed:
        svc.registry.set_model_tag(model.name, domain.LATEST_DATA, blob.url)
        svc.landed.add(model.name)
    svc.events.publish(LifecycleEvent.DATA_LANDED, model.name, {"data_uri": blob.url, "bytes": size})
    svc.bus.send(
        start(
            svc,
            TrainModel(model_name=model.name, reason="landing", data_uri=blob.url),
            cause=landing_cause(blob.container, blob.blob_path, blob.etag) or f"eventgrid:{blob.event_id}",
        )
    )
    return Outcome.TRAIN


def new_version(
    model_name: str,
    version: str,
    source: str,
    svc: Services,
    *,
    environment: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Outcome:
    """A new registered version (webhook, Event Grid, a sweep) → evaluate it, once per version.

    ``tags``: the version's tags when the caller has read them already (a sweep), else they are read.
    """
    model = known_model(svc, model_name)
    if model is None or model.kind != "trained":
        return Outcome.IGNORED
    command = EvaluateVersion(model_name=model_name, version=version, source=source)
    # The cause is the version itself, so every announcement of it maps to one message id; and
    # the lifecycle (environment, correlation) is the one the training job tagged on the version.
    if tags is None:
        try:
            tags = svc.registry.get_version(model_name, version).tags
        except LookupError:
            tags = {}
    envelope = start(
        svc, command, cause=f"version:{model_name}:{version}", environment=environment or tags.get(domain.ENVIRONMENT)
    )
    if tags.get(domain.CORRELATION_ID):
        envelope = envelope.model_copy(update={"correlation_id": tags[domain.CORRELATION_ID]})
    svc.bus.send(envelope)
    return Outcome.EVALUATE


def drift_detected(model_name: str, alert_id: str, svc: Services) -> Outcome:
    """A drift alert → retrain, at most once per cooldown however many alerts arrive."""
    model = known_model(svc, model_name)
    if model is None:
        return Outcome.IGNORED
    now = svc.clock()
    cooldown = model.drift.cooldown
    tags = svc.registry.model_tags(model_name)
    if model.kind == "trained" and not tags.get(domain.LATEST_DATA):
        log.info("drift alert %s for %s ignored: no data has landed to retrain on", alert_id, model_name)
        return Outcome.NO_DATA
    last = tags.get(domain.LAST_DRIFT_TRAINING)
    if domain.in_cooldown(last, now, cooldown):
        log.info(
            "drift alert %s for %s ignored: a drift training started at %s (cooldown %s)",
            alert_id,
            model_name,
            last,
            cooldown,
        )
        return Outcome.COOLDOWN
    # Alerts racing past the tag check share one cause per cooldown window, so duplicate
    # detection keeps them to one training.
    window = int(now.timestamp() // max(cooldown.total_seconds(), 1))
    command = TrainModel(model_name=model_name, reason="drift", parameters={})
    svc.bus.send(start(svc, command, cause=f"drift:{model_name}:{window}"))
    svc.registry.set_model_tag(model_name, domain.LAST_DRIFT_TRAINING, now.isoformat())
    svc.events.publish(LifecycleEvent.DRIFT_DETECTED, model_name, {"alert_id": alert_id})
    return Outcome.TRAIN


def drift_alert(alert: DriftAlert, svc: Services) -> Outcome:
    """Our own drift CloudEvent."""
    return drift_detected(alert.model_name, alert.event_id, svc)


def code_pushed(push: GithubPush, svc: Services) -> list[str]:
    """A push to a mapped branch that touches training code → retrain in that branch's environment."""
    if push.deleted or push.branch is None:
        log.info("ignored push %s: branch deletion or tag", push.delivery_id)
        return []
    environment = svc.settings.branch_environments.get(push.branch)
    if environment is None:
        log.info("ignored push %s: branch %r maps to no environment", push.delivery_id, push.branch)
        return []
    from shared.webhooks import path_matches

    started = []
    for model in svc.catalogue.models.values():
        if model.kind != "trained":
            continue
        patterns = model.training.code_paths or svc.settings.code_paths
        if not any(path_matches(p, patterns) for p in push.changed_paths):
            continue
        if not svc.registry.model_tags(model.name).get(domain.LATEST_DATA):
            log.info("push %s: model %s has no landed data yet; not retrained", push.delivery_id, model.name)
            continue
        command = TrainModel(
            model_name=model.name, reason="code_push", commit_sha=push.commit_sha, repository=push.repository
        )
        svc.bus.send(start(svc, command, cause=f"github:{push.delivery_id}:{model.name}", environment=environment))
        started.append(model.name)
    return started


def run_finished(backend: str, run_id: str, model_name: str, svc: Services, *, event: str = "finished") -> Outcome:
    """A job-completion callback → poll the run now instead of waiting for the next poll.

    The cause names the callback's event, so a run's ``on_start`` and ``on_success`` within the
    duplicate-detection window are two causes, not one.
    """
    model = known_model(svc, model_name)
    if model is None:
        return Outcome.IGNORED
    command = PollRun(model_name=model_name, backend=backend, run_id=run_id, attempt=0)
    svc.bus.send(start(svc, command, cause=f"callback:{backend}:{run_id}:{event}"))
    return Outcome.POLL


# Databricks job notification events that end a run (on_start and the threshold warnings do not).
TERMINAL_JOB_EVENTS = frozenset({"jobs.on_success", "jobs.on_failure"})


def job_notified(
    backend: str, job_references: Sequence[str | None], run_id: str, svc: Services, *, event: str
) -> Outcome:
    """A job notification names the job (id and name), not the model: find the model whose entry runs it."""
    if event not in TERMINAL_JOB_EVENTS:
        log.info("ignored %s notification %s for run %s: the run has not ended", backend, event, run_id)
        return Outcome.IGNORED
    model = next((m for ref in job_references if ref and (m := svc.catalogue.for_job(backend, ref)) is not None), None)
    if model is None:
        named = ", ".join(r for r in job_references if r) or "(none)"
        log.info("ignored %s notification for job %s: no catalogue model runs it", backend, named)
        return Outcome.IGNORED
    return run_finished(backend, run_id, model.name, svc, event=event)


# Azure ML run states that end a run.
FINISHED_RUN_STATES = frozenset({"completed", "failed", "canceled", "cancelled"})


def workspace_event(known: KnownEvent, svc: Services) -> Outcome:
    """An Azure ML workspace event: a registered version → evaluate; an ended run → poll it; drift → retrain.

    A run names its model by the ``signalbox.model`` tag our jobs set (or ``model_name``), else by
    its experiment name.
    """
    if isinstance(known, events.ModelRegistered):
        return new_version(known.model_name, known.model_version, "azureml", svc)
    if isinstance(known, events.RunCompleted | events.RunStatusChanged):
        model = known.tags.get("signalbox.model") or known.tags.get("model_name") or known.experiment_name
        if not model or known.run_status.lower() not in FINISHED_RUN_STATES:
            return Outcome.IGNORED
        return run_finished("azureml", known.run_id, str(model), svc, event=known.run_status.lower())
    if isinstance(known, events.DatasetDriftDetected):
        entry = svc.catalogue.for_drift_monitor(known.data_drift_name)
        if entry is None:
            log.info("ignored drift from monitor %s: no catalogue model lists it", known.data_drift_name)
            return Outcome.IGNORED
        return drift_detected(entry.name, known.event_id, svc)
    return Outcome.IGNORED


def refuse_event(event_id: object, event_type: object, subject: str, reason: str, svc: Services) -> Outcome:
    """An event no redelivery can fix (malformed, unsafe): refuse it once, on the record.

    The id and type are as the event carried them (a malformed event may carry anything).
    """
    log.warning("refused event %s of type %s: %s", event_id, event_type, reason)
    svc.events.publish(
        LifecycleEvent.EVENT_REFUSED,
        subject[:300],
        {"event_id": event_id, "event_type": event_type, "reason": reason},
    )
    return Outcome.REFUSED


def request_approval_decision(
    model_name: str, version: str, approve: bool, who: str, svc: Services, *, reason: str | None = None
) -> Outcome:
    """An approve/reject from a person → the promote queue (serialised per model).

    Approvals of a held model are refused (``ModelHeld``, with the hold's reason); rejections go on.
    """
    model = svc.catalogue.get(model_name)
    current = svc.registry.get_version(model.name, version)
    hold = domain.hold_of(svc.registry.model_tags(model.name)) if approve else None
    if hold is not None:
        raise ModelHeld(
            f"{model_name} is held by {hold.get('by')} since {hold.get('at')}: {hold.get('reason')} "
            f"(release it first: signalbox release {model_name})"
        )
    if current.tags.get(domain.APPROVAL) != Approval.PENDING or domain.stage_of(current) is not Stage.STAGED:
        raise NotAwaitingApproval(
            f"{model_name} v{version} is not waiting for approval "
            f"(stage={current.tags.get(domain.STAGE, 'none')}, approval={current.tags.get(domain.APPROVAL, 'none')})"
        )
    decision: Literal["approved", "rejected"] = "approved" if approve else "rejected"
    command = PromoteVersion(model_name=model_name, version=version, decision=decision, decided_by=who, reason=reason)
    correlation = current.tags.get(domain.CORRELATION_ID)
    envelope = start(svc, command, cause=f"approval:{model_name}:{version}:{decision}")
    if correlation:
        envelope = envelope.model_copy(update={"correlation_id": correlation})
    svc.bus.send(envelope)
    return Outcome(decision)
