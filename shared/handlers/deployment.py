"""Deployment: blue/green with a smoke test before traffic moves; roll back what cannot serve."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from shared import domain
from shared.contracts import DeployVersion, Envelope
from shared.domain import Approval, LifecycleEvent, Outcome, Stage
from shared.errors import DeploymentFailed, PermanentError
from shared.handlers.common import drop_challenger, log
from shared.ports import Deployment, JobRequest, ScoringFrame

if TYPE_CHECKING:
    from shared.services import Services


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


def deploy(envelope: Envelope, svc: Services) -> Outcome:
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
        drop_challenger(svc, model.name, version.version)
        return Outcome.ALREADY_PRODUCTION
    if stage is not Stage.STAGED or version.tags.get(domain.APPROVAL) not in (Approval.APPROVED, Approval.AUTO):
        log.info(
            "deploy of %s v%s skipped: stage=%s approval=%s",
            model.name,
            command.version,
            stage,
            version.tags.get(domain.APPROVAL),
        )
        if stage is Stage.UNSTAGED:  # rolled back or replaced: an earlier delivery may have died before the alias
            drop_challenger(svc, model.name, version.version)
        return Outcome.SKIPPED
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
        svc.events.publish(
            LifecycleEvent.BATCH_SCORING_STARTED, model.name, {"version": version.version, "run_id": run_id}
        )
        return Outcome.BATCH
    previous = svc.serving.current(endpoint)
    if previous is not None and previous.version == version.version and not command.candidate_slot:
        # An earlier delivery moved the traffic and failed before recording it: record it now.
        # (A readiness check may also see the version routed: a new cloud endpoint sends all its
        # traffic to its first deployment, which must still pass the smoke test below.)
        url = svc.serving.endpoint_url(endpoint)
        deployment: dict[str, object] = {"mode": "real_time", "endpoint": endpoint, "url": url, "slot": previous.slot}
        _make_production(svc, model.name, version.version, envelope, deployment)
        return Outcome.DEPLOYED
    if command.candidate_slot and command.candidate_url:
        candidate = Deployment(endpoint, model.name, version.version, command.candidate_slot, command.candidate_url)
    else:
        try:
            candidate = svc.serving.start(endpoint, model.name, version.version)
        except DeploymentFailed as exc:  # configuration errors (PermanentError) dead-letter, tags unchanged
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
        return Outcome.STARTING
    try:
        dataset = _local_dataset(model.evaluation.dataset) if model.evaluation else None
        frame = smoke_frame(dataset) if dataset else ScoringFrame((), ())
        svc.serving.invoke(candidate, frame)
    except DeploymentFailed as exc:
        svc.serving.stop(candidate)
        return _rolled_back(svc, model.name, version.version, endpoint, f"smoke test failed: {exc}")
    # Promotion runs on its own queue: a newer winner may have replaced this version meanwhile.
    if domain.stage_of(svc.registry.get_version(model.name, version.version)) is not Stage.STAGED:
        svc.serving.stop(candidate)
        log.info("deploy of %s v%s abandoned: replaced while it was starting", model.name, version.version)
        return Outcome.SUPERSEDED
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
    return Outcome.DEPLOYED


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
    drop_challenger(svc, model_name, version)
    svc.events.publish(LifecycleEvent.VERSION_DEPLOYED, model_name, {"version": version, **deployment})
    log.info("%s v%s is in production (%s)", model_name, version, deployment)


def _rolled_back(svc: Services, model_name: str, version: str, endpoint: str, reason: str) -> Outcome:
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
    drop_challenger(svc, model_name, version)
    svc.events.publish(LifecycleEvent.DEPLOYMENT_ROLLED_BACK, model_name, {"version": version, "reason": reason})
    log.warning("deploy of %s v%s rolled back: %s", model_name, version, reason)
    return Outcome.ROLLED_BACK
