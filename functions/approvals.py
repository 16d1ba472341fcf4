"""People in the loop: approve or reject a staged version, read a model's lifecycle."""

from __future__ import annotations

import json

import azure.functions as func

from functions.http_util import json_response, problem
from shared import runtime
from shared.errors import NotAwaitingApproval, UnknownModel

bp = func.Blueprint()


@bp.route(route="approvals/{model}/{version:int}/{decision}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def approval(req: func.HttpRequest) -> func.HttpResponse:
    """POST approve|reject for a version waiting for approval (function key)."""
    from shared import handlers

    decision = req.route_params.get("decision", "")
    if decision not in ("approve", "reject"):
        return problem(404, f"unknown decision {decision!r}: use approve or reject")
    who = "unknown"
    reason: str | None = None
    if req.get_body():
        try:
            body = json.loads(req.get_body())
        except ValueError:
            return problem(400, 'body must be JSON like {"by": "name"} or empty')
        if not isinstance(body, dict):
            return problem(400, "body must be a JSON object")
        who = str(body.get("by") or who)[:200]
        reason = str(body["reason"])[:1000] if body.get("reason") else None
    from shared.domain import version_number

    model = req.route_params["model"]
    try:
        # One spelling per version: "01" would be a second approval of version 1.
        version = version_number(req.route_params["version"])
    except ValueError:
        return problem(404, f"no version {req.route_params['version']} of {model}: versions are numbered 1, 2, 3...")
    svc = runtime.services()
    try:
        outcome = handlers.request_approval_decision(model, version, decision == "approve", who, svc, reason=reason)
    except LookupError as exc:  # UnknownModel, UnknownVersion
        return problem(404, str(exc))
    except NotAwaitingApproval as exc:
        return problem(409, str(exc))
    return json_response({"model": model, "version": version, "decision": outcome}, 202)


@bp.route(route="status/{model}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    """A model's lifecycle read back from the registry (JSON)."""
    from shared.lifecycle import lifecycle

    svc = runtime.services()
    model = req.route_params["model"]
    try:
        return json_response(lifecycle(model, svc))
    except UnknownModel as exc:
        return problem(404, str(exc))


@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status_overview(req: func.HttpRequest) -> func.HttpResponse:
    """Every model's lifecycle and the approvals waiting across models (JSON)."""
    from shared.lifecycle import overview

    return json_response(overview(runtime.services()))
