"""Handlers: one plain function per inbound event or command, over the ports in ``Services``.

Ingress handlers turn an authenticated event into exactly one command per cause;
pipeline handlers do one step of the lifecycle and send the next command. Every step
is idempotent: a redelivered message finds the registry already moved and does nothing.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from shared import domain
from shared.contracts import (
    DeployVersion,
    Envelope,
    EvaluateVersion,
    PollRun,
    PromoteVersion,
    TrainModel,
)
from shared.domain import Approval, Stage
from shared.errors import NotAwaitingApproval, PermanentError, TransientError, UnknownModel
from shared.ports import Deployment, JobRequest, ScoringFrame

if TYPE_CHECKING:
    from shared.catalogue import ModelEntry
    from shared.events import BlobCreated, DriftAlert
    from shared.services import Services
    from shared.webhooks import GithubPush

log = logging.getLogger("signalbox")


def _start(svc: Services, command: object, cause: str, environment: str | None = None) -> Envelope:
    return Envelope.start(command, cause=cause, environment=environment or svc.settings.environment, now=svc.clock())


def _known_model(svc: Services, name: str) -> ModelEntry | None:
    try:
        return svc.catalogue.get(name)
    except UnknownModel as exc:
        log.warning("ignored: %s", exc)
        return None


# -- ingress -----------------------------------------------------------------------------------


def land_blob(blob: BlobCreated, svc: Services) -> str:
    """New data in the landing zone → train the model whose prefix holds it."""
    model = svc.catalogue.for_blob(blob.container, blob.blob_path)
    if model is None:
        log.info("ignored blob %s/%s: no catalogue entry has that container and prefix", blob.container, blob.blob_path)
        return "ignored"
    try:
        size = svc.landing.size(blob.url)
        problem = "the file is empty" if size == 0 else None
    except OSError as exc:
        problem = f"the file cannot be read: {exc}"
    if problem:
        reason = domain.record(data_uri=blob.url, reason=problem, event_id=blob.event_id, at=svc.clock())
        svc.registry.set_model_tag(model.name, domain.LAST_REFUSAL, reason)
        svc.events.publish("DataRefused", model.name, {"data_uri": blob.url, "reason": problem})
        log.warning("refused %s for model %s: %s", blob.url, model.name, problem)
        return "refused"
    # Drift and code pushes retrain on the newest landed data. Each landing's training records it
    # (a registry write per event capped ingest near 330 events/s); the first landing this worker
    # sees records it at once, so a drift alert that follows finds data before any training ran.
    if model.name not in svc.landed:
        svc.registry.set_model_tag(model.name, domain.LATEST_DATA, blob.url)
        svc.landed.add(model.name)
    svc.events.publish("DataLanded", model.name, {"data_uri": blob.url, "bytes": size})
    svc.bus.send(
        _start(
            svc,
            TrainModel(model_name=model.name, reason="landing", data_uri=blob.url),
            cause=f"eventgrid:{blob.event_id}",
        )
    )
    return "train"


def new_version(model_name: str, version: str, source: str, svc: Services, *, environment: str | None = None) -> str:
    """A new registered version (webhook or Event Grid) → evaluate it, once per version."""
    model = _known_model(svc, model_name)
    if model is None or model.kind != "trained":
        return "ignored"
    command = EvaluateVersion(model_name=model_name, version=version, source=source)
    # The cause is the version itself, so every announcement of it maps to one message id; and
    # the lifecycle (environment, correlation) is the one the training job tagged on the version.
    try:
        tags = svc.registry.get_version(model_name, version).tags
    except LookupError:
        tags = {}
    envelope = _start(
        svc, command, cause=f"version:{model_name}:{version}", environment=environment or tags.get(domain.ENVIRONMENT)
    )
    if tags.get(domain.CORRELATION_ID):
        envelope = envelope.model_copy(update={"correlation_id": tags[domain.CORRELATION_ID]})
    svc.bus.send(envelope)
    return "evaluate"


def drift_detected(model_name: str, alert_id: str, svc: Services) -> str:
    """A drift alert → retrain, at most once per cooldown however many alerts arrive."""
    model = _known_model(svc, model_name)
    if model is None:
        return "ignored"
    now = svc.clock()
    cooldown = model.drift.cooldown
    tags = svc.registry.model_tags(model_name)
    if model.kind == "trained" and not tags.get(domain.LATEST_DATA):
        log.info("drift alert %s for %s ignored: no data has landed to retrain on", alert_id, model_name)
        return "no-data"
    last = tags.get(domain.LAST_DRIFT_TRAINING)
    if domain.in_cooldown(last, now, cooldown):
        log.info(
            "drift alert %s for %s ignored: a drift training started at %s (cooldown %s)",
            alert_id,
            model_name,
            last,
            cooldown,
        )
        return "cooldown"
    # Alerts racing past the tag check share one cause per cooldown window, so duplicate
    # detection keeps them to one training.
    window = int(now.timestamp() // max(cooldown.total_seconds(), 1))
    command = TrainModel(model_name=model_name, reason="drift", parameters={})
    svc.bus.send(_start(svc, command, cause=f"drift:{model_name}:{window}"))
    svc.registry.set_model_tag(model_name, domain.LAST_DRIFT_TRAINING, now.isoformat())
    svc.events.publish("DriftDetected", model_name, {"alert_id": alert_id})
    return "train"


def drift_alert(alert: DriftAlert, svc: Services) -> str:
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
        svc.bus.send(_start(svc, command, cause=f"github:{push.delivery_id}:{model.name}", environment=environment))
        started.append(model.name)
    return started


def run_finished(backend: str, run_id: str, model_name: str, svc: Services) -> str:
    """A job-completion callback → poll the run now instead of waiting for the next poll."""
    model = _known_model(svc, model_name)
    if model is None:
        return "ignored"
    command = PollRun(model_name=model_name, backend=backend, run_id=run_id, attempt=0)
    svc.bus.send(_start(svc, command, cause=f"callback:{backend}:{run_id}"))
    return "poll"


def job_notified(backend: str, job_reference: str, run_id: str, svc: Services) -> str:
    """A job notification names the job, not the model: find the model whose catalogue entry runs it."""
    model = svc.catalogue.for_job(backend, job_reference)
    if model is None:
        log.info("ignored %s notification for job %s: no catalogue model runs it", backend, job_reference)
        return "ignored"
    return run_finished(backend, run_id, model.name, svc)


def request_approval_decision(model_name: str, version: str, approve: bool, who: str, svc: Services) -> str:
    """An approve/reject from a person → the promote queue (serialised per model)."""
    model = svc.catalogue.get(model_name)
    current = svc.registry.get_version(model.name, version)
    if current.tags.get(domain.APPROVAL) != Approval.PENDING or domain.stage_of(current) is not Stage.STAGED:
        raise NotAwaitingApproval(
            f"{model_name} v{version} is not waiting for approval "
            f"(stage={current.tags.get(domain.STAGE, 'none')}, approval={current.tags.get(domain.APPROVAL, 'none')})"
        )
    decision: Literal["approved", "rejected"] = "approved" if approve else "rejected"
    command = PromoteVersion(model_name=model_name, version=version, decision=decision, decided_by=who)
    correlation = current.tags.get(domain.CORRELATION_ID)
    envelope = _start(svc, command, cause=f"approval:{model_name}:{version}:{decision}")
    if correlation:
        envelope = envelope.model_copy(update={"correlation_id": correlation})
    svc.bus.send(envelope)
    return decision


# -- pipeline ------------------------------------------------------------------------------------


def train(envelope: Envelope, svc: Services) -> str:
    """Launch the model's training job (scoring job for rule-based models) and schedule a poll."""
    command = envelope.command
    assert isinstance(command, TrainModel)
    model = svc.catalogue.get(command.model_name)
    compute = svc.compute_for(model)
    data_uri = command.data_uri or svc.registry.model_tags(model.name).get(domain.LATEST_DATA)
    if data_uri is None and model.kind == "trained":
        raise PermanentError(f"model {model.name}: no data has landed yet, so there is nothing to train on")
    if command.reason == "landing" and command.data_uri:
        svc.registry.set_model_tag(model.name, domain.LATEST_DATA, command.data_uri)
    commit = command.commit_sha or svc.code_version.get("commit_sha")
    repository = command.repository or svc.code_version.get("repository")
    tags = {
        domain.CORRELATION_ID: envelope.correlation_id,
        domain.ENVIRONMENT: envelope.environment,
        "signalbox.reason": command.reason,
    }
    if commit:
        tags[domain.COMMIT_SHA] = commit
    if repository:
        tags[domain.REPOSITORY] = repository
    if data_uri:
        tags[domain.DATA_URI] = data_uri
    job = JobRequest(
        model_name=model.name,
        purpose="score" if model.kind == "rule_based" else "train",
        job_reference=model.training.job,
        data_uri=data_uri,
        parameters={**model.training.parameters, **command.parameters},
        tags=tags,
        idempotency_key=envelope.message_id,
    )
    run_id = compute.launch(job)
    log.info("launched %s job %s for %s on %s", job.purpose, run_id, model.name, compute.backend)
    svc.events.publish(
        "TrainingStarted",
        model.name,
        {"run_id": run_id, "backend": compute.backend, "purpose": job.purpose, "reason": command.reason},
    )
    poll = PollRun(
        model_name=model.name,
        backend=compute.backend,
        run_id=run_id,
        attempt=0,
        commit_sha=commit,
        repository=repository,
    )
    delay = domain.backoff(0, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
    svc.bus.send(envelope.follow(poll, cause=f"poll:{run_id}:0", now=svc.clock()), scheduled_at=svc.clock() + delay)
    return run_id


def poll_run(envelope: Envelope, svc: Services) -> str:
    """Check a job; reschedule with backoff while it runs, evaluate what it registered when done."""
    command = envelope.command
    assert isinstance(command, PollRun)
    model = svc.catalogue.get(command.model_name)
    compute = svc.compute[command.backend] if command.backend in svc.compute else svc.compute_for(model)
    status = compute.status(command.run_id)
    if not status.finished:
        attempt = command.attempt + 1
        if attempt >= svc.settings.poll_max_attempts:
            compute.cancel(command.run_id)
            _record_failure(svc, model.name, command.run_id, f"gave up after {attempt} polls; job cancelled")
            return "gave-up"
        delay = domain.backoff(attempt, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
        follow = command.model_copy(update={"attempt": attempt})
        svc.bus.send(
            envelope.follow(follow, cause=f"poll:{command.run_id}:{attempt}", now=svc.clock()),
            scheduled_at=svc.clock() + delay,
        )
        return status.state
    if status.state != "succeeded":
        _record_failure(svc, model.name, command.run_id, f"job {status.state}: {status.message or 'no message'}")
        return status.state
    if model.kind == "rule_based":
        svc.events.publish("ScoringCompleted", model.name, {"run_id": command.run_id, **status.outputs})
        return "scored"
    versions = _registered_versions(svc, model.name, status.outputs)
    if not versions:
        _record_failure(svc, model.name, command.run_id, "job succeeded but registered no model version")
        return "no-version"
    svc.events.publish("TrainingSucceeded", model.name, {"run_id": command.run_id, "versions": versions})
    for version in versions:
        evaluate = EvaluateVersion(model_name=model.name, version=version, source=f"job:{command.run_id}")
        svc.bus.send(envelope.follow(evaluate, cause=f"version:{model.name}:{version}", now=svc.clock()))
    return "evaluate"


def _registered_versions(svc: Services, model_name: str, outputs: Mapping[str, str]) -> list[str]:
    if outputs.get("model_version"):
        return [outputs["model_version"]]
    run = outputs.get("mlflow_run_id")
    if not run:
        return []
    return [v.version for v in svc.registry.versions_of_run(run) if v.model_name == model_name]


def _record_failure(svc: Services, model_name: str, run_id: str, reason: str) -> None:
    svc.registry.set_model_tag(
        model_name, domain.LAST_FAILURE, domain.record(run_id=run_id, reason=reason, at=svc.clock())
    )
    svc.events.publish("TrainingFailed", model_name, {"run_id": run_id, "reason": reason})
    log.warning("model %s run %s: %s", model_name, run_id, reason)


def evaluate(envelope: Envelope, svc: Services) -> str:
    """Score the challenger and the champion on the same data; record the verdict on the version."""
    command = envelope.command
    assert isinstance(command, EvaluateVersion)
    model = svc.catalogue.get(command.model_name)
    if model.evaluation is None:
        return "not-evaluated"
    challenger = svc.registry.get_version(model.name, command.version)
    if domain.DECISION in challenger.tags:
        # An earlier delivery recorded the verdict and may have died before sending it on: send it
        # again (the same message id, so duplicate detection drops it if it did get through).
        won = domain.read_record(challenger.tags[domain.DECISION]).get("won") is True
        log.info("%s v%s was already evaluated; its verdict goes on to promotion", model.name, command.version)
        _send_promote(svc, envelope, model.name, command.version, won)
        return "already-evaluated"
    champion_version = svc.registry.alias_version(model.name, domain.CHAMPION)
    if champion_version == command.version:
        return "is-champion"
    spec = model.evaluation
    metrics = list(dict.fromkeys([spec.primary_metric, *spec.guardrails]))
    challenger_scores = svc.evaluator.score(model.name, command.version, spec.dataset, metrics)
    champion_scores = (
        svc.evaluator.score(model.name, champion_version, spec.dataset, metrics) if champion_version else None
    )
    verdict = domain.judge(spec, challenger_scores, champion_scores, champion_version)
    tags = {domain.DECISION: verdict.to_tag(), domain.CORRELATION_ID: envelope.correlation_id}
    svc.registry.set_version_tags(model.name, command.version, tags)
    log.info("%s v%s %s: %s", model.name, command.version, "won" if verdict.won else "lost", verdict.reason)
    svc.events.publish(
        "VersionEvaluated", model.name, {"version": command.version, "won": verdict.won, "reason": verdict.reason}
    )
    _send_promote(svc, envelope, model.name, command.version, verdict.won)
    return "won" if verdict.won else "lost"


def _send_promote(svc: Services, envelope: Envelope, model_name: str, version: str, won: bool) -> None:
    promote = PromoteVersion(model_name=model_name, version=version, decision="won" if won else "lost")
    svc.bus.send(envelope.follow(promote, now=svc.clock()))


def promote(envelope: Envelope, svc: Services) -> str:
    """Move stage tags for a verdict or an approval decision (one model at a time, by session)."""
    command = envelope.command
    assert isinstance(command, PromoteVersion)
    model = svc.catalogue.get(command.model_name)
    version = svc.registry.get_version(model.name, command.version)
    stage = domain.stage_of(version)
    if command.decision == "lost":
        svc.events.publish("ChallengerLost", model.name, {"version": command.version})
        return "lost"
    if command.decision == "won":
        if stage in (Stage.PRODUCTION, Stage.SURPASSED, Stage.UNSTAGED):
            return f"already-{stage}"
        if stage is None:
            for staged in svc.registry.versions_with_tag(model.name, domain.STAGE, Stage.STAGED):
                if staged.version == version.version:
                    continue
                if not domain.beats(version, staged):
                    log.info(
                        "%s v%s won but staged v%s scored better; v%s stays unstaged",
                        model.name,
                        version.version,
                        staged.version,
                        version.version,
                    )
                    svc.registry.set_version_tags(
                        model.name, version.version, {"signalbox.outcome": f"lost to staged v{staged.version}"}
                    )
                    return "kept-staged"
                svc.registry.set_version_tags(
                    model.name,
                    staged.version,
                    {domain.STAGE: Stage.UNSTAGED, "signalbox.outcome": f"replaced by v{version.version}"},
                )
            svc.registry.set_version_tags(model.name, version.version, {domain.STAGE: Stage.STAGED})
            svc.registry.set_alias(model.name, domain.CHALLENGER, version.version)
            svc.events.publish("VersionStaged", model.name, {"version": version.version})
        elif svc.registry.alias_version(model.name, domain.CHALLENGER) != version.version:
            # A redelivery: the earlier one died between the stage tag and the alias.
            svc.registry.set_alias(model.name, domain.CHALLENGER, version.version)
        policy = model.approval_for(envelope.environment)
        current = version.tags.get(domain.APPROVAL)
        if policy == "manual" and current not in (Approval.APPROVED, Approval.AUTO):
            if current != Approval.PENDING:
                svc.registry.set_version_tags(model.name, version.version, {domain.APPROVAL: Approval.PENDING})
                svc.events.publish("ApprovalRequested", model.name, {"version": version.version})
            return "pending-approval"
        if current not in (Approval.APPROVED, Approval.AUTO):
            svc.registry.set_version_tags(model.name, version.version, {domain.APPROVAL: Approval.AUTO})
            svc.events.publish(
                "VersionApproved",
                model.name,
                {"version": version.version, "by": f"auto ({envelope.environment} policy)"},
            )
        return _send_deploy(svc, envelope, model.name, version.version)
    if stage is not Stage.STAGED:
        log.info("%s on %s v%s ignored: the version is %s", command.decision, model.name, version.version, stage)
        return "ignored"
    if command.decision == "rejected":
        svc.registry.set_version_tags(
            model.name,
            version.version,
            {
                domain.APPROVAL: Approval.REJECTED,
                domain.STAGE: Stage.UNSTAGED,
                domain.APPROVED_BY: command.decided_by or "unknown",
            },
        )
        _drop_challenger(svc, model.name, version.version)
        svc.events.publish("ApprovalRejected", model.name, {"version": version.version, "by": command.decided_by})
        return "rejected"
    svc.registry.set_version_tags(
        model.name,
        version.version,
        {domain.APPROVAL: Approval.APPROVED, domain.APPROVED_BY: command.decided_by or "unknown"},
    )
    svc.events.publish("VersionApproved", model.name, {"version": version.version, "by": command.decided_by})
    return _send_deploy(svc, envelope, model.name, version.version)


def _send_deploy(svc: Services, envelope: Envelope, model_name: str, version: str) -> str:
    deploy_command = DeployVersion(model_name=model_name, version=version)
    svc.bus.send(envelope.follow(deploy_command, cause=f"deploy:{model_name}:{version}", now=svc.clock()))
    return "deploy"


def _drop_challenger(svc: Services, model_name: str, version: str) -> None:
    """Remove the challenger alias if it points at this version."""
    if svc.registry.alias_version(model_name, domain.CHALLENGER) == version:
        svc.registry.delete_alias(model_name, domain.CHALLENGER)


def _local_dataset(dataset: str) -> Path:
    parts = urlsplit(dataset)
    return Path(unquote(parts.path)) if parts.scheme == "file" else Path(dataset)


def smoke_frame(dataset: Path, rows: int = 5) -> ScoringFrame:
    """A few rows of the evaluation data (features only) for a smoke request."""
    with dataset.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        keep = [i for i, name in enumerate(header) if name != "target"]
        data = []
        for row, _ in zip(reader, range(rows), strict=False):
            data.append(tuple(float(row[i]) for i in keep))
    return ScoringFrame(tuple(header[i] for i in keep), tuple(data))


def deploy(envelope: Envelope, svc: Services) -> str:
    """Blue/green deploy of an approved staged version; smoke test before traffic moves, else roll back."""
    command = envelope.command
    assert isinstance(command, DeployVersion)
    model = svc.catalogue.get(command.model_name)
    version = svc.registry.get_version(model.name, command.version)
    stage = domain.stage_of(version)
    if stage is Stage.PRODUCTION:
        # An earlier delivery may have died between the stage tag and the aliases: finish them.
        if svc.registry.alias_version(model.name, domain.CHAMPION) != version.version:
            svc.registry.set_alias(model.name, domain.CHAMPION, version.version)
        _drop_challenger(svc, model.name, version.version)
        return "already-production"
    if stage is not Stage.STAGED or version.tags.get(domain.APPROVAL) not in (Approval.APPROVED, Approval.AUTO):
        log.info(
            "deploy of %s v%s skipped: stage=%s approval=%s",
            model.name,
            command.version,
            stage,
            version.tags.get(domain.APPROVAL),
        )
        if stage is Stage.UNSTAGED:  # rolled back or replaced: an earlier delivery may have died before the alias
            _drop_challenger(svc, model.name, version.version)
        return "skipped"
    if model.deployment is None:
        raise PermanentError(f"model {model.name}: the catalogue entry has no deployment section")
    endpoint = model.deployment.endpoint
    if model.deployment.mode == "batch":
        _make_production(svc, model.name, version.version, envelope, {"mode": "batch", "endpoint": endpoint})
        scoring = JobRequest(
            model_name=model.name,
            purpose="score",
            job_reference=model.deployment.scoring_job or "",
            data_uri=version.tags.get(domain.DATA_URI),
            tags={domain.CORRELATION_ID: envelope.correlation_id},
            idempotency_key=f"{envelope.message_id}:batch",
        )
        run_id = svc.compute_for(model).launch(scoring)
        svc.events.publish("BatchScoringStarted", model.name, {"version": version.version, "run_id": run_id})
        return "batch"
    previous = svc.serving.current(endpoint)
    if previous is not None and previous.version == version.version and not command.candidate_slot:
        # An earlier delivery moved the traffic and failed before recording it: record it now.
        # (A readiness check may also see the version routed: a new cloud endpoint sends all its
        # traffic to its first deployment, which must still pass the smoke test below.)
        url = svc.serving.endpoint_url(endpoint)
        deployment: dict[str, object] = {"mode": "real_time", "endpoint": endpoint, "url": url, "slot": previous.slot}
        _make_production(svc, model.name, version.version, envelope, deployment)
        return "deployed"
    if command.candidate_slot and command.candidate_url:
        candidate = Deployment(endpoint, model.name, version.version, command.candidate_slot, command.candidate_url)
    else:
        try:
            candidate = svc.serving.start(endpoint, model.name, version.version)
        except TransientError:
            raise
        except Exception as exc:
            return _rolled_back(svc, model.name, version.version, endpoint, f"the new deployment did not start: {exc}")
    readiness = svc.serving.readiness(candidate)
    if readiness.state == "failed" or (
        readiness.state == "pending" and command.attempt + 1 >= svc.settings.poll_max_attempts
    ):
        svc.serving.stop(candidate)
        why = readiness.message or f"not ready after {command.attempt + 1} checks"
        return _rolled_back(
            svc, model.name, version.version, endpoint, f"the new deployment did not become ready: {why}"
        )
    if readiness.state == "pending":
        attempt = command.attempt + 1
        wait = command.model_copy(
            update={"candidate_slot": candidate.slot, "candidate_url": candidate.url, "attempt": attempt}
        )
        delay = domain.backoff(attempt, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
        svc.bus.send(
            envelope.follow(wait, cause=f"deploy:{model.name}:{version.version}:{attempt}", now=svc.clock()),
            scheduled_at=svc.clock() + delay,
        )
        return "starting"
    try:
        dataset = _local_dataset(model.evaluation.dataset) if model.evaluation else None
        frame = smoke_frame(dataset) if dataset else ScoringFrame((), ())
        svc.serving.invoke(candidate, frame)
    except TransientError:
        raise
    except Exception as exc:
        svc.serving.stop(candidate)
        return _rolled_back(svc, model.name, version.version, endpoint, f"smoke test failed: {exc}")
    # Promotion runs on its own queue: a newer winner may have replaced this version meanwhile.
    if domain.stage_of(svc.registry.get_version(model.name, version.version)) is not Stage.STAGED:
        svc.serving.stop(candidate)
        log.info("deploy of %s v%s abandoned: replaced while it was starting", model.name, version.version)
        return "superseded"
    svc.serving.route(endpoint, candidate)
    if previous is not None and previous.slot != candidate.slot:
        svc.serving.stop(previous)
    url = svc.serving.endpoint_url(endpoint)
    _make_production(
        svc,
        model.name,
        version.version,
        envelope,
        {"mode": "real_time", "endpoint": endpoint, "url": url, "slot": candidate.slot},
    )
    return "deployed"


def _make_production(
    svc: Services, model_name: str, version: str, envelope: Envelope, deployment: dict[str, object]
) -> None:
    for old in svc.registry.versions_with_tag(model_name, domain.STAGE, Stage.PRODUCTION):
        if old.version != version:
            svc.registry.set_version_tags(
                model_name,
                old.version,
                {domain.STAGE: Stage.SURPASSED, "signalbox.outcome": f"surpassed by v{version}"},
            )
    tags = {
        domain.STAGE: Stage.PRODUCTION,
        domain.DEPLOYMENT: domain.record(status="deployed", at=svc.clock(), **deployment),
    }
    current = svc.registry.get_version(model_name, version)
    for key in (domain.COMMIT_SHA, domain.REPOSITORY):
        value = current.tags.get(key) or svc.code_version.get(key.removeprefix("signalbox."))
        if value:
            tags[key] = value
    svc.registry.set_version_tags(model_name, version, tags)
    svc.registry.set_alias(model_name, domain.CHAMPION, version)
    _drop_challenger(svc, model_name, version)
    svc.events.publish("VersionDeployed", model_name, {"version": version, **deployment})
    log.info("%s v%s is in production (%s)", model_name, version, deployment)


def _rolled_back(svc: Services, model_name: str, version: str, endpoint: str, reason: str) -> str:
    # Unstaged, so the next winner is compared with the champion, not with a version that cannot serve.
    svc.registry.set_version_tags(
        model_name,
        version,
        {
            domain.DEPLOYMENT: domain.record(status="rolled_back", endpoint=endpoint, reason=reason, at=svc.clock()),
            domain.STAGE: Stage.UNSTAGED,
            "signalbox.outcome": "deployment rolled back",
        },
    )
    _drop_challenger(svc, model_name, version)
    svc.events.publish("DeploymentRolledBack", model_name, {"version": version, "reason": reason})
    log.warning("deploy of %s v%s rolled back: %s", model_name, version, reason)
    return "rolled-back"
