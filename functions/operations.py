"""Operations: the dead-letter queues, over HTTP with the admin (master) key.

``GET  /api/ops/deadletters[?queue=&reason=&since=&message_id=&correlation_id=&limit=]``
``GET  /api/ops/deadletters/{message_id}[?queue=]``
``POST /api/ops/deadletters/replay`` ``{filters..., "dry_run": false, "max_replays": 3}``
``POST /api/ops/deadletters/purge``  ``{filters..., "dry_run": false, "confirm": "<queue name or all>"}``

Thin: parse the request (``shared/deadletters/requests.py``), run the operation
(``shared/deadletters``) in a dead-letter session of ``Services.dead_letters``, answer its view
(``shared/deadletters/views.py``). Bad input is a 400 with a message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http_util import json_response, problem
from shared import runtime

bp = func.Blueprint()
log = logging.getLogger("signalbox.ops")

_PROGRESS_EVERY = 100


def _body(req: func.HttpRequest) -> dict[str, Any]:
    raw = req.get_body()
    if not raw or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError('body must be a JSON object, e.g. {"queue": "train", "dry_run": true}') from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _now() -> datetime:
    return datetime.now(UTC)


def _log_progress(what: str) -> Any:
    def progress(done: int, total: int) -> None:
        if done % _PROGRESS_EVERY == 0 or done == total:
            log.info("%s: %d/%d dead letters", what, done, total)

    return progress


def _record_replay(dead: Any, message: Any) -> None:
    """The replay in the replayed command's model history."""
    from shared import history

    history.replayed(runtime.services(), dead, message, who="operator (admin key)")


@bp.route(route="ops/deadletters", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def deadletters_list(req: func.HttpRequest) -> func.HttpResponse:
    """The dead letters of every queue (or of ``?queue=``), filtered by the query string."""
    from shared import deadletters
    from shared.deadletters import requests, views

    try:
        filters = requests.parse_filters(dict(req.params), now=_now())
        with runtime.services().dead_letters() as ports:
            found = deadletters.list_dead_letters(ports.store, filters)
    except ValueError as exc:
        return problem(400, str(exc))
    return json_response(views.listing(filters, found))


@bp.route(route="ops/deadletters/{message_id}", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def deadletters_show(req: func.HttpRequest) -> func.HttpResponse:
    """One dead letter with everything: body, application properties, full description."""
    from shared import deadletters
    from shared.deadletters import views

    message_id = req.route_params.get("message_id", "")
    unknown = sorted(set(req.params) - {"queue"})
    if unknown:
        return problem(400, f"unknown query parameter(s) {', '.join(unknown)}; only queue is accepted")
    try:
        with runtime.services().dead_letters() as ports:
            found = deadletters.find(ports.store, message_id, queue=req.params.get("queue") or None)
    except LookupError as exc:
        return problem(404, str(exc.args[0]))
    except ValueError as exc:
        return problem(400, str(exc))
    return json_response(views.detail(found))


@bp.route(route="ops/deadletters/replay", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def deadletters_replay(req: func.HttpRequest) -> func.HttpResponse:
    """Replay the dead letters the body selects (``dry_run``: only say which would move)."""
    from shared import deadletters
    from shared.deadletters import requests, views

    try:
        body = _body(req)
        filters = requests.parse_filters(body, now=_now(), extra=("dry_run", "max_replays"))
        dry_run = requests.parse_flag(body, "dry_run")
        max_replays = requests.parse_max_replays(body)
        with runtime.services().dead_letters() as ports:
            report = deadletters.replay(
                ports.store,
                ports.sender,
                filters,
                dry_run=dry_run,
                max_replays=max_replays,
                progress=None if dry_run else _log_progress("replay"),
                on_replayed=_record_replay,
            )
    except ValueError as exc:
        return problem(400, str(exc))
    log.info("dead-letter replay %s: %s", views.filters_view(filters), report.counts())
    return json_response(views.report(filters, report))


@bp.route(route="ops/deadletters/purge", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def deadletters_purge(req: func.HttpRequest) -> func.HttpResponse:
    """Delete the dead letters the body selects; ``"confirm"`` must name the queue (``all`` for every queue)."""
    from shared import deadletters
    from shared.deadletters import requests, views

    try:
        body = _body(req)
        filters = requests.parse_filters(body, now=_now(), extra=("dry_run", "confirm"))
        dry_run = requests.parse_flag(body, "dry_run")
        confirm = requests.parse_confirm(body)
        with runtime.services().dead_letters() as ports:
            report = deadletters.purge(
                ports.store, filters, confirm=confirm, dry_run=dry_run, progress=_log_progress("purge")
            )
    except ValueError as exc:  # ConfirmationRequired included
        return problem(400, str(exc))
    log.info("dead-letter purge %s: %s", views.filters_view(filters), report.counts())
    return json_response(views.report(filters, report))
