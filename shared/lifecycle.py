"""A model's lifecycle read back from the registry (for ``signalbox status`` and the status API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared import domain

if TYPE_CHECKING:
    from shared.services import Services


def lifecycle(model_name: str, svc: Services) -> dict[str, Any]:
    """Versions with stage, aliases, approval, decision and deployment records."""
    entry = svc.catalogue.get(model_name)
    # Version searches do not return aliases everywhere: read the two Signalbox moves.
    pointers = {alias: svc.registry.alias_version(model_name, alias) for alias in (domain.CHAMPION, domain.CHALLENGER)}
    versions = []
    for v in svc.registry.list_versions(model_name):
        aliases = sorted(set(v.aliases) | {alias for alias, target in pointers.items() if target == v.version})
        versions.append(
            {
                "version": v.version,
                "stage": v.tags.get(domain.STAGE),
                "aliases": aliases,
                "approval": v.tags.get(domain.APPROVAL),
                "approved_by": v.tags.get(domain.APPROVED_BY),
                "decision": domain.read_record(v.tags.get(domain.DECISION)) or None,
                "deployment": domain.read_record(v.tags.get(domain.DEPLOYMENT)) or None,
                "outcome": v.tags.get("signalbox.outcome"),
                "rollback": domain.read_record(v.tags.get(domain.ROLLBACK)) or None,
                "commit_sha": v.tags.get(domain.COMMIT_SHA),
                "repository": v.tags.get(domain.REPOSITORY),
                "created_at": v.created_at,
            }
        )
    model_tags = svc.registry.model_tags(model_name)
    return {
        "model": model_name,
        "kind": entry.kind,
        "endpoint": svc.serving.endpoint_url(entry.deployment.endpoint)
        if entry.deployment and entry.deployment.mode == "real_time"
        else None,
        "champion": pointers[domain.CHAMPION],
        "challenger": pointers[domain.CHALLENGER],
        "versions": versions,
        "last_refusal": domain.read_record(model_tags.get(domain.LAST_REFUSAL)) or None,
        "last_failure": domain.read_record(model_tags.get(domain.LAST_FAILURE)) or None,
        # {"by", "reason", "at", "request_id"} while an operator holds the model's deployments, else None.
        "held": domain.hold_of(model_tags),
    }


def pending_approvals(svc: Services) -> list[dict[str, Any]]:
    """Every staged version waiting for a person, across the catalogue's models."""
    pending = []
    for name in sorted(svc.catalogue.models):
        for v in svc.registry.list_versions(name):
            if v.tags.get(domain.APPROVAL) == domain.Approval.PENDING and domain.stage_of(v) is domain.Stage.STAGED:
                decision = domain.read_record(v.tags.get(domain.DECISION))
                pending.append(
                    {
                        "model": name,
                        "version": v.version,
                        "environment": v.tags.get(domain.ENVIRONMENT),
                        "reason": decision.get("reason"),
                        "created_at": v.created_at,
                    }
                )
    return pending


def overview(svc: Services) -> dict[str, Any]:
    """Every model's lifecycle and the approvals waiting, for the ops page and ``signalbox status``."""
    return {
        "environment": svc.settings.environment,
        "models": [lifecycle(name, svc) for name in sorted(svc.catalogue.models)],
        "pending_approvals": pending_approvals(svc),
    }
