"""The ops page in headless Chromium: against a stub first (escaping, the approval request), then end to end.

The end-to-end test starts ``signalbox host --with-mlflow`` with ``tests.apps.ops_page_app``
(the function app plus the ops page) as tests/integration/test_lifecycle.py starts its stack,
lands a batch for ``lc-manual`` (manual approval in dev), waits until v1 waits for a person,
opens ``/api/ops?code=<admin key>``, clicks Approve and watches the page until v1's stage badge
says production. Screenshots land in the test's tmp dir.

Chromium is Debian's ``chromium`` + ``chromium-driver`` driven by Selenium; without them the
browser tests skip, except under CI (``CI=true``), where they must run and so fail.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from functions import ops_page
from tests.integration.test_lifecycle import STEP_TIMEOUT, Stack, running_stack

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
MODEL = "lc-manual"  # manual approval in dev (tests/integration/catalogue.toml)
QUEUE_NAMES = ("deploy", "evaluate", "poll-run", "promote", "train")
# Registry strings that would run or render as HTML if the page ever parsed them.
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
EVIL_MODEL = "evil <b>model</b> \"quoted\" & 'single'"


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


def _until(driver: Any, what: str, condition: Callable[[Any], Any], timeout: float = 20.0) -> Any:
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
            f"timed out after {timeout:.0f}s waiting for {what}; the page shows:\n{body[:3000]}"
        ) from None


def _version_row(driver: Any, model: str, version: str) -> Any:
    """The timeline entry of ``model`` ``version`` (names compared as data, not put into a selector)."""
    for card in driver.find_elements("css selector", "#models article.model"):
        if card.get_attribute("data-model") == model:
            for row in card.find_elements("css selector", "li.version"):
                if row.get_attribute("data-version") == version:
                    return row
    return None


def _pending_row(driver: Any, model: str, version: str) -> Any:
    for row in driver.find_elements("css selector", "#approvals tr.pending"):
        if row.get_attribute("data-model") == model and row.get_attribute("data-version") == version:
            return row
    return None


def _stage(driver: Any, model: str, version: str) -> str | None:
    row = _version_row(driver, model, version)
    return None if row is None else row.find_element("css selector", ".badge.stage").text


def _click(driver: Any, model: str, version: str, action: str) -> None:
    """Click a pending approval's button (again if a refresh replaced the row meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(10):
        row = _pending_row(driver, model, version)
        assert row is not None, f"{model} v{version} is not in the pending approvals"
        try:
            row.find_element("css selector", f"button[data-action='{action}']").click()
            return
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"could not click {action} for {model} v{version}")


def _console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _screenshot(driver: Any, path: Path) -> Path:
    """The whole page: the viewport is made as tall as the document for the shot."""
    width = int(driver.execute_script("return document.documentElement.clientWidth"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": width, "height": min(height, 8000), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


# -- against a stub: escaping and the approval request, in seconds --------------------------------


class _Stub:
    """Serves the real page and an overview full of HTML-looking registry strings; records approvals."""

    key = "stub-admin-key"

    def __init__(self) -> None:
        self.approvals: list[dict[str, Any]] = []
        self.approved = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def overview(self) -> dict[str, Any]:
        stage, approval = ("production", "approved") if self.approved else ("staged", "pending")
        version = {
            "version": "3",
            "stage": stage,
            "aliases": ["champion"] if self.approved else ["challenger"],
            "approval": approval,
            "approved_by": EVIL if self.approved else None,
            "decision": {"won": True, "reason": EVIL},
            "deployment": {"status": "deployed", "endpoint": EVIL, "slot": "blue", "at": "2026-11-23 10:00:00+00:00"}
            if self.approved
            else None,
            "outcome": EVIL,
            "commit_sha": EVIL,
            "repository": EVIL,
            "created_at": "2026-11-23 09:58:00.123456+00:00",
        }
        return {
            "environment": "dev",
            "models": [
                {
                    "model": EVIL_MODEL,
                    "kind": "trained",
                    "endpoint": "javascript:window.pwned=3",
                    "champion": "3" if self.approved else None,
                    "challenger": None if self.approved else "3",
                    "versions": [version],
                    "last_refusal": {"reason": EVIL, "at": "2026-11-23"},
                    "last_failure": None,
                }
            ],
            "pending_approvals": []
            if self.approved
            else [{"model": EVIL_MODEL, "version": "3", "environment": EVIL, "reason": EVIL, "created_at": None}],
            "queues": {
                "train": {"active": 2, "scheduled": 0, "locked": 1, "dead_letter": 0},
                "deploy": {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 3},
            },
        }

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
                if parts.path == "/api/ops":
                    nonce = "stubnonce123"
                    refresh = ops_page.parse_refresh(parse_qs(parts.query).get("refresh", [""])[0])
                    page = ops_page.render_page(nonce=nonce, refresh_seconds=refresh).encode()
                    headers = {"Content-Type": "text/html; charset=utf-8", **ops_page.page_headers(nonce)}
                    self._answer(200, page, headers)
                elif parts.path == "/api/ops/overview":
                    if self.headers.get("x-functions-key") != stub.key:
                        self._json(401, {"error": "Unauthorized", "message": "this endpoint needs an admin key"})
                    else:
                        self._json(200, stub.overview())
                else:
                    self._json(404, {"error": f"no route for {parts.path}"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                stub.approvals.append(
                    {
                        "path": unquote(urlsplit(self.path).path),
                        "key": self.headers.get("x-functions-key"),
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(self.rfile.read(length) or b"null"),
                    }
                )
                stub.approved = True
                self._json(202, {"model": EVIL_MODEL, "version": "3", "decision": "approved"})

        return Handler

    def __enter__(self) -> _Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_page_renders_registry_strings_as_text_and_posts_approvals(browser: Any, tmp_path: Path) -> None:
    with _Stub() as stub:
        browser.get(f"{stub.url}/api/ops?code={stub.key}&refresh=1")
        _until(browser, "the stub's model", lambda d: _version_row(d, EVIL_MODEL, "3"))
        assert browser.execute_script("return window.pwned") is None
        # Nothing the overview carried became an element: one script (the page's), no img, no b.
        assert browser.execute_script("return document.scripts.length") == 1
        assert browser.find_elements("css selector", "main img, main b, main script, header img") == []
        main = browser.find_element("tag name", "main").text
        assert main.count(EVIL) >= 5, main  # reason, outcome, repository, last refusal, the approval row
        assert EVIL_MODEL in main
        # A javascript: URL is not made a link.
        assert browser.find_elements("css selector", "#models a") == []
        # Queue depths with the dead letters flagged.
        deploy_dead = browser.find_element("css selector", "#queues tr[data-queue='deploy'] td:last-child")
        assert deploy_dead.text == "3" and "bad" in deploy_dead.get_attribute("class")
        _screenshot(browser, tmp_path / "ops-page-stub.png")

        _click(browser, EVIL_MODEL, "3", "approve")
        _until(browser, "the approved version in production", lambda d: _stage(d, EVIL_MODEL, "3") == "production")
        assert stub.approvals == [
            {
                "path": f"/api/approvals/{EVIL_MODEL}/3/approve",
                "key": stub.key,
                "content_type": "application/json",
                "body": {"by": "ops-page"},
            }
        ]
        flash = browser.find_element("id", "flash").text
        assert flash.startswith(f"Approved {EVIL_MODEL} v3 (approved)"), flash
        assert browser.execute_script("return window.pwned") is None
        assert _console_errors(browser) == []

        # A wrong key: the page says so instead of rendering nothing.
        browser.get(f"{stub.url}/api/ops?code=wrong&refresh=1")
        status = _until(browser, "the refresh error", lambda d: "401" in d.find_element("id", "status").text and d)
        assert "/api/ops?code=<admin key>" in status.find_element("id", "status").text


# -- end to end: the embedded default with the ops page ----------------------------------------------


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``signalbox host --with-mlflow`` serving tests.apps.ops_page_app (as test_lifecycle.py's stack)."""
    with running_stack(tmp_path_factory.mktemp("ops-page") / "state", app="tests.apps.ops_page_app:app") as stack:
        yield stack


def test_ops_endpoints_need_the_admin_key(ops_stack: Stack) -> None:
    page, overview = f"{ops_stack.url}/api/ops", f"{ops_stack.url}/api/ops/overview"
    assert requests.get(page, timeout=30).status_code == 401
    assert requests.get(page, params={"code": ops_stack.function_key}, timeout=30).status_code == 401
    assert requests.get(overview, params={"code": ops_stack.function_key}, timeout=30).status_code == 401
    opened = requests.get(page, params={"code": ops_stack.master_key}, timeout=30)
    assert opened.status_code == 200 and opened.headers["Content-Type"].startswith("text/html")
    assert "script-src 'nonce-" in opened.headers["Content-Security-Policy"]
    bad = requests.get(page, params={"code": ops_stack.master_key, "refresh": "often"}, timeout=30)
    assert bad.status_code == 400 and "refresh must be a whole number" in bad.json()["error"]
    data = requests.get(overview, headers={"x-functions-key": ops_stack.master_key}, timeout=60).json()
    assert set(data) >= {"environment", "models", "pending_approvals", "queues"}
    assert sorted(data["queues"]) == sorted(QUEUE_NAMES)
    assert all(set(c) == {"active", "scheduled", "locked", "dead_letter"} for c in data["queues"].values())


def test_approve_on_the_ops_page_and_watch_the_deployment(ops_stack: Stack, browser: Any, tmp_path: Path) -> None:
    stack, started = ops_stack, time.monotonic()
    stack.land(f"{MODEL}/", "batch-001.csv", "small", seed=11)
    stack.wait(f"{MODEL} v1 waiting for approval", lambda: stack.pending(MODEL, "1"))
    stack.settle()
    waited = time.monotonic() - started
    # A registry string that would be HTML if the page parsed it (the repository is display-only).
    stack.mlflow.set_model_version_tag(MODEL, "1", "signalbox.repository", EVIL)

    # The JSON the page reads agrees with the host's own queue counts (all idle now).
    data = requests.get(f"{stack.url}/api/ops/overview", params={"code": stack.master_key}, timeout=60).json()
    assert data["queues"] == {q: stack.host_status()["queues"][q] for q in QUEUE_NAMES}
    assert [(p["model"], p["version"]) for p in data["pending_approvals"]] == [(MODEL, "1")]

    browser.get(f"{stack.url}/api/ops?code={stack.master_key}&refresh=2")
    _until(browser, f"{MODEL} v1 staged on the page", lambda d: _stage(d, MODEL, "1") == "staged")
    assert _pending_row(browser, MODEL, "1") is not None
    assert browser.find_element("id", "environment").text == "dev"
    queue_rows = {
        row.get_attribute("data-queue"): [cell.text for cell in row.find_elements("css selector", "td.num")]
        for row in browser.find_elements("css selector", "#queues tr[data-queue]")
    }
    assert queue_rows == {q: ["0", "0", "0", "0"] for q in QUEUE_NAMES}
    cards = {c.get_attribute("data-model") for c in browser.find_elements("css selector", "#models article.model")}
    assert MODEL in cards and len(cards) == len(data["models"])
    row = _version_row(browser, MODEL, "1")
    assert EVIL in row.text and browser.execute_script("return window.pwned") is None
    assert "approval: pending" in row.text and "won" in row.text
    before = _screenshot(browser, tmp_path / "ops-page-pending.png")

    clicked = time.monotonic()
    _click(browser, MODEL, "1", "approve")
    _until(
        browser,
        f"{MODEL} v1 in production on the page",
        lambda d: _stage(d, MODEL, "1") == "production",
        timeout=STEP_TIMEOUT,
    )
    deployed = time.monotonic() - clicked
    row = _version_row(browser, MODEL, "1")
    assert "champion" in [b.text for b in row.find_elements("css selector", ".badge.alias")]
    assert "approval: approved by ops-page" in row.text
    assert "deployment: deployed to lc-manual" in row.text
    _until(
        browser,
        "the approvals list to empty",
        lambda d: "No version is waiting for approval." in d.find_element("id", "approvals").text,
    )
    assert browser.execute_script("return window.pwned") is None
    assert _console_errors(browser) == []
    after = _screenshot(browser, tmp_path / "ops-page-deployed.png")

    # The registry agrees with the page.
    assert stack.in_production(MODEL, "1")
    assert stack.tags(MODEL, "1")["approved_by"] == "ops-page"
    stack.settle()
    print(
        f"\nops page: v1 pending after {waited:.1f}s, in production {deployed:.1f}s after the click; "
        f"screenshots {before} {after}",
        file=sys.stderr,
    )
