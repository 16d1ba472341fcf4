"""The ops page in headless Chromium against a stub of the functions it calls: escaping, the chart, every
action's dialog and request, keyboard use, contrast and console errors, in seconds.

The stub answers the HTTP contract of the functions the page calls (the shapes of
``functions/ops_page.py``, ``functions/approvals.py``, ``functions/operations.py`` and the
model-operations functions of issue 15) with registry strings that would run or render as HTML if the page
ever parsed them. The same page against a real host and a real MLflow server is
tests/integration/test_ops_page_live.py. Screenshots land in the test's tmp dir.

Chromium is Debian's ``chromium`` + ``chromium-driver`` driven by Selenium; without them the
browser tests skip, except under CI (``CI=true``), where they must run and so fail.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from functions import ops_page

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
# Registry strings that would run or render as HTML if the page ever parsed them.
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
EVIL_MODEL = "evil <b>model</b> \"quoted\" & 'single'"
# WCAG 2.x AA: 4.5:1 for text of normal size.
AA_TEXT = 4.5


# -- the browser -------------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _need_browser() -> None:
    """Skip without Chromium, its driver or Selenium; under CI fail instead: CI must run these."""
    missing = [
        f"{p} (apt-get install -y chromium chromium-driver)" for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install selenium)")
    if missing:
        reason = "the ops page browser tests need " + "; ".join(missing)
        if _in_ci():
            pytest.fail(f"{reason} (CI is set: the browser tests must run there)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver (Selenium Manager is never asked for a driver)."""
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, what: str, condition: Callable[[Any], Any], timeout: float = 20.0) -> Any:
    """Wait for ``condition(driver)``; on timeout, fail with what the page shows."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
        ).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; the page shows:\n{body[:4000]}"
        ) from None


def _fresh(look: Callable[[], Any]) -> Any:
    """``look()``, again if the page's refresh replaced an element while it was being read."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(10):
        try:
            return look()
        except StaleElementReferenceException:
            time.sleep(0.1)
    return look()


def _with_data(scope: Any, css: str, **data: str) -> Any:
    """The first element under ``scope`` matching ``css`` whose ``data-*`` attributes are ``data`` (read again
    if a refresh replaced it); names are compared as data, never put into a selector."""

    def look() -> Any:
        for element in scope.find_elements("css selector", css):
            if all(element.get_attribute(f"data-{name.replace('_', '-')}") == value for name, value in data.items()):
                return element
        return None

    return _fresh(look)


def model_card(driver: Any, model: str) -> Any:
    """The card of ``model``."""
    return _with_data(driver, "#models article.model", model=model)


def version_row(driver: Any, model: str, version: str) -> Any:
    """The entry of ``model`` ``version`` in its card's versions list."""

    def look() -> Any:
        card = model_card(driver, model)
        return None if card is None else _with_data(card, "li.version", version=version)

    return _fresh(look)


def pending_row(driver: Any, model: str, version: str) -> Any:
    return _with_data(driver, "#approvals tr.pending", model=model, version=version)


def dead_row(driver: Any, message_id: str) -> Any:
    return _with_data(driver, "#deadletters tr.dead", message_id=message_id)


def stage(driver: Any, model: str, version: str) -> str | None:
    row = version_row(driver, model, version)
    return None if row is None else row.find_element("css selector", ".badge.stage").text


def press(driver: Any, what: str, find: Callable[[Any], Any], action: str) -> None:
    """Click the ``data-action`` button inside what ``find`` returns (again if a refresh replaced it)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            container = find(driver)
            assert container is not None, f"{what} is not on the page"
            container.find_element("css selector", f"button[data-action='{action}']").click()
            return
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"could not press {action} on {what}: a refresh replaced it at every try")


def dialog_open(driver: Any) -> bool:
    return bool(driver.execute_script("return document.getElementById('action-dialog').open"))


def fill_dialog(
    driver: Any,
    by: str,
    reason: str,
    *,
    select: dict[str, str] | None = None,
    type_in: dict[str, str] | None = None,
    confirm: bool = True,
) -> Any:
    """Fill the action dialog (name, reason, the action's own fields) and, by default, press its Confirm button."""
    from selenium.webdriver.support.ui import Select

    until(driver, "the action dialog", dialog_open)
    dialog = driver.find_element("id", "action-dialog")
    for element_id, value in (select or {}).items():
        Select(dialog.find_element("id", element_id)).select_by_value(value)
    for element_id, value in (type_in or {}).items():
        field = dialog.find_element("id", element_id)
        field.clear()
        field.send_keys(value)
    for element_id, value in (("action-by", by), ("action-reason", reason)):
        field = dialog.find_element("id", element_id)
        field.clear()
        field.send_keys(value)
    button = dialog.find_element("id", "dialog-confirm")
    if confirm:
        until(driver, "the Confirm button to be enabled (after the dry run)", lambda d: button.is_enabled())
        button.click()
    return dialog


def flash(driver: Any, contains: str, timeout: float = 20.0) -> str:
    """The outcome line, once it says ``contains`` (and the action's dialog has closed)."""
    said = str(
        until(
            driver,
            f"the outcome {contains!r}",
            lambda d: (t := d.find_element("id", "flash").text) and contains in t and t,
            timeout,
        )
    )
    until(driver, "the dialog to close after the outcome", lambda d: not dialog_open(d))
    return said


def console_errors(driver: Any, expected: tuple[str, ...] = ()) -> list[str]:
    """The browser's errors, but for the failed requests a test provoked (each must have been logged)."""
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    for wanted in expected:
        assert any(wanted in e for e in errors), f"expected a console error with {wanted!r}, got {errors}"
    return [e for e in errors if not any(wanted in e for wanted in expected)]


def screenshot(driver: Any, path: Path) -> Path:
    """The whole page: the viewport is made as tall as the document for the shot."""
    width = int(driver.execute_script("return document.documentElement.clientWidth"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": width, "height": min(height, 8000), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_script("window.scrollTo(0, 0)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


# The WCAG 2.x contrast ratio of each visible element's text against the first opaque background behind it.
_CONTRAST_JS = """
function parse(c) {
  var m = /rgba?\\(([^)]+)\\)/.exec(c || "");
  if (!m) { return null; }
  var p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
  return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
}
function lum(c) {
  function ch(v) { v = v / 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }
  return 0.2126 * ch(c.r) + 0.7152 * ch(c.g) + 0.0722 * ch(c.b);
}
function background(el) {
  for (; el && el.nodeType === 1; el = el.parentNode) {
    var c = parse(getComputedStyle(el).backgroundColor);
    if (c && c.a > 0.99) { return c; }
  }
  return {r: 255, g: 255, b: 255, a: 1};
}
var out = [];
arguments[0].forEach(function (selector) {
  document.querySelectorAll(selector).forEach(function (el) {
    if (!el.getClientRects().length || el.disabled) { return; }
    var style = getComputedStyle(el);
    var fg = parse(el.namespaceURI === "http://www.w3.org/2000/svg" ? style.fill : style.color);
    var bg = background(el);
    var a = lum(fg), b = lum(bg);
    out.push({selector: selector, text: (el.textContent || "").slice(0, 40),
              ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)});
  });
});
return out;
"""


def contrast(driver: Any, selectors: list[str]) -> list[dict[str, Any]]:
    """Each visible element's contrast ratio (text colour, or an SVG text's fill, on its background)."""
    return list(driver.execute_script(_CONTRAST_JS, selectors))


# -- the stub: the functions' HTTP contract, with hostile registry strings ----------------------------


def _decision(won: bool, accuracy: float, champion: float | None, champion_version: str | None) -> dict[str, Any]:
    """A decision record as shared.domain.Verdict.to_tag writes it."""
    return {
        "won": won,
        "reason": EVIL,
        "primary_metric": "accuracy",
        "direction": "maximize",
        "challenger": {"accuracy": accuracy, "f1_macro": accuracy - 0.02},
        "champion": None if champion is None else {"accuracy": champion, "f1_macro": champion - 0.02},
        "champion_version": champion_version,
        "min_improvement": 0.01,
        "guardrails": {"f1_macro": 0.5, "accuracy": 0.8},
    }


class Stub:
    """Serves the real page and answers the functions it calls; records every request the page sends."""

    key = "stub-admin-key"

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.champion = "2"
        self.v3 = ("staged", "pending")
        self.held: dict[str, str] | None = None
        self.history: list[dict[str, Any]] = [
            {
                "at": "2026-11-23T10:00:00+00:00",
                "kind": "deployment",
                "what": "v2 deployed to " + EVIL,
                "version": "2",
                "who": "signalbox",
                "why": EVIL,
                "correlation_id": "corr-2",
            },
            {
                "at": "2026-11-22T10:00:00+00:00",
                "kind": "deployment",
                "what": "v1 deployed to " + EVIL,
                "version": "1",
                "who": "signalbox",
                "why": "first version",
                "correlation_id": "corr-1",
            },
        ]
        self.dead = {
            "m-dead-1": {
                "message_id": "m-dead-1",
                "queue": "deploy",
                "sequence_number": 7,
                "reason": "DeploymentFailed",
                "description": EVIL,
                "enqueued_time": "2026-11-23T09:00:00+00:00",
                "dead_lettered_time": "2026-11-23T09:01:00+00:00",
                "delivery_count": 1,
                "correlation_id": "corr-dead-1",
                "replay_count": 0,
                "session_id": EVIL_MODEL,
                "subject": "DeployVersion",
                "content_type": "application/json",
                "original_message_id": None,
                "application_properties": {"model_name": EVIL_MODEL},
                "body": json.dumps({"command": {"model_name": EVIL_MODEL, "note": EVIL}}),
                "body_encoding": "utf-8",
            },
            "m-dead-2": {
                "message_id": "m-dead-2",
                "queue": "train",
                "sequence_number": 9,
                "reason": "MaxDeliveryCountExceeded",
                "description": "Message could not be consumed after 10 delivery attempts.",
                "enqueued_time": "2026-11-23T09:30:00+00:00",
                "dead_lettered_time": "2026-11-23T09:31:00+00:00",
                "delivery_count": 10,
                "correlation_id": "corr-dead-2",
                "replay_count": 0,
                "session_id": None,
                "subject": "TrainModel",
                "content_type": "application/json",
                "original_message_id": None,
                "application_properties": {"model_name": "other-model"},
                "body": "{}",
                "body_encoding": "utf-8",
            },
        }
        self.grid = {
            "evt-1": {
                "source": "eventgrid",
                "event_id": "evt-1",
                "function": "landing_events",
                "subscription": "landing",
                "event_type": "Microsoft.Storage.BlobCreated",
                "subject": EVIL,
                "reason": "MaxDeliveryAttemptsExceeded",
                "delivery_attempts": 30,
                "last_delivery_outcome": "Probation",
                "last_http_status_code": 503,
                "publish_time": "2026-11-23T08:00:00+00:00",
                "dead_lettered_time": "2026-11-24T08:00:00+00:00",
                "replay_count": 0,
                "topic": "/subscriptions/x/storage",
                "blob": "landing/2026/11/24/08/evt.json",
                "index": 0,
                "schema": "EventGridSchema",
                "last_delivery_attempt_time": "2026-11-24T07:59:00+00:00",
                "event": {"id": "evt-1", "subject": EVIL, "data": {"url": EVIL}},
            }
        }
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def posts(self, path: str) -> list[dict[str, Any]]:
        """The POSTs the page sent to ``path`` (the key and body of each)."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def overview(self) -> dict[str, Any]:
        stage3, approval3 = self.v3
        if stage3 == "production" and self.champion != "3":
            stage3 = "unstaged"  # rolled back from (the tag shared/handlers/deployment.py's rollback gives it)
        versions = [
            {
                "version": "1",
                "stage": "production" if self.champion == "1" else "surpassed",
                "decision": _decision(True, 0.90, None, None),
                "deployment": {
                    "status": "deployed",
                    "endpoint": EVIL,
                    "slot": "blue",
                    "at": "2026-11-22 10:00:00+00:00",
                },
            },
            {
                "version": "2",
                "stage": "production" if self.champion == "2" else "surpassed",
                "decision": _decision(True, 0.9333, 0.90, "1"),
                "deployment": {
                    "status": "deployed",
                    "endpoint": EVIL,
                    "slot": "green",
                    "at": "2026-11-23 10:00:00+00:00",
                },
            },
            {
                "version": "3",
                "stage": stage3,
                "approval": approval3,
                "decision": _decision(True, 0.9667, 0.9333, "2"),
                "deployment": None,
            },
            {"version": "4", "stage": None, "decision": _decision(False, 0.8667, 0.9333, "2"), "deployment": None},
        ]
        for v in versions:
            v.update(
                aliases=["champion"] if v["version"] == self.champion else [],
                approved_by=EVIL if v.get("approval") == "approved" else None,
                outcome=EVIL,
                commit_sha=EVIL,
                repository=EVIL,
                created_at="2026-11-23 09:58:00.123456+00:00",
            )
            v.setdefault("approval", None)
        return {
            "environment": "dev",
            "models": [
                {
                    "model": EVIL_MODEL,
                    "kind": "trained",
                    "endpoint": "javascript:window.pwned=3",
                    "champion": self.champion,
                    "challenger": "3" if stage3 == "staged" else None,
                    "versions": versions,
                    "last_refusal": {"reason": EVIL, "at": "2026-11-23"},
                    "last_failure": None,
                    "held": self.held,
                }
            ],
            "pending_approvals": [
                {"model": EVIL_MODEL, "version": "3", "environment": EVIL, "reason": EVIL, "created_at": None}
            ]
            if self.v3 == ("staged", "pending")
            else [],
            "eventgrid_dead_letters": len(self.grid),
            "queues": {
                "train": {"active": 2, "scheduled": 0, "locked": 1, "dead_letter": 1},
                "deploy": {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 3},
            },
        }

    def answer_get(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/api/ops/overview":
            return 200, self.overview()
        if path == f"/api/history/{EVIL_MODEL}":
            assert query.get("since") == ["7d"], query
            return 200, {"model": EVIL_MODEL, "entries": self.history}
        if path == "/api/ops/deadletters" and query.get("source") == ["eventgrid"]:
            # shared/deadletters/eventgrid.py's summary view
            summary = [{k: v for k, v in e.items() if k not in ("event", "blob", "topic")} for e in self.grid.values()]
            return 200, {"filters": {}, "count": len(summary), "dead_letters": summary}
        if path == "/api/ops/deadletters":
            assert query.get("source") == ["queues"], query
            summary = [
                {
                    k: d[k]
                    for k in (
                        "message_id",
                        "queue",
                        "sequence_number",
                        "reason",
                        "description",
                        "enqueued_time",
                        "dead_lettered_time",
                        "delivery_count",
                        "correlation_id",
                        "replay_count",
                    )
                }
                for d in self.dead.values()
            ]
            return 200, {"filters": {}, "count": len(summary), "dead_letters": summary}
        if path.startswith("/api/ops/deadletters/"):
            kept = self.grid if query.get("source") == ["eventgrid"] else self.dead
            found = kept.get(path.rsplit("/", 1)[1])
            return (200, found) if found else (404, {"error": "no such dead letter"})
        return 404, {"error": f"no route for {path}"}

    def answer_post(self, path: str, body: Any) -> tuple[int, Any]:
        model_path = f"/api/models/{EVIL_MODEL}/"
        if path.startswith(f"/api/approvals/{EVIL_MODEL}/3/"):
            if self.held:
                return 409, {"error": f"{EVIL_MODEL} is held by {self.held['by']}: {self.held['reason']}"}
            decision = path.rsplit("/", 1)[1]
            self.v3 = ("production", "approved") if decision == "approve" else ("unstaged", "rejected")
            if decision == "approve":
                self.champion = "3"
            return 202, {"model": EVIL_MODEL, "version": "3", "decision": decision + "d"}
        if path == model_path + "rollback":
            previous, self.champion = self.champion, body["to"] or "1"
            self.history.insert(
                0,
                {
                    "at": "2026-11-23T11:00:00+00:00",
                    "kind": "rollback",
                    "what": f"rollback to v{self.champion} requested (v{previous} serves)",
                    "version": self.champion,
                    "who": body["by"],
                    "why": body["reason"],
                    "correlation_id": body["request_id"],
                },
            )
            return 202, {
                "model": EVIL_MODEL,
                "to_version": self.champion,
                "from_version": previous,
                "request_id": body["request_id"],
                "outcome": "queued",
            }
        if path in (model_path + "hold", model_path + "release"):
            hold = path.endswith("hold")
            self.held = (
                {"by": body["by"], "reason": body["reason"], "at": "2026-11-23T11:00:00+00:00"} if hold else None
            )
            self.history.insert(
                0,
                {
                    "at": "2026-11-23T11:05:00+00:00",
                    "kind": "hold" if hold else "release",
                    "what": EVIL_MODEL + (" held: no automatic deployment" if hold else " released"),
                    "version": None,
                    "who": body["by"],
                    "why": body["reason"],
                    "correlation_id": None,
                },
            )
            # The shapes of shared/handlers/operator.py's hold and release.
            if hold:
                return 200, {
                    "model": EVIL_MODEL,
                    "held": self.held,
                    "outcome": "held",
                    "request_id": body["request_id"],
                }
            return 200, {
                "model": EVIL_MODEL,
                "held": None,
                "request_id": body["request_id"],
                "sent": None,
                "outcome": "released",
            }
        if path in ("/api/ops/deadletters/replay", "/api/ops/deadletters/purge") and body["source"] == "eventgrid":
            # Event Grid's filters take the queue requests' spellings (function = queue, event id = message id).
            chosen_events = [
                e for e in self.grid.values() if e["event_id"] == body["message_id"] and e["function"] == body["queue"]
            ]
            replay = path.endswith("replay")
            dry, real = ("would_replay", "replayed") if replay else ("would_purge", "purged")
            status = dry if body.get("dry_run") else real
            if not body.get("dry_run"):
                for e in chosen_events:
                    del self.grid[e["event_id"]]
            outcomes = [
                {"source": "eventgrid", "function": e["function"], "event_id": e["event_id"], "status": status}
                for e in chosen_events
            ]
            return 200, {"dry_run": bool(body.get("dry_run")), "counts": {status: len(outcomes)}, "outcomes": outcomes}
        if path in ("/api/ops/deadletters/replay", "/api/ops/deadletters/purge"):
            assert body.pop("source") == "queues", body
            replay = path.endswith("replay")
            chosen = [
                d
                for d in self.dead.values()
                if d["message_id"] == body.get("message_id") and d["queue"] == body.get("queue")
            ]
            if not replay and not body.get("dry_run") and body.get("confirm") != body.get("queue"):
                return 400, {"error": f"confirm with the queue name {body.get('queue')!r}"}
            dry, real = ("would_replay", "replayed") if replay else ("would_purge", "purged")
            status = dry if body.get("dry_run") else real
            outcomes = [
                {
                    "queue": d["queue"],
                    "message_id": d["message_id"],
                    "sequence_number": d["sequence_number"],
                    "status": status,
                    **({"new_message_id": d["message_id"] + ":replay-1", "replay_count": 1} if replay else {}),
                }
                for d in chosen
            ]
            if not body.get("dry_run"):
                for d in chosen:
                    del self.dead[d["message_id"]]
            return 200, {
                "filters": {},
                "dry_run": bool(body.get("dry_run")),
                "counts": {status: len(chosen)},
                "outcomes": outcomes,
            }
        return 404, {"error": f"no route for {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: Any) -> None:
                self._answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path, query = unquote(parts.path), parse_qs(parts.query)
                if path == "/api/ops":
                    nonce = "stubnonce123"
                    refresh = ops_page.parse_refresh(query.get("refresh", [""])[0])
                    page = ops_page.render_page(nonce=nonce, refresh_seconds=refresh).encode()
                    self._answer(
                        200, page, {"Content-Type": "text/html; charset=utf-8", **ops_page.page_headers(nonce)}
                    )
                    return
                with stub.lock:
                    stub.requests.append({"method": "GET", "path": path, "key": self.headers.get("x-functions-key")})
                    if self.headers.get("x-functions-key") != stub.key:
                        self._json(401, {"error": "Unauthorized"})
                        return
                    self._json(*stub.answer_get(path, query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                path = unquote(urlsplit(self.path).path)
                body = json.loads(self.rfile.read(length) or b"null")
                with stub.lock:
                    stub.requests.append(
                        {
                            "method": "POST",
                            "path": path,
                            "key": self.headers.get("x-functions-key"),
                            "content_type": self.headers.get("Content-Type"),
                            "body": body,
                        }
                    )
                    if self.headers.get("x-functions-key") != stub.key:
                        self._json(401, {"error": "Unauthorized"})
                        return
                    self._json(*stub.answer_post(path, json.loads(json.dumps(body))))

        return Handler

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    with Stub() as running:
        yield running


def open_page(driver: Any, url: str, key: str, refresh: int = 1) -> None:
    driver.get(f"{url}/api/ops?code={key}&refresh={refresh}")
    until(driver, "the first refresh", lambda d: d.find_element("id", "status").text.startswith("updated"))


# -- the tests ----------------------------------------------------------------------------------------


def test_registry_strings_render_as_text_and_the_chart_draws_the_versions(
    browser: Any, stub: Stub, tmp_path: Path
) -> None:
    open_page(browser, stub.url, stub.key)
    until(browser, "the stub's model", lambda d: version_row(d, EVIL_MODEL, "3"))
    until(browser, "the history", lambda d: model_card(d, EVIL_MODEL).find_elements("css selector", "ol.history li"))
    until(
        browser,
        "the dead letters' models",
        lambda d: dead_row(d, "m-dead-1").find_element("css selector", "td.dl-model").text == EVIL_MODEL,
    )
    assert browser.execute_script("return window.pwned") is None
    # Nothing the functions answered became an element: one script (the page's), no img, no b.
    assert browser.execute_script("return document.scripts.length") == 1
    assert browser.find_elements("css selector", "main img, main b, main script, header img, dialog img") == []
    main = browser.find_element("tag name", "main").text
    # reason x4 versions, outcome, repository, refusal, approval row (env and reason), history, dead letter error
    assert main.count(EVIL) >= 10, main
    assert EVIL_MODEL in main
    assert browser.find_elements("css selector", "#models a") == []  # a javascript: URL is not made a link
    deploy_dead = browser.find_element("css selector", "#queues tr[data-queue='deploy'] td:last-child")
    assert deploy_dead.text == "3" and "bad" in deploy_dead.get_attribute("class")

    # The chart: one point per evaluated version, the champion ringed, the bar to beat and the guardrail drawn.
    card = model_card(browser, EVIL_MODEL)
    svg = card.find_element("css selector", "svg.metric-chart")
    assert svg.get_attribute("data-metric") == "accuracy"
    points = {
        p.get_attribute("data-version"): (float(p.get_attribute("data-value")), p.get_attribute("class"))
        for p in svg.find_elements("css selector", "g.point")
    }
    assert points == {
        "1": (0.90, "point won"),
        "2": (0.9333, "point champion won"),
        "3": (0.9667, "point won"),
        "4": (0.8667, "point lost"),
    }

    def label(group: str) -> tuple[str, str]:
        found = svg.find_element("css selector", f"g.{group}")
        return (
            found.find_element("css selector", "text.label").text,
            found.find_element("css selector", "text.note").text,
        )

    assert label("threshold") == ("to beat: > 0.9433", "(champion v2 + 0.01)")
    assert label("guardrail") == ("guardrail ≥ 0.8000", "(a version beyond it loses)")

    # Higher values sit higher (a smaller y): the threshold line between v2 (0.9333) and v3 (0.9667).
    def cy(version: str) -> float:
        circle = svg.find_elements("css selector", f"g.point[data-version='{version}'] circle")[-1]
        return float(circle.get_attribute("cy"))

    line_y = float(svg.find_element("css selector", "g.threshold line").get_attribute("y1"))
    assert cy("3") < line_y < cy("2") < cy("1") < cy("4")
    desc = svg.find_element("css selector", "desc").get_attribute("textContent")
    assert "v2 0.9333 won (champion)" in desc and "to beat" in desc
    # History: newest first, as text.
    kinds = [
        (e.get_attribute("data-kind"), e.get_attribute("data-version"))
        for e in card.find_elements("css selector", "ol.history li")
    ]
    assert kinds == [("deployment", "2"), ("deployment", "1")]
    notice = browser.find_element("css selector", "#eventgrid-deadletters .notice").text
    assert notice.startswith("Event Grid gave up on 1 event (kept in its dead-letter container)"), notice
    grid_cells = [c.text for c in dead_row(browser, "evt-1").find_elements("css selector", "td")][:6]
    assert grid_cells[:3] == [
        "Event Grid → landing_events",
        "MaxDeliveryAttemptsExceeded",
        f"Probation · HTTP 503 · Microsoft.Storage.BlobCreated · {EVIL}",
    ]
    # The dead letters: queue, reason, error, age, model (from the message), correlation id.
    cells = [c.text for c in dead_row(browser, "m-dead-1").find_elements("css selector", "td")][:6]
    assert cells[:3] == ["deploy", "DeploymentFailed", EVIL] and cells[4:] == [EVIL_MODEL, "corr-dead-1"]
    assert re.fullmatch(r"\d+d \d+h", cells[3]), cells[3]
    assert browser.execute_script("return window.pwned") is None
    shot = screenshot(browser, tmp_path / "ops-page-stub.png")
    assert shot.stat().st_size > 10_000
    assert console_errors(browser) == []


def test_every_action_asks_who_and_why_sends_it_and_shows_the_outcome(browser: Any, stub: Stub, tmp_path: Path) -> None:
    open_page(browser, stub.url, stub.key)
    until(browser, "the pending approval", lambda d: pending_row(d, EVIL_MODEL, "3"))

    # Approve: without a name nothing is sent, the dialog says why.
    press(browser, "the approval row", lambda d: pending_row(d, EVIL_MODEL, "3"), "approve")
    fill_dialog(browser, "", "looks good")
    error = until(browser, "the missing name", lambda d: d.find_element("id", "dialog-error").text)
    assert error == "Give your name: it is kept with the record."
    assert stub.posts(f"/api/approvals/{EVIL_MODEL}/3/approve") == [] and dialog_open(browser)
    browser.find_element("id", "dialog-cancel").click()
    assert not dialog_open(browser)

    # Hold: the model shows as held, and an approval of a held model is refused with the reason, shown.
    press(browser, "the model card", lambda d: model_card(d, EVIL_MODEL), "hold")
    fill_dialog(browser, "Ada", "incident 42: bad scores")
    assert flash(browser, "held by Ada") == f"{EVIL_MODEL} held by Ada: incident 42: bad scores"
    [held] = [p["body"] for p in stub.posts(f"/api/models/{EVIL_MODEL}/hold")]
    assert re.fullmatch(r"ops-[0-9a-f]{32}", held.pop("request_id"))
    assert held == {"by": "Ada", "reason": "incident 42: bad scores"}
    until(
        browser, "the held badge", lambda d: model_card(d, EVIL_MODEL).find_elements("css selector", "h3 .badge.held")
    )
    notice = model_card(browser, EVIL_MODEL).find_element("css selector", ".held-notice").text
    assert notice.startswith("held by Ada: incident 42: bad scores")
    press(browser, "the approval row", lambda d: pending_row(d, EVIL_MODEL, "3"), "approve")
    fill_dialog(browser, "Ada", "ship it")
    refused = until(browser, "the refusal", lambda d: d.find_element("id", "dialog-error").text)
    assert refused == f"Could not approve {EVIL_MODEL} v3: 409: {EVIL_MODEL} is held by Ada: incident 42: bad scores"
    assert dialog_open(browser)  # left open: the person reads why
    browser.find_element("id", "dialog-cancel").click()

    # Release, then approve.
    press(browser, "the model card", lambda d: model_card(d, EVIL_MODEL), "release")
    fill_dialog(browser, "Ada", "incident over")
    flash(browser, f"{EVIL_MODEL} released by Ada: incident over")
    press(browser, "the approval row", lambda d: pending_row(d, EVIL_MODEL, "3"), "approve")
    fill_dialog(browser, "Grace", "better by 0.03")
    assert flash(browser, "Approved").startswith(f"Approved {EVIL_MODEL} v3 (approved) by Grace")
    until(browser, "v3 in production", lambda d: stage(d, EVIL_MODEL, "3") == "production")
    approvals = stub.posts(f"/api/approvals/{EVIL_MODEL}/3/approve")
    assert [(a["key"], a["content_type"], a["body"]) for a in approvals] == [
        (stub.key, "application/json", {"by": "Ada", "reason": "ship it"}),
        (stub.key, "application/json", {"by": "Grace", "reason": "better by 0.03"}),
    ]

    # Roll back: the picker offers the versions that served before (not the one serving now).
    press(browser, "the model card", lambda d: model_card(d, EVIL_MODEL), "rollback")
    until(browser, "the action dialog", dialog_open)
    options = [(o.get_attribute("value"), o.text) for o in browser.find_elements("css selector", "#rollback-to option")]
    assert options == [("", "the previous production version"), ("2", "v2"), ("1", "v1")]
    dialog = fill_dialog(browser, "Grace", "v3 misbehaves", select={"rollback-to": "1"}, confirm=False)
    # A double click is one rollback: the button is disabled from the first click until the answer.
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).double_click(dialog.find_element("id", "dialog-confirm")).perform()
    message = flash(browser, "Rollback of")
    [sent] = stub.posts(f"/api/models/{EVIL_MODEL}/rollback")
    request_id = sent["body"].pop("request_id")
    assert re.fullmatch(r"ops-[0-9a-f]{32}", request_id)
    assert sent["body"] == {"to": "1", "by": "Grace", "reason": "v3 misbehaves"}
    assert message == f"Rollback of {EVIL_MODEL} queued: v3 → v1 (request {request_id}) by Grace"
    until(browser, "v1 in production", lambda d: stage(d, EVIL_MODEL, "1") == "production")
    until(
        browser,
        "the rollback in the history",
        lambda d: (
            model_card(d, EVIL_MODEL).find_element("css selector", "ol.history li").get_attribute("data-kind")
            == "rollback"
        ),
    )

    # Dead letters: show one, replay it after a dry run, purge the other after typing its queue.
    press(browser, "the dead letter", lambda d: dead_row(d, "m-dead-1"), "show")
    detail = until(browser, "the dead letter's detail", lambda d: d.find_element("id", "deadletter-body").text and d)
    body = detail.find_element("id", "deadletter-body").text
    assert json.loads(body) == {"command": {"model_name": EVIL_MODEL, "note": EVIL}}
    assert detail.find_element("css selector", "dd[data-field='error']").text == EVIL
    press(browser, "the dead letter", lambda d: dead_row(d, "m-dead-1"), "replay")
    preview = until(browser, "the dry run", lambda d: "Dry run:" in d.find_element("id", "dialog-preview").text and d)
    assert (
        "would replay: deploy m-dead-1 → m-dead-1:replay-1 (replay 1)"
        in preview.find_element("id", "dialog-preview").text
    )
    assert [p["body"] for p in stub.posts("/api/ops/deadletters/replay")] == [
        {"source": "queues", "queue": "deploy", "message_id": "m-dead-1", "dry_run": True}
    ]
    fill_dialog(browser, "Grace", "the endpoint is back")
    assert flash(browser, "Replayed").startswith("Replayed deploy m-dead-1 (1 replayed) by Grace")
    assert [p["body"] for p in stub.posts("/api/ops/deadletters/replay")][1:] == [
        {
            "source": "queues",
            "queue": "deploy",
            "message_id": "m-dead-1",
            "by": "Grace",
            "reason": "the endpoint is back",
        }
    ]
    until(browser, "the replayed dead letter to go", lambda d: dead_row(d, "m-dead-1") is None)

    press(browser, "the dead letter", lambda d: dead_row(d, "m-dead-2"), "purge")
    fill_dialog(browser, "Grace", "junk", type_in={"purge-confirm": "deploy"})
    assert until(browser, "the confirmation check", lambda d: d.find_element("id", "dialog-error").text) == (
        "Type the queue name train to confirm the purge."
    )
    assert [p["body"].get("dry_run") for p in stub.posts("/api/ops/deadletters/purge")] == [True]
    fill_dialog(browser, "Grace", "junk", type_in={"purge-confirm": "train"})
    assert flash(browser, "Purged").startswith("Purged train m-dead-2 (1 purged) by Grace: junk")
    assert stub.posts("/api/ops/deadletters/purge")[-1]["body"] == {
        "source": "queues",
        "queue": "train",
        "message_id": "m-dead-2",
        "confirm": "train",
        "by": "Grace",
        "reason": "junk",
    }
    # An event Event Grid gave up on: shown as the event, replayed through the same dialog after a dry run.
    press(browser, "the Event Grid dead letter", lambda d: dead_row(d, "evt-1"), "show")
    event = until(
        browser,
        "the event",
        lambda d: (
            d.find_element("css selector", "#deadletter-detail h3").text.startswith("Event Grid event evt-1")
            and d.find_element("id", "deadletter-body").text
        ),
    )
    assert json.loads(event) == {"id": "evt-1", "subject": EVIL, "data": {"url": EVIL}}
    press(browser, "the Event Grid dead letter", lambda d: dead_row(d, "evt-1"), "replay")
    until(
        browser,
        "the dry run",
        lambda d: "would replay: landing_events evt-1" in d.find_element("id", "dialog-preview").text,
    )
    fill_dialog(browser, "Grace", "the landing function is fixed")
    assert flash(browser, "Replayed landing_events").startswith("Replayed landing_events evt-1 (1 replayed) by Grace")
    assert [p["body"] for p in stub.posts("/api/ops/deadletters/replay")][2:] == [
        {"source": "eventgrid", "queue": "landing_events", "message_id": "evt-1", "dry_run": True},
        {
            "source": "eventgrid",
            "queue": "landing_events",
            "message_id": "evt-1",
            "by": "Grace",
            "reason": "the landing function is fixed",
        },
    ]
    until(browser, "no dead letters", lambda d: "No dead letters." in d.find_element("id", "deadletters").text)
    log = [li.text for li in browser.find_elements("css selector", "#actions-log li")]
    # Newest first; each line: the time, then the outcome.
    said = [line.split(" · ", 1)[1].split(" ", 1)[0] for line in log]
    assert said == [
        "Replayed",
        "Purged",
        "Replayed",
        "Rollback",
        "Approved",
        EVIL_MODEL.split()[0],
        "Could",
        EVIL_MODEL.split()[0],
    ]
    assert all(r["key"] == stub.key for r in stub.requests)
    assert browser.execute_script("return window.pwned") is None
    screenshot(browser, tmp_path / "ops-page-stub-after-actions.png")
    assert (
        console_errors(
            browser, expected=("/3/approve - Failed to load resource: the server responded with a status of 409",)
        )
        == []
    )


def test_the_page_works_from_the_keyboard(browser: Any, stub: Stub, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    open_page(browser, stub.url, stub.key, refresh=2)
    until(browser, "the model's buttons", lambda d: model_card(d, EVIL_MODEL))

    def active() -> Any:
        return browser.switch_to.active_element

    def tab_to(what: str, matches: Callable[[Any], bool], limit: int = 80) -> Any:
        for _ in range(limit):
            element = active()
            if matches(element):
                return element
            element.send_keys(Keys.TAB)
        raise AssertionError(f"{what} was not reached with Tab in {limit} presses")

    browser.find_element("tag name", "body").send_keys(Keys.TAB)
    hold = tab_to("the Hold button", lambda e: e.get_attribute("data-action") == "hold")
    assert hold.tag_name == "button" and hold.get_attribute("aria-label") == f"Hold {EVIL_MODEL}"
    ring = browser.execute_script(
        "var s = getComputedStyle(arguments[0]); return [s.outlineStyle, parseFloat(s.outlineWidth)];", hold
    )
    assert ring[0] == "solid" and ring[1] >= 2, ring  # the focus is visible
    hold.send_keys(Keys.SPACE)
    until(browser, "the dialog", dialog_open)
    assert active().get_attribute("id") == "action-by"  # focus moves into the dialog
    active().send_keys("Keyboard Kay")
    active().send_keys(Keys.TAB)
    assert active().get_attribute("id") == "action-reason"
    active().send_keys("held from the keyboard")
    active().send_keys(Keys.TAB)
    assert active().get_attribute("id") == "dialog-cancel"
    active().send_keys(Keys.TAB)
    assert active().get_attribute("id") == "dialog-confirm"
    active().send_keys(Keys.ENTER)
    flash(browser, f"{EVIL_MODEL} held by Keyboard Kay: held from the keyboard")
    assert [p["body"]["by"] for p in stub.posts(f"/api/models/{EVIL_MODEL}/hold")] == ["Keyboard Kay"]
    # After the dialog closes and the card re-renders, the focus is back on the card's hold/release button.
    until(browser, "the focus back on the card", lambda d: active().get_attribute("data-action") == "release")
    # Once the hold is in the history the card stays as it is (until the data changes again).
    until(
        browser,
        "the hold in the history",
        lambda d: (
            model_card(d, EVIL_MODEL).find_element("css selector", "ol.history li").get_attribute("data-kind") == "hold"
        ),
    )
    release = active()
    assert release.get_attribute("data-action") == "release"
    # Escape closes a dialog without sending anything; the focus returns to the button that opened it.
    release.send_keys(Keys.ENTER)
    until(browser, "the dialog", dialog_open)
    active().send_keys(Keys.ESCAPE)
    until(browser, "the dialog to close", lambda d: not dialog_open(d))
    assert active().get_attribute("data-action") == "release"
    assert stub.posts(f"/api/models/{EVIL_MODEL}/release") == []
    # Enter in the name field submits the form.
    release.send_keys(Keys.ENTER)
    until(browser, "the dialog", dialog_open)
    reason = browser.find_element("id", "action-reason")
    reason.send_keys("done")
    by = browser.find_element("id", "action-by")
    assert by.get_attribute("value") == "Keyboard Kay"  # remembered from the last action
    by.send_keys(Keys.ENTER)
    flash(browser, "released by Keyboard Kay: done")
    assert console_errors(browser) == []


def test_text_and_buttons_meet_wcag_aa_contrast(browser: Any, stub: Stub, tmp_path: Path) -> None:
    open_page(browser, stub.url, stub.key)
    until(browser, "the chart", lambda d: d.find_elements("css selector", "svg.metric-chart"))
    until(browser, "the dead letters", lambda d: dead_row(d, "m-dead-1"))
    selectors = [
        "body",
        "header h1",
        "header .summary",
        "header .status",
        "header .env",
        "h2",
        "th",
        "td",
        ".meta",
        ".empty",
        ".notice",
        ".notice.bad",
        ".badge",
        "time",
        ".line",
        ".line .label",
        "code",
        "button",
        "svg.metric-chart text",
        "ol.history .badge",
        ".chart-legend li",
    ]
    # Every button kind, the dialog and the outcomes too.
    press(browser, "the approval row", lambda d: pending_row(d, EVIL_MODEL, "3"), "approve")
    fill_dialog(browser, "Ann", "ok")
    flash(browser, "Approved")
    press(browser, "the dead letter", lambda d: dead_row(d, "m-dead-2"), "purge")
    until(browser, "the dry run", lambda d: d.find_element("id", "dialog-preview").text.startswith("Dry run:"))
    fill_dialog(browser, "Ann", "x", type_in={"purge-confirm": "wrong"})
    until(browser, "the confirmation check", lambda d: d.find_element("id", "dialog-error").text)
    selectors += [
        "dialog h2",
        "dialog p",
        "dialog label",
        "dialog .hint",
        "dialog button",
        ".preview",
        ".dialog-error",
        ".flash.ok",
        "#actions-log li",
    ]
    measured = contrast(browser, selectors)
    seen = {m["selector"] for m in measured}
    assert seen >= {"button", "svg.metric-chart text", ".badge", "dialog button", ".flash.ok", ".dialog-error"}, seen
    low = [m for m in measured if m["ratio"] < AA_TEXT]
    assert low == [], low
    worst = min(measured, key=lambda m: m["ratio"])
    print(f"\ncontrast: {len(measured)} elements, lowest {worst['ratio']:.2f}:1 ({worst['selector']})")
    browser.find_element("id", "dialog-cancel").click()
    assert console_errors(browser) == []


def test_a_wrong_key_says_how_to_open_the_page(browser: Any, stub: Stub) -> None:
    browser.get(f"{stub.url}/api/ops?code=wrong&refresh=1")
    status = until(browser, "the refresh error", lambda d: "401" in d.find_element("id", "status").text and d)
    assert "/api/ops?code=<admin key>" in status.find_element("id", "status").text
    assert not any(r["method"] == "POST" for r in stub.requests)
