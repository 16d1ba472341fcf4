"""An operator in an incident, over HTTP with a function key (the CLI and the ops page call these).

``POST /api/models/{model}/rollback`` ``{"to": "3" | null, "by", "reason", "request_id"}`` → 202
``POST /api/models/{model}/hold``     ``{"by", "reason", "request_id"}`` → 200
``POST /api/models/{model}/release``  ``{"by", "reason"?, "request_id"}`` → 200
``GET  /api/history/{model}?since=7d`` → 200, newest first

Thin: parse the body, call ``shared/handlers/operator.py``, answer. A missing ``request_id`` gets
a fresh one (then a repeated request is a second action: clients send one per click).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http_util import json_response, problem
from shared import runtime

bp = func.Blueprint()

_FIELDS = {
    "rollback": {"to", "by", "reason", "request_id"},
    "hold": {"by", "reason", "request_id"},
    "release": {"by", "reason", "request_id"},
}


def _body(req: func.HttpRequest, action: str) -> dict[str, Any]:
    example = '{"by": "name", "reason": "why", "request_id": "..."}'
    try:
        data = json.loads(req.get_body() or b"null")
    except ValueError:
        raise ValueError(f"body must be JSON like {example}") from None
    if not isinstance(data, dict):
        raise ValueError(f"body must be a JSON object like {example}")
    unknown = sorted(set(data) - _FIELDS[action])
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; {action} takes {', '.join(sorted(_FIELDS[action]))}")
    request_id = data.get("request_id")
    if request_id is None:
        data["request_id"] = str(uuid.uuid4())
    elif not isinstance(request_id, str):
        raise ValueError("request_id: expected a string")
    return data


@bp.route(route="models/{model}/rollback", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def rollback(req: func.HttpRequest) -> func.HttpResponse:
    """Queue a rollback to the previous production version (or ``to``) on the model's deploy session."""
    from shared.errors import RollbackRefused
    from shared.handlers import operator

    model = req.route_params["model"]
    try:
        body = _body(req, "rollback")
        to = body.get("to")
        if to is not None and (isinstance(to, bool) or not isinstance(to, str | int)):
            raise ValueError('to: expected a version number ("3") or null')
        svc = runtime.services()
        try:
            answer = operator.request_rollback(
                model, None if to is None else str(to), body.get("by"), body.get("reason"), body["request_id"], svc
            )
        except LookupError as exc:  # UnknownModel, UnknownVersion
            return problem(404, str(exc))
        except RollbackRefused as exc:
            return problem(409, str(exc))
    except ValueError as exc:  # InvalidInput; a version that is no number
        if "not a version number" in str(exc):
            return problem(404, f"no version {body.get('to')!r} of {model}: versions are numbered 1, 2, 3...")
        return problem(400, str(exc))
    return json_response(answer, 202)


@bp.route(route="models/{model}/hold", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def hold(req: func.HttpRequest) -> func.HttpResponse:
    """Hold the model: no automatic deployment until it is released; approvals are refused meanwhile."""
    return _hold_or_release(req, "hold")


@bp.route(route="models/{model}/release", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def release(req: func.HttpRequest) -> func.HttpResponse:
    """Release the model's hold; a staged winner that waited is sent on to its deployment."""
    return _hold_or_release(req, "release")


def _hold_or_release(req: func.HttpRequest, action: str) -> func.HttpResponse:
    from shared.handlers import operator

    model = req.route_params["model"]
    try:
        body = _body(req, action)
        act = operator.hold if action == "hold" else operator.release
        answer = act(model, body.get("by"), body.get("reason"), body["request_id"], runtime.services())
    except LookupError as exc:  # UnknownModel
        return problem(404, str(exc))
    except ValueError as exc:  # InvalidInput
        return problem(400, str(exc))
    return json_response(answer)


@bp.route(route="history/{model}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def history(req: func.HttpRequest) -> func.HttpResponse:
    """The model's history from the registry, newest first (``?since=7d``, ``12h``, ``30m``, ``2w`` or ISO 8601)."""
    from shared import history as model_history
    from shared.handlers import operator

    unknown = sorted(set(req.params) - {"since"})
    if unknown:
        return problem(400, f"unknown query parameter(s) {', '.join(unknown)}; only since is accepted")
    model = req.route_params["model"]
    try:
        since = model_history.parse_since(req.params.get("since"), datetime.now(UTC))
        return json_response(operator.read_history(model, since, runtime.services()))
    except LookupError as exc:  # UnknownModel
        return problem(404, str(exc))
    except ValueError as exc:  # InvalidInput
        return problem(400, str(exc))
