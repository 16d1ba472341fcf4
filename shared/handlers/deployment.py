"""Deployment: blue/green with a smoke test before traffic moves; roll back what cannot serve.

The deploy queue carries two commands, both through ``_blue_green``: a promotion's ``DeployVersion``
and an operator's ``RollbackModel`` (redeploy a version that served before).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from shared import domain, history
from shared.contracts import DeployVersion, Envelope, RollbackModel
from shared.domain import Approval, LifecycleEvent, Outcome, Stage
from shared.errors import DeploymentFailed, PermanentError, TransientError
from shared.handlers.common import drop_challenger, log
from shared.ports import Deployment, JobRequest, ModelVersion, ScoringFrame

if TYPE_CHECKING:
    from shared.catalogue import ModelEntry
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
    """The deploy queue's handler: a promotion's deployment or an operator's rollback, one blue/green path."""
    if isinstance(envelope.command, RollbackModel):
        return rollback(envelope, svc)
    if isinstance(envelope.command, DeployVersion) and envelope.command.retire_slot:
        return retire(envelope, svc)
    return deploy_version(envelope, svc)


def deploy_version(envelope: Envelope, svc: Services) -> Outcome:
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
    # A hold stops deployments from starting; one already started (its readiness checks) finishes.
    hold = None if command.candidate_slot else domain.hold_of(svc.registry.model_tags(model.name))
    if hold is not None:
        wait_for_hold(svc, envelope, model.name, version, hold)
        return Outcome.HELD
    if model.deployment is None:
        raise PermanentError(f"model {model.name}: the catalogue entry has no deployment section")
    endpoint = model.deployment.endpoint
    if model.deployment.mode == "batch":
        _make_production(svc, model.name, version.version, envelope, {"mode": "batch", "endpoint": endpoint})
        _launch_batch(svc, envelope, model, version)
        return Outcome.BATCH

    def still_staged() -> bool:
        # Promotion runs on its own queue: a newer winner may have replaced this version meanwhile.
        if domain.stage_of(svc.registry.get_version(model.name, version.version)) is Stage.STAGED:
            return True
        log.info("deploy of %s v%s abandoned: replaced while it was starting", model.name, version.version)
        return False

    return _blue_green(
        svc,
        envelope,
        endpoint,
        model.name,
        version.version,
        command,
        checks_cause=f"deploy:{model.name}:{version.version}",
        still_wanted=still_staged,
        succeed=lambda deployment: _make_production(svc, model.name, version.version, envelope, deployment),
        fail=lambda why: _rolled_back(svc, envelope, model.name, version.version, endpoint, why),
    )


def _launch_batch(svc: Services, envelope: Envelope, model: ModelEntry, version: ModelVersion) -> None:
    assert model.deployment is not None
    scoring = JobRequest(
        model_name=model.name,
        purpose="score",
        job_reference=model.deployment.scoring_job or "",
        data_uri=version.tags.get(domain.DATA_URI),
        tags={domain.CORRELATION_ID: envelope.correlation_id},
        idempotency_key=f"{envelope.message_id}:batch",
    )
    run_id = svc.compute_for(model).launch(scoring)
    svc.events.publish(LifecycleEvent.BATCH_SCORING_STARTED, model.name, {"version": version.version, "run_id": run_id})


def _blue_green(
    svc: Services,
    envelope: Envelope,
    endpoint: str,
    model_name: str,
    version: str,
    command: DeployVersion | RollbackModel,
    *,
    checks_cause: str,
    still_wanted: Callable[[], bool],
    succeed: Callable[[dict[str, object]], None],
    fail: Callable[[str], Outcome],
) -> Outcome:
    """Start ``version`` in the idle slot, wait for it (scheduled checks), smoke-test it, route, stop the old.

    ``succeed`` records the version as serving; ``fail(why)`` records a version that cannot serve
    (the endpoint's traffic never moved); ``still_wanted`` is asked once more before traffic moves.
    """
    previous = svc.serving.current(endpoint)
    if previous is not None and previous.version == version and not command.candidate_slot:
        # An earlier delivery moved the traffic and failed before recording it: record it now.
        # (A readiness check may also see the version routed: a new cloud endpoint sends all its
        # traffic to its first deployment, which must still pass the smoke test below.)
        url = svc.serving.endpoint_url(endpoint)
        left = _served_before(svc, model_name, version, endpoint, previous.slot)  # before succeed moves the tags
        succeed({"mode": "real_time", "endpoint": endpoint, "url": url, "slot": previous.slot})
        for old in left:  # the delivery that moved the traffic died before stopping it
            _retire_later(svc, envelope, old, "the traffic moved in an earlier delivery")
        return Outcome.DEPLOYED
    if command.candidate_slot and command.candidate_url:
        candidate = Deployment(endpoint, model_name, version, command.candidate_slot, command.candidate_url)
    else:
        try:
            candidate = svc.serving.start(endpoint, model_name, version)
        except DeploymentFailed as exc:  # configuration errors (PermanentError) dead-letter, tags unchanged
            return fail(f"the new deployment did not start: {exc}")
    readiness = svc.serving.readiness(candidate)
    if readiness.state == "failed" or (
        readiness.state == "pending" and command.attempt + 1 >= svc.settings.poll_max_attempts
    ):
        svc.serving.stop(candidate)
        why = readiness.message or f"not ready after {command.attempt + 1} checks"
        return fail(f"the new deployment did not become ready: {why}")
    if readiness.state == "pending":
        attempt = command.attempt + 1
        wait = command.model_copy(
            update={"candidate_slot": candidate.slot, "candidate_url": candidate.url, "attempt": attempt}
        )
        delay = domain.backoff(attempt, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
        svc.bus.send(
            envelope.follow(wait, cause=f"{checks_cause}:{attempt}", now=svc.clock()),
            scheduled_at=svc.clock() + delay,
        )
        return Outcome.STARTING
    try:
        model = svc.catalogue.get(model_name)
        dataset = _local_dataset(model.evaluation.dataset) if model.evaluation else None
        frame = smoke_frame(dataset) if dataset else ScoringFrame((), ())
        svc.serving.invoke(candidate, frame)
    except DeploymentFailed as exc:
        svc.serving.stop(candidate)
        return fail(f"smoke test failed: {exc}")
    if not still_wanted():
        svc.serving.stop(candidate)
        return Outcome.SUPERSEDED
    svc.serving.route(endpoint, candidate)
    if previous is not None and previous.slot != candidate.slot:
        left = [previous]
    else:  # an earlier delivery moved the traffic here (a readiness check's): what served is in the registry
        left = _served_before(svc, model_name, version, endpoint, candidate.slot)
    try:
        url = svc.serving.endpoint_url(endpoint)
        succeed({"mode": "real_time", "endpoint": endpoint, "url": url, "slot": candidate.slot})
    finally:
        # Even when recording fails: its retry finds the traffic moved and no longer knows the old one.
        for old in left:
            if old is previous:
                _retire(svc, envelope, old)
            else:
                _retire_later(svc, envelope, old, "the traffic moved in an earlier delivery")
    return Outcome.DEPLOYED


def _retire(svc: Services, envelope: Envelope, old: Deployment) -> None:
    """Stop the deployment the traffic left; if the platform cannot yet (a config update still
    applying), stop it later from a scheduled message instead of leaving it running."""
    try:
        svc.serving.stop(old)
    except TransientError as exc:
        _retire_later(svc, envelope, old, str(exc))


def _retire_later(svc: Services, envelope: Envelope, old: Deployment, why: str) -> None:
    """Stop ``old`` from a scheduled message (``retire``: never the serving slot, nor one a newer version may be
    starting in)."""
    later = DeployVersion(
        model_name=old.model_name,
        version=old.version,
        retire_slot=old.slot,
        retire_version=old.version,
        retire_url=old.url,
    )
    delay = domain.retry_delay(1, svc.settings.retry_initial_seconds, svc.settings.retry_max_seconds, 0.5)
    svc.bus.send(
        envelope.follow(later, cause=f"retire:{old.endpoint}:{old.slot}:{old.version}", now=svc.clock()),
        scheduled_at=svc.clock() + delay,
    )
    log.info("%s v%s in slot %s stops later: %s", old.model_name, old.version, old.slot, why)


def _served_before(svc: Services, model_name: str, version: str, endpoint: str, slot: str) -> list[Deployment]:
    """The deployments the registry records for the versions ``version`` replaces (production, or already
    surpassed by it) on ``endpoint`` in another slot than ``slot``."""
    older = [
        v for v in svc.registry.versions_with_tag(model_name, domain.STAGE, Stage.PRODUCTION) if v.version != version
    ]
    if not older:  # an earlier delivery may have moved them to surpassed before it died
        older = [
            v
            for v in svc.registry.versions_with_tag(model_name, domain.STAGE, Stage.SURPASSED)
            if v.tags.get(domain.OUTCOME) == f"surpassed by v{version}"
        ]
    found = []
    for old in older:
        record = domain.read_record(old.tags.get(domain.DEPLOYMENT))
        old_slot, url = record.get("slot"), record.get("url")
        if record.get("endpoint") == endpoint and isinstance(old_slot, str) and old_slot and old_slot != slot:
            found.append(Deployment(endpoint, model_name, old.version, old_slot, str(url or "")))
    return found


def retire(envelope: Envelope, svc: Services) -> Outcome:
    """Stop an old deployment that could not be stopped when the traffic left it (``TransientError``
    while the platform is still busy: retried with backoff by the dispatcher)."""
    command = envelope.command
    assert isinstance(command, DeployVersion) and command.retire_slot and command.retire_version
    old_slot = command.retire_slot
    model = svc.catalogue.get(command.model_name)
    if model.deployment is None:
        return Outcome.SKIPPED
    endpoint = model.deployment.endpoint
    current = svc.serving.current(endpoint)
    if current is not None and current.slot == command.retire_slot:
        return Outcome.SKIPPED  # the slot serves again (a rollback to it)
    if svc.registry.versions_with_tag(model.name, domain.STAGE, Stage.STAGED):
        # A newer version may be starting in that idle slot (its start replaces the old deployment); it
        # may also never start (superseded, rejected): look again later rather than leave the old one up.
        attempt = command.attempt + 1
        if attempt >= svc.settings.retry_max_attempts:
            log.warning("%s v%s in slot %s left: a version stayed staged", model.name, command.retire_version, old_slot)
            return Outcome.SKIPPED
        again = command.model_copy(update={"attempt": attempt})
        delay = domain.retry_delay(attempt, svc.settings.retry_initial_seconds, svc.settings.retry_max_seconds, 0.5)
        svc.bus.send(
            envelope.follow(
                again, cause=f"retire:{endpoint}:{old_slot}:{command.retire_version}:{attempt}", now=svc.clock()
            ),
            scheduled_at=svc.clock() + delay,
        )
        return Outcome.RETRYING
    old = Deployment(endpoint, model.name, command.retire_version, command.retire_slot, command.retire_url or "")
    svc.serving.stop(old)
    return Outcome.RETIRED


def wait_for_hold(
    svc: Services, envelope: Envelope, model_name: str, version: ModelVersion, hold: Mapping[str, object]
) -> None:
    """A staged winner of a held model waits: its decision record and the history say so (once)."""
    decision = domain.read_record(version.tags.get(domain.DECISION))
    if decision.get("held") == hold:
        return
    decision["held"] = dict(hold)
    svc.registry.set_version_tags(model_name, version.version, {domain.DECISION: domain.record(**decision)})
    history.record(
        svc,
        model_name,
        history.Entry(
            "hold",
            f"v{version.version} waits: the model is held",
            why=f"held by {hold.get('by')}: {hold.get('reason')}",
            version=version.version,
            detail={"hold": dict(hold)},
            **history.of(envelope),
        ),
    )
    log.info("%s v%s stays staged: the model is held by %s", model_name, version.version, hold.get("by"))


def _make_production(
    svc: Services,
    model_name: str,
    version: str,
    envelope: Envelope,
    deployment: dict[str, object],
    *,
    who: str = history.SIGNALBOX,
    why: str = "",
    replaced: Mapping[str, str] | None = None,
) -> None:
    """Record ``version`` as serving: the old production version ``surpassed`` (or as ``replaced`` says),
    the deployment record, champion → version, the challenger dropped if it pointed here; the history."""
    link = history.of(envelope)
    moves: list[tuple[str, str | None, str]] = []
    for old in svc.registry.versions_with_tag(model_name, domain.STAGE, Stage.PRODUCTION):
        if old.version != version:
            tags = (
                dict(replaced)
                if replaced
                else {domain.STAGE: Stage.SURPASSED, domain.OUTCOME: f"surpassed by v{version}"}
            )
            svc.registry.set_version_tags(model_name, old.version, tags)
            moves.append((old.version, Stage.PRODUCTION, tags[domain.STAGE]))
    current = svc.registry.get_version(model_name, version)
    tags = {
        domain.STAGE: Stage.PRODUCTION,
        domain.DEPLOYMENT: domain.record(status="deployed", at=svc.clock(), **deployment),
    }
    for key in (domain.COMMIT_SHA, domain.REPOSITORY):
        value = current.tags.get(key) or svc.code_version.get(key.removeprefix("signalbox."))
        if value:
            tags[key] = value
    svc.registry.set_version_tags(model_name, version, tags)
    moves.append((version, current.tags.get(domain.STAGE), Stage.PRODUCTION))
    champion = svc.registry.alias_version(model_name, domain.CHAMPION)
    svc.registry.set_alias(model_name, domain.CHAMPION, version)
    dropped = drop_challenger(svc, model_name, version)
    svc.events.publish(LifecycleEvent.VERSION_DEPLOYED, model_name, {"version": version, **deployment})
    entries = [
        history.Entry(
            "deployment",
            f"v{version} deployed to {deployment.get('endpoint')}" + (" again (rollback)" if replaced else ""),
            who=who,
            why=why or ("approved; passed its smoke test" if deployment.get("mode") == "real_time" else "approved"),
            version=version,
            detail=deployment,
            **link,
        ),
        *history.stage_moves(model_name, moves, who=who, why=why or f"v{version} deployed", link=link),
    ]
    if champion != version:
        entries.append(
            history.Entry(
                "alias",
                f"champion → v{version}" + (f" (was v{champion})" if champion else ""),
                who=who,
                why=why or f"v{version} deployed",
                version=version,
                detail={"alias": domain.CHAMPION, "from": champion, "to": version},
                **link,
            )
        )
    if dropped:
        entries.append(_challenger_dropped(version, who, why or f"v{version} is in production", link))
    history.record(svc, model_name, *entries)
    log.info("%s v%s is in production (%s)", model_name, version, deployment)


def _challenger_dropped(version: str, who: str, why: str, link: Mapping[str, str]) -> history.Entry:
    return history.Entry(
        "alias",
        f"challenger removed (was v{version})",
        who=who,
        why=why,
        version=version,
        detail={"alias": domain.CHALLENGER, "from": version, "to": None},
        **link,
    )


def _rolled_back(
    svc: Services, envelope: Envelope, model_name: str, version: str, endpoint: str, reason: str
) -> Outcome:
    # Unstaged, so the next winner is compared with the champion, not with a version that cannot serve.
    svc.registry.set_version_tags(
        model_name,
        version,
        {
            domain.DEPLOYMENT: domain.record(status="rolled_back", endpoint=endpoint, reason=reason, at=svc.clock()),
            domain.STAGE: Stage.UNSTAGED,
            domain.OUTCOME: "deployment rolled back",
        },
    )
    dropped = drop_challenger(svc, model_name, version)
    svc.events.publish(LifecycleEvent.DEPLOYMENT_ROLLED_BACK, model_name, {"version": version, "reason": reason})
    link = history.of(envelope)
    entries = [
        history.Entry(
            "deployment",
            f"v{version} failed to deploy to {endpoint}; the endpoint kept its traffic",
            why=reason,
            version=version,
            detail={"status": "rolled_back", "endpoint": endpoint},
            **link,
        ),
        *history.stage_moves(
            model_name, [(version, Stage.STAGED, Stage.UNSTAGED)], who=history.SIGNALBOX, why=reason, link=link
        ),
    ]
    if dropped:
        entries.append(_challenger_dropped(version, history.SIGNALBOX, reason, link))
    history.record(svc, model_name, *entries)
    log.warning("deploy of %s v%s rolled back: %s", model_name, version, reason)
    return Outcome.ROLLED_BACK


# -- an operator's rollback ----------------------------------------------------------------------


def served_before(version: ModelVersion) -> bool:
    """Whether the version has served: a deployment record that says deployed, or stage ``surpassed``."""
    deployed = domain.read_record(version.tags.get(domain.DEPLOYMENT)).get("status") == "deployed"
    return deployed or domain.stage_of(version) is Stage.SURPASSED


def rollback_refusal(svc: Services, model: ModelEntry, target: ModelVersion) -> str | None:
    """Why ``target`` cannot be rolled back to now (None: it can), checked before anything moves."""
    if model.deployment is None:
        return f"model {model.name} has no deployment section in the catalogue: nothing serves it"
    if domain.stage_of(target) is Stage.PRODUCTION:
        return f"{model.name} v{target.version} is already in production"
    if not served_before(target):
        return (
            f"{model.name} v{target.version} never served (stage {target.tags.get(domain.STAGE) or 'none'}, "
            "no deployment record): roll back only to a version that was in production"
        )
    if not svc.registry.has_model_files(model.name, target.version):
        return (
            f"the model files of {model.name} v{target.version} are gone from the artifact store "
            "(no MLmodel at its models:/ location): it cannot be deployed again"
        )
    return None


def rollback(envelope: Envelope, svc: Services) -> Outcome:
    """Redeploy a version that served before (the operator's rollback), through the deploy path.

    The version that was in production becomes ``unstaged`` with a ``signalbox.rollback`` record
    (who, why, when, to which version); the target becomes ``production`` and ``champion``. A target
    that cannot serve (files gone, smoke test failed) changes nothing: the endpoint keeps its traffic.
    """
    command = envelope.command
    assert isinstance(command, RollbackModel)
    model = svc.catalogue.get(command.model_name)
    target = svc.registry.get_version(model.name, command.to_version)
    link = history.of(envelope)
    who, why = command.requested_by, command.reason
    done = domain.read_record(target.tags.get(domain.DEPLOYMENT)).get("request_id") == command.request_id
    if done and domain.stage_of(target) is Stage.PRODUCTION:
        # A redelivery after the work was recorded: finish the aliases an earlier delivery may have missed.
        if svc.registry.alias_version(model.name, domain.CHAMPION) != target.version:
            svc.registry.set_alias(model.name, domain.CHAMPION, target.version)
        return Outcome.ALREADY_PRODUCTION
    refusal = rollback_refusal(svc, model, target)
    if refusal is not None:
        return _rollback_failed(svc, envelope, command, refusal)
    assert model.deployment is not None
    endpoint = model.deployment.endpoint
    record = domain.record(by=who, reason=why, at=svc.clock(), to_version=target.version, request_id=command.request_id)
    replaced = {
        domain.STAGE: Stage.UNSTAGED,
        domain.ROLLBACK: record,
        domain.OUTCOME: f"rolled back to v{target.version} by {who}: {why}"[:1000],
    }
    # What serves now (a deployment ordered before this rollback in the session may have changed it).
    serving = [v.version for v in svc.registry.versions_with_tag(model.name, domain.STAGE, Stage.PRODUCTION)]
    from_version = serving[-1] if serving else command.from_version
    rollback_fields = {
        "rollback_from": from_version,
        "by": who,
        "reason": why,
        "request_id": command.request_id,
    }

    def succeed(deployment: dict[str, object]) -> None:
        _make_production(
            svc,
            model.name,
            target.version,
            envelope,
            {**deployment, **rollback_fields},
            who=who,
            why=f"rollback: {why}",
            replaced=replaced,
        )
        svc.registry.set_version_tags(
            model.name, target.version, {domain.OUTCOME: f"production again: rolled back by {who}: {why}"[:1000]}
        )
        _drop_invalid_challenger(svc, envelope, model.name, who)
        svc.events.publish(
            LifecycleEvent.MODEL_ROLLED_BACK,
            model.name,
            {"version": target.version, "from_version": from_version, "by": who, "reason": why},
        )
        history.record(
            svc,
            model.name,
            history.Entry(
                "rollback",
                f"rolled back to v{target.version}" + (f" from v{from_version}" if from_version else ""),
                who=who,
                why=why,
                version=target.version,
                detail={"request_id": command.request_id, "from_version": from_version},
                **link,
            ),
        )

    if model.deployment.mode == "batch":
        succeed({"mode": "batch", "endpoint": endpoint})
        _launch_batch(svc, envelope, model, target)
        return Outcome.REVERTED
    outcome = _blue_green(
        svc,
        envelope,
        endpoint,
        model.name,
        target.version,
        command,
        checks_cause=f"rollback:{model.name}:{command.request_id}",
        still_wanted=lambda: True,  # the session orders deployments; nothing else moves a served version
        succeed=succeed,
        fail=lambda reason: _rollback_failed(svc, envelope, command, reason),
    )
    return Outcome.REVERTED if outcome is Outcome.DEPLOYED else outcome


def _drop_invalid_challenger(svc: Services, envelope: Envelope, model_name: str, who: str) -> None:
    """The challenger stays unless it points at a version that is no longer ``staged``."""
    challenger = svc.registry.alias_version(model_name, domain.CHALLENGER)
    if challenger is None:
        return
    if domain.stage_of(svc.registry.get_version(model_name, challenger)) is not Stage.STAGED:
        svc.registry.delete_alias(model_name, domain.CHALLENGER)
        why = f"v{challenger} is no longer staged after the rollback"
        history.record(svc, model_name, _challenger_dropped(challenger, who, why, history.of(envelope)))


def _rollback_failed(svc: Services, envelope: Envelope, command: RollbackModel, reason: str) -> Outcome:
    svc.events.publish(
        LifecycleEvent.ROLLBACK_FAILED,
        command.model_name,
        {"version": command.to_version, "by": command.requested_by, "reason": reason},
    )
    history.record(
        svc,
        command.model_name,
        history.Entry(
            "rollback",
            f"rollback to v{command.to_version} failed; nothing changed",
            who=command.requested_by,
            why=f"{command.reason} — failed: {reason}",
            version=command.to_version,
            detail={"request_id": command.request_id, "error": reason},
            **history.of(envelope),
        ),
    )
    log.warning("rollback of %s to v%s failed, nothing changed: %s", command.model_name, command.to_version, reason)
    return Outcome.REVERT_FAILED
