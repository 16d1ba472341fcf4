"""The ops page: every model's lifecycle and history, the queues, the approvals and the dead letters, on one page.

``GET /api/ops?code=<admin key>`` answers one self-contained HTML page (inline CSS, inline SVG
drawn by vanilla JS, nothing loaded from elsewhere) that reads ``GET /api/ops/overview``,
``GET /api/history/{model}?since=7d`` and ``GET /api/ops/deadletters[/{id}]`` every few seconds,
and acts with the same key: ``POST /api/approvals/{model}/{version}/{approve|reject}``,
``POST /api/models/{model}/{rollback|hold|release}`` (one request id per dialog, so a double
submit is one action) and ``POST /api/ops/deadletters/{replay|purge}`` (a dry run first).
Every action asks for a name and a reason in a dialog and shows its outcome. Registry strings
(model names, tags, decision records, history, dead letters) are user data: the page only ever
puts them into the DOM as text (``textContent``, never HTML), and a Content-Security-Policy with
a per-response nonce refuses any script or style it did not send.

The page is ``functions/ops_page.html`` (package data: it ships in the function app folder and
in the wheel), read once through ``importlib.resources``; ``__NONCE__`` and ``__REFRESH__``
are filled in per response.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from importlib import resources

import azure.functions as func

from functions.http_util import problem
from shared import runtime

bp = func.Blueprint()
log = logging.getLogger("signalbox")

DEFAULT_REFRESH_SECONDS = 5
MIN_REFRESH_SECONDS = 1
MAX_REFRESH_SECONDS = 300
PAGE_FILE = "ops_page.html"


@bp.route(route="ops", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def ops_page(req: func.HttpRequest) -> func.HttpResponse:
    """The ops page (admin key, as ``?code=`` so a browser can open it); ``?refresh=SECONDS`` (1-300, default 5)."""
    try:
        refresh = parse_refresh(req.params.get("refresh"))
    except ValueError as exc:
        return problem(400, str(exc))
    nonce = secrets.token_urlsafe(18)
    return func.HttpResponse(
        render_page(nonce=nonce, refresh_seconds=refresh),
        status_code=200,
        mimetype="text/html",
        charset="utf-8",
        headers=page_headers(nonce),
    )


@bp.route(route="ops/overview", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def ops_overview(req: func.HttpRequest) -> func.HttpResponse:
    """Every model's lifecycle, the pending approvals and the queue depths (JSON, admin key)."""
    from shared.lifecycle import overview

    svc = runtime.services()
    payload = overview(svc)
    try:
        if svc.queue_depths is None:
            raise LookupError("no queue-depth adapter is configured")
        payload["queues"] = svc.queue_depths.depths()
    except Exception as exc:
        # The lifecycle is still worth showing when the queues cannot be read (e.g. no Service Bus read rights).
        log.warning("ops page: queue depths unavailable: %s: %s", type(exc).__name__, exc)
        payload["queues"] = {}
        payload["queues_error"] = f"queue depths unavailable: {type(exc).__name__}: {exc}"
    from shared.deadletters.eventgrid import overview_count

    # eventgrid_dead_letters: how many events Event Grid gave up on (None + ..._error when unreadable).
    payload.update(overview_count(getattr(svc, "eventgrid_dead_letters", None)))
    return func.HttpResponse(
        json.dumps(payload, default=str),
        status_code=200,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


# -- helpers (plain functions, tested without a host) ----------------------------------------------


def parse_refresh(raw: str | None) -> int:
    """The page's refresh period in seconds from ``?refresh=``; ``ValueError`` says what is accepted."""
    if raw is None or raw == "":
        return DEFAULT_REFRESH_SECONDS
    if not raw.isdigit() or not MIN_REFRESH_SECONDS <= int(raw) <= MAX_REFRESH_SECONDS:
        raise ValueError(
            f"refresh must be a whole number of seconds from {MIN_REFRESH_SECONDS} to {MAX_REFRESH_SECONDS}, "
            f"got {raw[:40]!r}"
        )
    return int(raw)


def page_headers(nonce: str) -> dict[str, str]:
    """Only the page's own script and style run; it talks to its own origin only; no caching, no referrer."""
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        f"style-src 'nonce-{nonce}'; "
        "connect-src 'self'; "
        "img-src data:; "
        "base-uri 'none'; "
        "form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        # The URL carries the admin key: never send it on, never keep the page.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def render_page(*, nonce: str, refresh_seconds: int) -> str:
    """The page. It holds no registry data: the script fetches the overview and renders it as text."""
    if not nonce.replace("-", "").replace("_", "").isalnum():
        raise ValueError("nonce must be URL-safe base64")
    return page_template().replace("__NONCE__", nonce).replace("__REFRESH__", str(int(refresh_seconds)))


@functools.cache
def page_template() -> str:
    """The page as shipped (``functions/ops_page.html``), with its ``__NONCE__`` and ``__REFRESH__`` slots."""
    return resources.files(__package__ or "functions").joinpath(PAGE_FILE).read_text(encoding="utf-8")

