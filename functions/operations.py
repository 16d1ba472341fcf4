"""Operations: the dead-letter queues and Event Grid's dead letters, over HTTP with the admin (master) key.

``GET  /api/ops/deadletters[?queue=&reason=&since=&message_id=&correlation_id=&limit=]``
``GET  /api/ops/deadletters/{message_id}[?queue=]``
``POST /api/ops/deadletters/replay`` ``{filters..., "dry_run": false, "max_replays": 3}``
``POST /api/ops/deadletters/purge``  ``{filters..., "dry_run": false, "confirm": "<queue name or all>"}``

With ``source=eventgrid`` (query string or body) the same four work on the events Event Grid
dead-lettered (``shared/deadletters/eventgrid.py``): filters ``function`` (or subscription),
``reason``, ``since``, ``event_id``, ``limit``; ``{message_id}`` is the event id; a replay delivers
each event to its function through this app's Event Grid webhook with the caller's admin key; a
purge is confirmed with the function name, or ``all``.

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


def _operator(body: dict[str, Any]) -> tuple[str, str | None]:
    """Who acts and why, from the body's optional ``by`` and ``reason`` (the ops page sends both)."""
    who, reason = body.pop("by", None), body.pop("reason", None)
    for name, value in (("by", who), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    return (who or "operator (admin key)")[:200], (reason[:1000] if reason else None)


def _record_replay(who: str, reason: str | None) -> Any:
    """Record each replay in the replayed command's model history, as ``who`` for ``reason``."""
    from shared import history

    def record(dead: Any, message: Any) -> None:
        history.replayed(runtime.services(), dead, message, who=who, reason=reason)

    return record


def _eventgrid_store() -> Any:
    store = runtime.services().eventgrid_dead_letters
    if store is None:
        raise ValueError("no Event Grid dead-letter store is configured (SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL)")
    return store


def _caller_key(req: func.HttpRequest) -> str | None:
    """The admin key this request came with: the replay delivers to the Event Grid webhook with it."""
    return req.headers.get("x-functions-key") or req.params.get("code") or None


def _eventgrid_list(req: func.HttpRequest) -> func.HttpResponse:
    from shared.deadletters import eventgrid

    try:
        filters = eventgrid.parse_filters(dict(req.params), now=_now(), extra=("code",))
        found = eventgrid.select(_eventgrid_store(), filters)
    except ValueError as exc:
        return problem(400, str(exc))
    return json_response(eventgrid.listing(filters, found))


def _eventgrid_show(req: func.HttpRequest, event_id: str) -> func.HttpResponse:
    from shared.deadletters import eventgrid

    unknown = sorted(set(req.params) - {"source", "function", "queue", "code"})
    if unknown:
        return problem(400, f"unknown query parameter(s) {', '.join(unknown)}; only source and function are accepted")
    try:
        function = req.params.get("function") or req.params.get("queue") or None
        found = eventgrid.find(_eventgrid_store(), event_id, function=function)
    except LookupError as exc:
        return problem(404, str(exc.args[0]))
    except ValueError as exc:
        return problem(400, str(exc))
    return json_response(eventgrid.detail(found))


def _eventgrid_replay(req: func.HttpRequest, body: dict[str, Any]) -> func.HttpResponse:
    from shared.deadletters import eventgrid, requests

    try:
        who, reason = _operator(body)
        filters = eventgrid.parse_filters(body, now=_now(), extra=("dry_run", "max_replays"))
        dry_run = requests.parse_flag(body, "dry_run")
        max_replays = requests.parse_max_replays(body)
        delivery = eventgrid.HttpEventGridDelivery(runtime.services().settings.host_url, _caller_key(req))
        report = eventgrid.replay(
            _eventgrid_store(),
            delivery,
            filters,
            dry_run=dry_run,
            max_replays=max_replays,
            progress=None if dry_run else _log_progress("Event Grid replay"),
        )
    except ValueError as exc:
        return problem(400, str(exc))
    log.info(
        "Event Grid dead-letter replay %s by %s (%s): %s",
        eventgrid.filters_view(filters),
        who,
        reason or "no reason",
        report.counts(),
    )
    return json_response(eventgrid.report_view(filters, report))


def _eventgrid_purge(body: dict[str, Any]) -> func.HttpResponse:
    from shared.deadletters import eventgrid, requests

    try:
        who, reason = _operator(body)
        filters = eventgrid.parse_filters(body, now=_now(), extra=("dry_run", "confirm"))
        dry_run = requests.parse_flag(body, "dry_run")
        confirm = requests.parse_confirm(body)
        report = eventgrid.purge(
            _eventgrid_store(), filters, confirm=confirm, dry_run=dry_run, progress=_log_progress("Event Grid purge")
        )
    except ValueError as exc:
        return problem(400, str(exc))
    log.info(
        "Event Grid dead-letter purge %s by %s (%s): %s",
        eventgrid.filters_view(filters),
        who,
        reason or "no reason",
        report.counts(),
    )
    return json_response(eventgrid.report_view(filters, report))


def _source(data: dict[str, Any]) -> str:
    from shared.deadletters.eventgrid import source_of

    return source_of(data)


@bp.route(route="ops/deadletters", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def deadletters_list(req: func.HttpRequest) -> func.HttpResponse:
    """The dead letters of every queue (or of ``?queue=``), filtered by the query string; ``?source=eventgrid``."""
    from shared import deadletters
    from shared.deadletters import requests, views

    try:
        params = dict(req.params)
        if _source(params) == "eventgrid":
            return _eventgrid_list(req)
        params.pop("source", None)
        filters = requests.parse_filters(params, now=_now())
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
    try:
        if _source(dict(req.params)) == "eventgrid":
            return _eventgrid_show(req, message_id)
    except ValueError as exc:
        return problem(400, str(exc))
    unknown = sorted(set(req.params) - {"queue", "source"})
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
        if _source(body) == "eventgrid":
            return _eventgrid_replay(req, body)
        body.pop("source", None)
        who, reason = _operator(body)
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
                on_replayed=_record_replay(who, reason),
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
        if _source(body) == "eventgrid":
            return _eventgrid_purge(body)
        body.pop("source", None)
        who, reason = _operator(body)
        filters = requests.parse_filters(body, now=_now(), extra=("dry_run", "confirm"))
        dry_run = requests.parse_flag(body, "dry_run")
        confirm = requests.parse_confirm(body)
        with runtime.services().dead_letters() as ports:
            report = deadletters.purge(
                ports.store, filters, confirm=confirm, dry_run=dry_run, progress=_log_progress("purge")
            )
    except ValueError as exc:  # ConfirmationRequired included
        return problem(400, str(exc))
    log.info(
        "dead-letter purge %s by %s (%s): %s", views.filters_view(filters), who, reason or "no reason", report.counts()
    )
    return json_response(views.report(filters, report))
