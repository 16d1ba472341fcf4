"""Ingress: Event Grid subscriptions and inbound webhooks → one command per cause.

They only validate, authenticate, translate and enqueue, and answer fast.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import azure.functions as func

from functions.http_util import json_response, problem
from shared import runtime

if TYPE_CHECKING:
    from shared.events import KnownEvent

bp = func.Blueprint()
log = logging.getLogger("signalbox.ingress")


def _event(raw: func.EventGridEvent | func.CloudEvent) -> KnownEvent | None:
    from shared import events, handlers

    # The worker binds a CloudEvent (``type``) on a CloudEvents subscription and an EventGridEvent
    # (``event_type``) otherwise, whatever the annotation says; any attribute may be None or not text.
    event_type = raw.type if isinstance(raw, func.CloudEvent) else raw.event_type
    try:
        known = events.interpret(events.InboundEvent.from_function_event(raw))
    except events.InvalidEvent as exc:
        # No redelivery can fix a malformed or unsafe event (a blob path with "..", a URL that is not
        # the blob): refuse it once, on the record, instead of failing and making Event Grid retry it.
        subject = raw.subject if isinstance(raw.subject, str) else ""
        handlers.refuse_event(raw.id, event_type, subject, str(exc), runtime.services())
        return None
    if known is None:
        log.info("ignored event %s of type %s", raw.id, event_type)
    return known


@bp.event_grid_trigger(arg_name="event")
def landing_events(event: func.EventGridEvent) -> None:
    """Storage system topic of the landing account: BlobCreated → train."""
    from shared import events, handlers

    known = _event(event)
    if isinstance(known, events.BlobCreated):
        handlers.land_blob(known, runtime.services())


@bp.event_grid_trigger(arg_name="event")
def workspace_events(event: func.EventGridEvent) -> None:
    """Azure ML workspace system topic: new versions, finished runs, drift."""
    from shared import handlers

    known = _event(event)
    if known is not None:
        handlers.workspace_event(known, runtime.services())


@bp.event_grid_trigger(arg_name="event")
def alert_events(event: func.EventGridEvent) -> None:
    """Signalbox's custom topic: our drift-alert CloudEvent → train (with cooldown)."""
    from shared import events, handlers

    known = _event(event)
    if isinstance(known, events.DriftAlert):
        handlers.drift_alert(known, runtime.services())


@bp.route(route="webhooks/mlflow", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def mlflow_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """MLflow registry webhook (HMAC-signed): model_version.created → evaluate."""
    from shared import handlers, webhooks

    svc = runtime.services()
    secret = svc.settings.mlflow_webhook_secret
    if not secret:
        return problem(503, "SIGNALBOX_MLFLOW_WEBHOOK_SECRET is not set; this webhook cannot be verified")
    body = req.get_body()
    try:
        delivery = webhooks.verify_mlflow(
            req.headers, body, secret, now=time.time(), tolerance_seconds=svc.settings.webhook_tolerance_seconds
        )
        event = webhooks.parse_mlflow(body, delivery)
    except webhooks.WebhookRejected as exc:
        return problem(exc.status, str(exc))
    if event.entity != "model_version" or event.action != "created" or not event.model_name or not event.version:
        return json_response({"outcome": "ignored"})
    return json_response({"outcome": handlers.new_version(event.model_name, event.version, "mlflow", svc)})


@bp.route(route="webhooks/databricks", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def databricks_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Databricks Model Registry webhook (X-Databricks-Signature): MODEL_VERSION_CREATED → evaluate."""
    from shared import handlers, webhooks

    svc = runtime.services()
    secret = svc.settings.databricks_webhook_secret
    if not secret:
        return problem(503, "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET is not set; this webhook cannot be verified")
    body = req.get_body()
    try:
        webhooks.verify_databricks(req.headers, body, secret)
        event = webhooks.parse_databricks(body)
    except webhooks.WebhookRejected as exc:
        return problem(exc.status, str(exc))
    if event.event == "MODEL_VERSION_CREATED" and event.model_name and event.version:
        return json_response({"outcome": handlers.new_version(event.model_name, event.version, "databricks", svc)})
    return json_response({"outcome": "ignored"})


@bp.route(route="webhooks/databricks-jobs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def databricks_job_notification(req: func.HttpRequest) -> func.HttpResponse:
    """Databricks job notification destination (function key in the URL): a finished run → poll it now."""
    from shared import handlers, webhooks

    try:
        event = webhooks.parse_databricks(req.get_body())
    except webhooks.WebhookRejected as exc:
        return problem(exc.status, str(exc))
    if not event.event.startswith("jobs.") or not event.run_id or not event.job_id:
        return json_response({"outcome": "ignored"})
    outcome = handlers.job_notified(
        "databricks", [event.job_id, event.job_name], event.run_id, runtime.services(), event=event.event
    )
    return json_response({"outcome": outcome})


@bp.route(route="webhooks/github", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def github_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """GitHub push webhook (X-Hub-Signature-256): a push to a mapped branch → train."""
    from shared import handlers, webhooks

    svc = runtime.services()
    secret = svc.settings.github_webhook_secret
    if not secret:
        return problem(503, "SIGNALBOX_GITHUB_WEBHOOK_SECRET is not set; this webhook cannot be verified")
    body = req.get_body()
    try:
        webhooks.verify_github(req.headers, body, secret)
        push = webhooks.parse_github(req.headers, body)
    except webhooks.WebhookRejected as exc:
        return problem(exc.status, str(exc))
    if push == "ping":
        return json_response({"outcome": "pong"})
    if push is None:
        return json_response({"outcome": "ignored"})
    return json_response(
        {"outcome": "train" if (started := handlers.code_pushed(push, svc)) else "ignored", "models": started}
    )
