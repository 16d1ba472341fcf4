"""The ops page against a real host and a real MLflow server, in headless Chromium: each button end to end.

One ``signalbox host --with-mlflow`` (the whole function app, ``function_app:app``) for the module,
started as tests/integration/test_lifecycle.py starts its stack. ``lc-manual`` waits for a person in
dev: the page approves v1, holds the model while v2 waits (the approval is refused with the hold's
reason), releases it, approves v2, rolls back to v1 from the version picker, and its history timeline
is the one ``GET /api/history`` answers; after each click the test reads the registry (MLflow) and the
endpoint. The Dead letters panel lists a poisoned message with its model, shows it, replays it after a
dry run (it fails again: the cause is not fixed) and purges the new dead letter after typing its
queue; the test reads the queues. Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.adapters.local.queues import LocalQueues, OutboundMessage
from tests.integration.test_lifecycle import STEP_TIMEOUT, Stack, running_stack
from tests.integration.test_ops_page import (  # noqa: F401 (browser: a fixture)
    _fresh,
    browser,
    console_errors,
    dead_row,
    dialog_open,
    fill_dialog,
    flash,
    model_card,
    pending_row,
    press,
    screenshot,
    stage,
    until,
    version_row,
)

pytestmark = pytest.mark.integration

MODEL = "lc-manual"  # manual approval in dev (tests/integration/catalogue.toml)
QUEUE_NAMES = ("deploy", "evaluate", "poll-run", "promote", "train")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``signalbox host --with-mlflow`` serving the whole function app."""
    with running_stack(tmp_path_factory.mktemp("ops-page-live") / "state") as stack:
        yield stack


def _open(driver: Any, stack: Stack) -> None:
    driver.get(f"{stack.url}/api/ops?code={stack.master_key}&refresh=2")
    until(driver, "the first refresh", lambda d: d.find_element("id", "status").text.startswith("updated"), 60)


def _model_tags(stack: Stack, model: str) -> dict[str, str]:
    return dict(stack.mlflow.get_registered_model(model).tags)


def _history(stack: Stack, model: str) -> list[dict[str, Any]]:
    answer = requests.get(
        f"{stack.url}/api/history/{model}",
        params={"since": "7d"},
        headers={"x-functions-key": stack.master_key},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["entries"])


def test_ops_endpoints_need_the_admin_key(live: Stack) -> None:
    page, overview = f"{live.url}/api/ops", f"{live.url}/api/ops/overview"
    assert requests.get(page, timeout=30).status_code == 401
    assert requests.get(page, params={"code": live.function_key}, timeout=30).status_code == 401
    assert requests.get(overview, params={"code": live.function_key}, timeout=30).status_code == 401
    opened = requests.get(page, params={"code": live.master_key}, timeout=30)
    assert opened.status_code == 200 and opened.headers["Content-Type"].startswith("text/html")
    assert "script-src 'nonce-" in opened.headers["Content-Security-Policy"]
    data = requests.get(overview, headers={"x-functions-key": live.master_key}, timeout=60).json()
    assert set(data) >= {"environment", "models", "pending_approvals", "queues"}
    assert sorted(data["queues"]) == sorted(QUEUE_NAMES)
    assert all("held" in m for m in data["models"])


def _pending_version(stack: Stack, model: str) -> str | None:
    """The version waiting for a person (the sweeps may register other versions: numbers are not fixed)."""
    for version in stack.versions(model):
        if stack.pending(model, version):
            return version
    return None


def test_approve_hold_release_roll_back_and_the_history_from_the_page(
    live: Stack,
    browser: Any,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    stack, started = live, time.monotonic()
    stack.land(f"{MODEL}/", "batch-001.csv", "small", seed=11)
    first = stack.wait(f"a {MODEL} version waiting for approval", lambda: _pending_version(stack, MODEL))
    stack.settle()
    _open(browser, stack)
    until(browser, f"{MODEL} v{first} staged on the page", lambda d: stage(d, MODEL, first) == "staged")

    # Approve it.
    press(browser, f"v{first}'s approval", lambda d: pending_row(d, MODEL, first), "approve")
    fill_dialog(browser, "Ada Ops", "first version, looks right")
    assert flash(browser, "Approved").startswith(f"Approved {MODEL} v{first} (approved) by Ada Ops")
    until(browser, f"v{first} in production", lambda d: stage(d, MODEL, first) == "production", STEP_TIMEOUT)
    stack.settle()
    assert stack.in_production(MODEL, first) and stack.tags(MODEL, first)["approved_by"] == "Ada Ops"
    serving = time.monotonic() - started

    # A better batch: its version waits for a person; hold the model from the page.
    stack.land(f"{MODEL}/", "batch-002.csv", "full", seed=2)
    second = stack.wait(f"a second {MODEL} version waiting for approval", lambda: _pending_version(stack, MODEL))
    stack.settle()
    press(browser, "the model card", lambda d: model_card(d, MODEL), "hold")
    fill_dialog(browser, "Ada Ops", "incident 7: scores look off")
    assert flash(browser, "held by") == f"{MODEL} held by Ada Ops: incident 7: scores look off"
    hold = json.loads(_model_tags(stack, MODEL)["signalbox.hold"])
    assert (hold["by"], hold["reason"]) == ("Ada Ops", "incident 7: scores look off") and not hold.get("released")
    until(browser, "the held badge", lambda d: model_card(d, MODEL).find_elements("css selector", "h3 .badge.held"))
    # Approving a held model is refused with the hold's reason, shown in the dialog; nothing moves.
    press(browser, f"v{second}'s approval", lambda d: pending_row(d, MODEL, second), "approve")
    fill_dialog(browser, "Ada Ops", "ship it")
    refused = until(browser, "the refusal", lambda d: d.find_element("id", "dialog-error").text)
    assert refused.startswith(f"Could not approve {MODEL} v{second}: 409: {MODEL} is held by Ada Ops since "), refused
    assert "incident 7: scores look off" in refused
    browser.find_element("id", "dialog-cancel").click()
    assert stack.pending(MODEL, second) and stack.in_production(MODEL, first)
    held_shot = screenshot(browser, tmp_path / "ops-page-live-held.png")

    # Release, then approve: it deploys.
    press(browser, "the model card", lambda d: model_card(d, MODEL), "release")
    fill_dialog(browser, "Ada Ops", "incident 7 closed")
    flash(browser, f"{MODEL} released by Ada Ops: incident 7 closed")
    assert json.loads(_model_tags(stack, MODEL)["signalbox.hold"])["released"] is True
    press(browser, f"v{second}'s approval", lambda d: pending_row(d, MODEL, second), "approve")
    fill_dialog(browser, "Grace Ops", "better by a mile")
    flash(browser, f"Approved {MODEL} v{second} (approved) by Grace Ops")
    until(browser, f"v{second} in production", lambda d: stage(d, MODEL, second) == "production", STEP_TIMEOUT)
    stack.settle()
    assert stack.in_production(MODEL, second)

    # Roll back from the picker: it offers the version that served before, not the one serving now.
    until(
        browser,
        f"v{first} surpassed on the page (a version to roll back to)",
        lambda d: stage(d, MODEL, first) == "surpassed"
        and model_card(d, MODEL).find_elements("css selector", "button[data-action='rollback']"),
    )
    press(browser, "the model card", lambda d: model_card(d, MODEL), "rollback")
    until(browser, "the action dialog", dialog_open)
    options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#rollback-to option")]
    assert options == ["", first], options
    fill_dialog(browser, "Grace Ops", "answers badly in production", select={"rollback-to": first})
    queued = flash(browser, "Rollback of")
    assert queued.startswith(f"Rollback of {MODEL} queued: v{second} → v{first} (request ops-"), queued
    until(browser, f"v{first} in production again", lambda d: stage(d, MODEL, first) == "production", STEP_TIMEOUT)
    stack.settle()
    assert stack.in_production(MODEL, first) and stack.aliases(MODEL)["champion"] == first
    rolled_from = stack.tags(MODEL, second)
    assert rolled_from["stage"] == "unstaged"
    rolled = json.loads(rolled_from["signalbox.rollback"])
    assert rolled["by"] == "Grace Ops" and rolled["reason"] == "answers badly in production", rolled
    stack.assert_serves(MODEL, MODEL, first)  # the same endpoint URL serves the first version again
    until(browser, f"v{second} unstaged on the page", lambda d: stage(d, MODEL, second) == "unstaged")

    # The chart: the first version is the champion again, the second a winner that no longer serves.
    def read_chart() -> tuple[dict[str, str], str]:
        chart = model_card(browser, MODEL).find_element("css selector", "svg.metric-chart")
        points = {
            p.get_attribute("data-version"): p.get_attribute("class")
            for p in chart.find_elements("css selector", "g.point")
        }
        return points, chart.find_element("css selector", "g.threshold").text

    points, threshold = _fresh(read_chart)  # read again if a refresh replaced the chart meanwhile
    assert points[first] == "point champion won" and points[second] == "point won", points
    assert threshold.startswith("to beat: > ")

    # The history on the page is the one the function answers, newest first, the rollback on it.
    def page_history(d: Any) -> list[tuple[str, str]]:
        card = model_card(d, MODEL)
        return [
            (e.get_attribute("data-kind"), e.find_element("css selector", ".what").text)
            for e in card.find_elements("css selector", "ol.history li")
        ]

    expected = [(e["kind"], e["what"]) for e in _history(stack, MODEL)]
    until(browser, "the page's history to be the registry's", lambda d: page_history(d) == expected, 60)
    kinds = {kind for kind, _ in expected}
    assert {"approval", "deployment", "hold", "release", "rollback"} <= kinds, kinds
    whats = [what for _, what in expected]
    assert any(w.startswith(f"rolled back to v{first} from v{second}") for w in whats), whats
    who = {(e["kind"], e["who"]) for e in _history(stack, MODEL)}
    assert {("hold", "Ada Ops"), ("release", "Ada Ops"), ("rollback", "Grace Ops")} <= who, who
    assert browser.execute_script("return window.pwned") is None
    after = screenshot(browser, tmp_path / "ops-page-live-rolled-back.png")
    assert (
        console_errors(
            browser,
            expected=(f"/{second}/approve - Failed to load resource: the server responded with a status of 409",),
        )
        == []
    )
    print(
        f"\nops page live: v{first} approved and serving {serving:.1f}s after the first batch; "
        f"screenshots {held_shot} {after}",
        file=sys.stderr,
    )


def test_dead_letters_panel_shows_replays_after_a_dry_run_and_purges(
    live: Stack,
    browser: Any,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    stack = live
    queues = LocalQueues(stack.state / "queues.sqlite3")
    # A command the train handler cannot read: it fails at every delivery until it is dead-lettered.
    poison = OutboundMessage(
        body=json.dumps({"schema_version": 1, "not": "an envelope"}),
        message_id="ops-page-poison-1",
        correlation_id="corr-ops-page-poison",
        subject="TrainModel",
        application_properties={"model_name": "lc-main"},
    )
    assert queues.send("train", poison)
    stack.wait(
        "the poisoned message dead-lettered",
        lambda: "ops-page-poison-1" in [m.message_id for m in queues.peek("train", dead_letter=True)],
        watch=False,
    )
    _open(browser, stack)
    row = until(browser, "the dead letter on the page", lambda d: dead_row(d, "ops-page-poison-1"))
    until(
        browser,
        "its model",
        lambda d: dead_row(d, "ops-page-poison-1").find_element("css selector", "td.dl-model").text == "lc-main",
    )
    cells = [c.text for c in dead_row(browser, "ops-page-poison-1").find_elements("css selector", "td")][:6]
    listed = requests.get(
        f"{stack.url}/api/ops/deadletters",
        params={"message_id": "ops-page-poison-1"},
        headers={"x-functions-key": stack.master_key},
        timeout=30,
    ).json()["dead_letters"][0]
    assert cells[0] == "train" and cells[1] == listed["reason"] and cells[2] == listed["description"]
    assert cells[4:] == ["lc-main", "corr-ops-page-poison"], cells
    assert row is not None

    press(browser, "the dead letter", lambda d: dead_row(d, "ops-page-poison-1"), "show")
    body = until(browser, "its body", lambda d: d.find_element("id", "deadletter-body").text)
    assert json.loads(body) == {"schema_version": 1, "not": "an envelope"}
    screenshot(browser, tmp_path / "ops-page-live-deadletter-shown.png")

    # Replay: the dry run first moves nothing; the replay sends a new message (which fails again).
    press(browser, "the dead letter", lambda d: dead_row(d, "ops-page-poison-1"), "replay")
    preview = until(
        browser, "the dry run", lambda d: "Dry run:" in (t := d.find_element("id", "dialog-preview").text) and t
    )
    assert "would replay: train ops-page-poison-1 → ops-page-poison-1:replay-1 (replay 1)" in preview
    screenshot(browser, tmp_path / "ops-page-live-replay-dry-run.png")
    assert [m.message_id for m in queues.peek("train", dead_letter=True)] == ["ops-page-poison-1"]
    fill_dialog(browser, "Ada Ops", "try once more")
    assert flash(browser, "Replayed").startswith("Replayed train ops-page-poison-1 (1 replayed) by Ada Ops")
    stack.wait(
        "the replay dead-lettered again",
        lambda: [m.message_id for m in queues.peek("train", dead_letter=True)] == ["ops-page-poison-1:replay-1"],
        watch=False,
    )
    again = until(browser, "the replay's dead letter on the page", lambda d: dead_row(d, "ops-page-poison-1:replay-1"))
    assert dead_row(browser, "ops-page-poison-1") is None and again is not None

    # Purge: refused until the queue's name is typed; then gone from the queue.
    press(browser, "the dead letter", lambda d: dead_row(d, "ops-page-poison-1:replay-1"), "purge")
    fill_dialog(browser, "Ada Ops", "cannot be fixed", type_in={"purge-confirm": "trian"})
    assert until(browser, "the check", lambda d: d.find_element("id", "dialog-error").text) == (
        "Type the queue name train to confirm the purge."
    )
    assert [m.message_id for m in queues.peek("train", dead_letter=True)] == ["ops-page-poison-1:replay-1"]
    fill_dialog(browser, "Ada Ops", "cannot be fixed", type_in={"purge-confirm": "train"})
    assert flash(browser, "Purged").startswith("Purged train ops-page-poison-1:replay-1 (1 purged) by Ada Ops")
    assert queues.peek("train", dead_letter=True) == []
    until(browser, "the panel to empty", lambda d: "No dead letters." in d.find_element("id", "deadletters").text)
    assert console_errors(browser) == []
    stack.dead_letters = sum(stack.host_status()["queues"][q]["dead_letter"] for q in QUEUE_NAMES)


def test_reject_from_the_page_unstages_the_version(
    live: Stack,
    browser: Any,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    stack, model = live, "lc-dup"  # manual approval in dev, no other test here touches it
    stack.land(f"{model}/", "batch-001.csv", "small", seed=5)
    version = stack.wait(f"a {model} version waiting for approval", lambda: _pending_version(stack, model))
    stack.settle()
    _open(browser, stack)
    press(browser, f"v{version}'s approval", lambda d: pending_row(d, model, version), "reject")
    until(browser, "the dialog", dialog_open)
    assert browser.find_element("id", "dialog-confirm").text == f"Reject v{version}"
    fill_dialog(browser, "Grace Ops", "trained on the wrong extract")
    assert flash(browser, "Rejected").startswith(f"Rejected {model} v{version} (rejected) by Grace Ops")
    until(browser, f"v{version} unstaged on the page", lambda d: stage(d, model, version) == "unstaged", STEP_TIMEOUT)
    stack.settle()
    tags = stack.tags(model, version)
    assert (tags["stage"], tags["approval"], tags["approved_by"]) == ("unstaged", "rejected", "Grace Ops")
    assert "signalbox.deployment" not in tags and stack.aliases(model) == {}
    assert pending_row(browser, model, version) is None
    assert console_errors(browser) == []
