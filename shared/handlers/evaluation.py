"""Evaluation and promotion: challenger against champion, then the stage tags and approval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared import domain, history
from shared.contracts import DeployVersion, Envelope, EvaluateVersion, PromoteVersion
from shared.domain import Approval, LifecycleEvent, Outcome, Stage
from shared.handlers.common import drop_challenger, log
from shared.handlers.deployment import wait_for_hold

if TYPE_CHECKING:
    from shared.services import Services


def evaluate(envelope: Envelope, svc: Services) -> Outcome:
    """Score the challenger and the champion on the same data; record the verdict on the version."""
    command = envelope.command
    assert isinstance(command, EvaluateVersion)
    model = svc.catalogue.get(command.model_name)
    if model.evaluation is None:
        return Outcome.NOT_EVALUATED
    challenger = svc.registry.get_version(model.name, command.version)
    if domain.DECISION in challenger.tags:
        # An earlier delivery recorded the verdict and may have died before sending it on: send it
        # again (the same message id, so duplicate detection drops it if it did get through).
        won = domain.read_record(challenger.tags[domain.DECISION]).get("won") is True
        log.info("%s v%s was already evaluated; its verdict goes on to promotion", model.name, command.version)
        _send_promote(svc, envelope, model.name, command.version, won)
        return Outcome.ALREADY_EVALUATED
    champion_version = svc.registry.alias_version(model.name, domain.CHAMPION)
    if champion_version == command.version:
        return Outcome.IS_CHAMPION
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
        LifecycleEvent.VERSION_EVALUATED,
        model.name,
        {"version": command.version, "won": verdict.won, "reason": verdict.reason},
    )
    history.record(
        svc,
        model.name,
        history.Entry(
            "evaluation",
            f"v{command.version} {'won' if verdict.won else 'lost'} its evaluation",
            why=verdict.reason,
            version=command.version,
            detail={
                "primary_metric": verdict.primary_metric,
                "challenger": verdict.challenger,
                "champion": verdict.champion,
            },
            **history.of(envelope),
        ),
    )
    _send_promote(svc, envelope, model.name, command.version, verdict.won)
    return Outcome.WON if verdict.won else Outcome.LOST


def _send_promote(svc: Services, envelope: Envelope, model_name: str, version: str, won: bool) -> None:
    promote = PromoteVersion(model_name=model_name, version=version, decision="won" if won else "lost")
    svc.bus.send(envelope.follow(promote, now=svc.clock()))


def promote(envelope: Envelope, svc: Services) -> Outcome:
    """Move stage tags for a verdict or an approval decision (one model at a time, by session)."""
    command = envelope.command
    assert isinstance(command, PromoteVersion)
    model = svc.catalogue.get(command.model_name)
    version = svc.registry.get_version(model.name, command.version)
    stage = domain.stage_of(version)
    link = history.of(envelope)
    if command.decision == "lost":
        svc.events.publish(LifecycleEvent.CHALLENGER_LOST, model.name, {"version": command.version})
        return Outcome.LOST
    if command.decision == "won":
        if stage in (Stage.PRODUCTION, Stage.SURPASSED, Stage.UNSTAGED):
            return Outcome(f"already-{stage}")
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
                    return Outcome.KEPT_STAGED
                svc.registry.set_version_tags(
                    model.name,
                    staged.version,
                    {domain.STAGE: Stage.UNSTAGED, "signalbox.outcome": f"replaced by v{version.version}"},
                )
                history.record(
                    svc,
                    model.name,
                    *history.stage_moves(
                        model.name,
                        [(staged.version, Stage.STAGED, Stage.UNSTAGED)],
                        who=history.SIGNALBOX,
                        why=f"replaced by v{version.version}, a better winner",
                        link=link,
                    ),
                )
            svc.registry.set_version_tags(model.name, version.version, {domain.STAGE: Stage.STAGED})
            previous = svc.registry.alias_version(model.name, domain.CHALLENGER)
            svc.registry.set_alias(model.name, domain.CHALLENGER, version.version)
            svc.events.publish(LifecycleEvent.VERSION_STAGED, model.name, {"version": version.version})
            why = str(domain.read_record(version.tags.get(domain.DECISION)).get("reason") or "won its evaluation")
            history.record(
                svc,
                model.name,
                *history.stage_moves(
                    model.name, [(version.version, None, Stage.STAGED)], who=history.SIGNALBOX, why=why, link=link
                ),
                history.Entry(
                    "alias",
                    f"challenger → v{version.version}" + (f" (was v{previous})" if previous else ""),
                    why=why,
                    version=version.version,
                    detail={"alias": domain.CHALLENGER, "from": previous, "to": version.version},
                    **link,
                ),
            )
        elif svc.registry.alias_version(model.name, domain.CHALLENGER) != version.version:
            # A redelivery: the earlier one died between the stage tag and the alias.
            svc.registry.set_alias(model.name, domain.CHALLENGER, version.version)
        policy = model.approval_for(envelope.environment)
        current = version.tags.get(domain.APPROVAL)
        if policy == "manual" and current not in (Approval.APPROVED, Approval.AUTO):
            if current != Approval.PENDING:
                svc.registry.set_version_tags(model.name, version.version, {domain.APPROVAL: Approval.PENDING})
                svc.events.publish(LifecycleEvent.APPROVAL_REQUESTED, model.name, {"version": version.version})
                history.record(
                    svc,
                    model.name,
                    history.Entry(
                        "approval",
                        f"v{version.version} waits for approval",
                        why=f"{envelope.environment} needs a person's approval",
                        version=version.version,
                        detail={"approval": Approval.PENDING},
                        **link,
                    ),
                )
            return Outcome.PENDING_APPROVAL
        if current not in (Approval.APPROVED, Approval.AUTO):
            svc.registry.set_version_tags(model.name, version.version, {domain.APPROVAL: Approval.AUTO})
            svc.events.publish(
                LifecycleEvent.VERSION_APPROVED,
                model.name,
                {"version": version.version, "by": f"auto ({envelope.environment} policy)"},
            )
            history.record(
                svc,
                model.name,
                history.Entry(
                    "approval",
                    f"v{version.version} approved automatically",
                    who=f"auto ({envelope.environment} policy)",
                    why=f"{envelope.environment} approves winners automatically",
                    version=version.version,
                    detail={"approval": Approval.AUTO},
                    **link,
                ),
            )
        return _send_deploy(svc, envelope, model.name, version.version)
    if stage is not Stage.STAGED:
        log.info("%s on %s v%s ignored: the version is %s", command.decision, model.name, version.version, stage)
        return Outcome.IGNORED
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
        dropped = drop_challenger(svc, model.name, version.version)
        svc.events.publish(
            LifecycleEvent.APPROVAL_REJECTED, model.name, {"version": version.version, "by": command.decided_by}
        )
        who = command.decided_by or "unknown"
        entries = [
            history.Entry(
                "approval",
                f"v{version.version} rejected",
                who=who,
                why=command.reason or "",
                version=version.version,
                detail={"approval": Approval.REJECTED},
                **link,
            ),
            *history.stage_moves(
                model.name,
                [(version.version, Stage.STAGED, Stage.UNSTAGED)],
                who=who,
                why=f"rejected: {command.reason}" if command.reason else "rejected",
                link=link,
            ),
        ]
        if dropped:
            entries.append(
                history.Entry(
                    "alias",
                    f"challenger removed (was v{version.version})",
                    who=who,
                    why="rejected",
                    version=version.version,
                    detail={"alias": domain.CHALLENGER, "from": version.version, "to": None},
                    **link,
                )
            )
        history.record(svc, model.name, *entries)
        return Outcome.REJECTED
    svc.registry.set_version_tags(
        model.name,
        version.version,
        {domain.APPROVAL: Approval.APPROVED, domain.APPROVED_BY: command.decided_by or "unknown"},
    )
    svc.events.publish(
        LifecycleEvent.VERSION_APPROVED, model.name, {"version": version.version, "by": command.decided_by}
    )
    history.record(
        svc,
        model.name,
        history.Entry(
            "approval",
            f"v{version.version} approved",
            who=command.decided_by or "unknown",
            why=command.reason or "",
            version=version.version,
            detail={"approval": Approval.APPROVED},
            **link,
        ),
    )
    return _send_deploy(svc, envelope, model.name, version.version)


def _send_deploy(svc: Services, envelope: Envelope, model_name: str, version: str) -> Outcome:
    # A held model's winner stays staged; releasing the hold sends its deployment.
    hold = domain.hold_of(svc.registry.model_tags(model_name))
    if hold is not None:
        wait_for_hold(svc, envelope, model_name, svc.registry.get_version(model_name, version), hold)
        return Outcome.HELD
    deploy_command = DeployVersion(model_name=model_name, version=version)
    svc.bus.send(envelope.follow(deploy_command, cause=f"deploy:{model_name}:{version}", now=svc.clock()))
    return Outcome.DEPLOY
