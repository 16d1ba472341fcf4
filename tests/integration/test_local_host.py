"""The local host keeps the Functions host's contract, driven from outside over HTTP."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from shared.adapters.local.queues import LocalQueues, OutboundMessage
from shared.queues import load_queue_specs
from tests.hosting import REPO, RunningHost, start_host, wait_for

FIXTURES = REPO / "tests" / "fixtures" / "events"
TEST_QUEUES = REPO / "tests" / "apps" / "queues.json"


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def test_app(tmp_path: Path) -> Iterator[tuple[RunningHost, Path, LocalQueues]]:
    record_file = tmp_path / "records.jsonl"
    env = {"TEST_RECORD_FILE": str(record_file), "WORK_QUEUE": "train", "SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES)}
    host = start_host(tmp_path / "state", app="tests.apps.queue_app:app", env=env)
    queues = LocalQueues(tmp_path / "state" / "queues.sqlite3", specs=load_queue_specs(TEST_QUEUES))
    try:
        yield host, record_file, queues
    finally:
        host.stop()


def _send(
    queues: LocalQueues, queue: str, body: dict, *, message_id: str | None = None, session_id: str | None = None
) -> bool:
    return queues.send(
        queue, OutboundMessage(body=json.dumps(body), message_id=message_id or str(uuid.uuid4()), session_id=session_id)
    )


def test_admin_lists_functions_and_needs_the_master_key(test_app):
    host, _, _ = test_app
    assert requests.get(f"{host.url}/admin/functions", timeout=5).status_code == 401
    listed = requests.get(f"{host.url}/admin/functions", headers={"x-functions-key": host.master}, timeout=5).json()
    triggers = {f["name"]: f["trigger"] for f in listed}
    assert triggers == {
        "work": "serviceBusTrigger",
        "ordered": "serviceBusTrigger",
        "tick": "timerTrigger",
        "item": "httpTrigger",
        "open_route": "httpTrigger",
        "boom": "httpTrigger",
        "grid": "eventGridTrigger",
    }
    status = requests.get(f"{host.url}/admin/host/status", params={"code": host.master}, timeout=5).json()
    assert status["state"] == "Running" and status["functions"] == 7


def test_http_routes_methods_and_auth_levels(test_app):
    host, _, _ = test_app
    url = f"{host.url}/api/items/42"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, params={"code": "wrong"}, timeout=5).status_code == 401
    ok = requests.get(url, params={"code": host.function_key, "q": "x"}, timeout=5)
    assert ok.status_code == 200 and ok.json() == {"id": 42, "method": "GET", "q": "x"}
    assert requests.get(url, headers={"x-functions-key": host.master}, timeout=5).status_code == 200
    put = requests.put(url, headers={"x-functions-key": host.function_key}, timeout=5)
    assert put.status_code == 405 and "GET" in put.headers["Allow"]
    assert requests.get(f"{host.url}/api/items/abc", params={"code": host.function_key}, timeout=5).status_code == 404
    assert requests.get(f"{host.url}/api/open", timeout=5).text == "open"
    boom = requests.get(f"{host.url}/api/boom", timeout=5)
    assert boom.status_code == 500 and "secret internals" not in boom.text and "Traceback" not in boom.text


def test_event_grid_handshakes_deliveries_and_bad_input(test_app):
    host, record_file, _ = test_app
    hook = f"{host.url}/runtime/webhooks/EventGrid"
    params = {"functionName": "grid", "code": host.event_grid_key}
    validation = json.loads((FIXTURES / "subscription_validation.eventgrid.json").read_text())
    assert requests.post(hook, params={"functionName": "grid"}, json=validation, timeout=5).status_code == 401
    answer = requests.post(
        hook, params=params, json=validation, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=5
    )
    assert answer.status_code == 200
    assert answer.json() == {"validationResponse": validation[0]["data"]["validationCode"]}
    options = requests.options(
        hook, params=params, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=5
    )
    assert options.status_code == 200 and options.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    # A batch in the Event Grid schema and a CloudEvent both reach the function.
    blob = json.loads((FIXTURES / "blob_created.eventgrid.json").read_text())
    second = dict(blob[0], id="second-event")
    assert requests.post(hook, params=params, json=[blob[0], second], timeout=5).status_code == 200
    cloud = json.loads((FIXTURES / "blob_created.cloudevents.json").read_text())
    cloud_one = cloud[0] if isinstance(cloud, list) else cloud
    sent = requests.post(
        hook,
        params=params,
        data=json.dumps(cloud_one),
        headers={"Content-Type": "application/cloudevents+json"},
        timeout=5,
    )
    assert sent.status_code == 200
    got = [r for r in records(record_file) if r["trigger"] == "grid"]
    assert [r["id"] for r in got] == [blob[0]["id"], "second-event", cloud_one["id"]]
    assert got[0]["type"] == "Microsoft.Storage.BlobCreated"
    # A failing function answers 5xx so that Event Grid retries.
    failing = dict(blob[0], id="fails", data={"fail": True})
    assert requests.post(hook, params=params, json=[failing], timeout=5).status_code == 500
    # Malformed input: 4xx with a message, never a 500.
    bad_json = requests.post(hook, params=params, data=b"{not json", timeout=5)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["message"]
    wrong_schema = requests.post(hook, params=params, json=[{"hello": "world"}], timeout=5)
    assert wrong_schema.status_code == 400 and "id" in wrong_schema.json()["message"]
    huge = requests.post(hook, params=params, data=b"[" + b" " * (1024 * 1024 + 10) + b"]", timeout=10)
    assert huge.status_code == 413
    unknown = requests.post(hook, params={**params, "functionName": "nope"}, json=blob, timeout=5)
    assert unknown.status_code == 404


def test_service_bus_trigger_completes_retries_and_dead_letters(test_app):
    _host, record_file, queues = test_app
    assert _send(queues, "train", {"id": "good"}, message_id="m-good")
    assert not _send(queues, "train", {"id": "good"}, message_id="m-good")  # duplicate detection
    _send(queues, "train", {"id": "poison", "fail": True}, message_id="m-poison")
    wait_for(
        lambda: queues.counts("train")["dead_letter"] == 1 and queues.counts("train")["active"] == 0,
        timeout=30,
        what="the poison message to be dead-lettered",
    )
    dead = queues.peek("train", dead_letter=True)
    assert dead[0].message_id == "m-poison"
    assert dead[0].dead_letter_reason == "MaxDeliveryCountExceeded"
    assert "instructed to fail: poison" in (dead[0].dead_letter_error_description or "")
    attempts = [r for r in records(record_file) if r.get("id") == "poison" and r["event"] == "start"]
    assert [r["delivery"] for r in attempts] == [1, 2, 3]
    good = [r for r in records(record_file) if r.get("id") == "good"]
    assert [r["event"] for r in good] == ["start", "end"]


def test_sessions_serialise_per_id_and_run_in_parallel_across_ids(test_app):
    _host, record_file, queues = test_app
    for n in range(3):
        for session in ("model-a", "model-b"):
            _send(queues, "promote", {"id": f"{session}-{n}", "sleep": 0.4}, session_id=session)
    wait_for(
        lambda: len([r for r in records(record_file) if r["trigger"] == "ordered" and r["event"] == "end"]) == 6,
        timeout=30,
        what="six session messages",
    )
    seen = [r for r in records(record_file) if r["trigger"] == "ordered"]
    for session in ("model-a", "model-b"):
        mine = [r for r in seen if r["session"] == session]
        # Strictly one at a time and in order: start, end, start, end, ...
        assert [r["event"] for r in mine] == ["start", "end"] * 3
        assert [r["id"] for r in mine if r["event"] == "start"] == [f"{session}-{n}" for n in range(3)]
    a_start = min(r["t"] for r in seen if r["session"] == "model-a")
    b_start = min(r["t"] for r in seen if r["session"] == "model-b")
    assert abs(a_start - b_start) < 0.4  # the two sessions ran side by side


def test_timer_trigger_fires_on_its_schedule(test_app):
    _host, record_file, _ = test_app
    wait_for(
        lambda: len([r for r in records(record_file) if r["trigger"] == "tick"]) >= 2,
        timeout=10,
        what="two timer firings",
    )


def test_kill_9_with_messages_in_flight_loses_none(tmp_path: Path):
    record_file = tmp_path / "records.jsonl"
    env = {"TEST_RECORD_FILE": str(record_file), "WORK_QUEUE": "train", "SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES)}
    state = tmp_path / "state"
    host = start_host(state, app="tests.apps.queue_app:app", env=env)
    queues = LocalQueues(state / "queues.sqlite3", specs=load_queue_specs(TEST_QUEUES))
    ids = [f"job-{n}" for n in range(12)]
    for ident in ids:
        _send(queues, "train", {"id": ident, "sleep": 1.0})
    wait_for(
        lambda: len([r for r in records(record_file) if r["event"] == "start"]) >= 3, timeout=20, what="work in flight"
    )
    host.kill()
    in_flight = {r.get("id") for r in records(record_file) if r["event"] == "start"} - {
        r["id"] for r in records(record_file) if r["event"] == "end"
    }
    assert in_flight, "the kill should have interrupted running work"
    restarted = start_host(state, app="tests.apps.queue_app:app", env=env)
    try:
        wait_for(
            lambda: {r.get("id") for r in records(record_file) if r["event"] == "end"} == set(ids),
            timeout=60,
            what="every message to finish after the restart",
        )
        wait_for(lambda: sum(queues.counts("train").values()) == 0, timeout=10, what="an empty queue")
        redelivered = {r.get("id") for r in records(record_file) if r["event"] == "start" and r["delivery"] >= 2}
        assert in_flight <= redelivered
    finally:
        restarted.stop()


def test_real_function_app_rejects_an_invalid_command_into_the_dead_letter_queue(tmp_path: Path):
    """An invalid body is never dropped: it lands in the DLQ with an error naming the field."""
    state = tmp_path / "state"
    env = {"SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES), "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml")}
    host = start_host(state, env=env, extra_args=("--functions", "train"))
    try:
        queues = LocalQueues(state / "queues.sqlite3", specs=load_queue_specs(TEST_QUEUES))
        body = {
            "schema_version": 1,
            "message_id": "x",
            "correlation_id": "x",
            "environment": "dev",
            "created_at": "2026-11-23T10:00:00Z",
            "command": {"kind": "train", "model_name": "iris-classifier"},
        }
        queues.send("train", OutboundMessage(body=json.dumps(body), message_id="bad-1"))
        queues.send("train", OutboundMessage(body=json.dumps({**body, "schema_version": 99}), message_id="bad-2"))
        wait_for(lambda: queues.counts("train")["dead_letter"] == 2, timeout=30, what="two dead letters")
        dead = {m.message_id: m for m in queues.peek("train", dead_letter=True)}
        assert "command.reason" in (dead["bad-1"].dead_letter_error_description or "")
        assert "schema_version" in (dead["bad-2"].dead_letter_error_description or "")
    finally:
        host.stop()


def test_real_function_app_blob_created_enqueues_one_training(tmp_path: Path):
    state = tmp_path / "state"
    env = {"SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"), "SIGNALBOX_STATE_DIR": str(state)}
    host = start_host(state, env=env, extra_args=("--functions", "landing_events"))
    try:
        landed = state / "landing" / "landing" / "iris" / "batch.csv"
        landed.parent.mkdir(parents=True)
        landed.write_text("sepal_length,target\n1.0,0\n")
        event = json.loads((FIXTURES / "blob_created.eventgrid.json").read_text())[0]
        event["subject"] = "/blobServices/default/containers/landing/blobs/iris/batch.csv"
        event["data"]["url"] = landed.as_uri()
        outside = dict(event, id="outside", subject="/blobServices/default/containers/landing/blobs/other/x.csv")
        params = {"functionName": "landing_events", "code": host.event_grid_key}
        hook = f"{host.url}/runtime/webhooks/EventGrid"
        for _ in range(2):  # Event Grid redelivers; the second delivery adds nothing
            assert requests.post(hook, params=params, json=[event, outside], timeout=30).status_code == 200
        queues = LocalQueues(state / "queues.sqlite3")
        queued = queues.peek("train")
        assert len(queued) == 1
        command = json.loads(queued[0].body)["command"]
        assert command == {
            **command,
            "kind": "train",
            "model_name": "iris-classifier",
            "reason": "landing",
            "data_uri": landed.as_uri(),
        }
    finally:
        host.stop()


def test_locks_are_renewed_while_a_function_runs_longer_than_the_lock(test_app):
    _host, record_file, queues = test_app
    _send(queues, "train", {"id": "slow", "sleep": 5.0})  # the test queue's lock is PT2S
    wait_for(
        lambda: any(r.get("id") == "slow" and r["event"] == "end" for r in records(record_file)),
        timeout=30,
        what="the slow message to finish",
    )
    wait_for(lambda: sum(queues.counts("train").values()) == 0, timeout=10, what="the message to be completed")
    starts = [r for r in records(record_file) if r.get("id") == "slow" and r["event"] == "start"]
    assert [r["delivery"] for r in starts] == [1]  # never redelivered: the host kept renewing its lock


def test_max_concurrent_calls_of_host_json_bounds_parallel_invocations(test_app):
    _host, record_file, queues = test_app
    limit = json.loads((REPO / "host.json").read_text())["extensions"]["serviceBus"]["maxConcurrentCalls"]
    for n in range(limit + 4):
        _send(queues, "train", {"id": f"c-{n}", "sleep": 1.0})
    wait_for(
        lambda: (
            len([r for r in records(record_file) if str(r.get("id", "")).startswith("c-") and r["event"] == "end"])
            == limit + 4
        ),
        timeout=30,
        what="all concurrent messages",
    )
    events = sorted(
        (r["t"], 1 if r["event"] == "start" else -1)
        for r in records(record_file)
        if str(r.get("id", "")).startswith("c-")
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 2 <= peak <= limit


def test_no_auth_serves_without_keys(tmp_path: Path):
    env = {
        "TEST_RECORD_FILE": str(tmp_path / "r.jsonl"),
        "WORK_QUEUE": "train",
        "SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES),
    }
    host = start_host(tmp_path / "state", app="tests.apps.queue_app:app", env=env, extra_args=("--no-auth",))
    try:
        assert requests.get(f"{host.url}/api/items/7", timeout=5).json()["id"] == 7
        assert requests.get(f"{host.url}/admin/functions", timeout=5).status_code == 200
    finally:
        host.stop()


# -- the HTTP layer: deadlines, bounded work, requests as the worker builds them ------------------------

SLOW_APP = """
import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_lock = threading.Lock()
_running = 0


@app.route(route="slow")
def slow(req: func.HttpRequest) -> func.HttpResponse:
    global _running
    with _lock:
        _running += 1
        seen = _running
    time.sleep(float(req.params["seconds"]))
    with _lock:
        _running -= 1
    return func.HttpResponse(json.dumps({"running": seen}), mimetype="application/json")


@app.route(route="echo/{name}", methods=["POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    answer = func.HttpResponse(
        json.dumps(
            {
                "method": req.method,
                "url": req.url,
                "name": req.route_params["name"],
                "q": req.params.get("q"),
                "header": req.headers.get("X-Test"),
                "json": req.get_json(),
            }
        ),
        status_code=201,
        mimetype="application/json",
        headers={"X-Echo": "yes"},
    )
    answer.headers.add("Set-Cookie", "a=1; Path=/")
    answer.headers.add("Set-Cookie", "b=2; Path=/")
    return answer
"""
REQUEST_TIMEOUT = 2.0


@pytest.fixture
def slow_host(tmp_path: Path) -> Iterator[RunningHost]:
    """A host over a tiny app, with host.json allowing 2 concurrent and 4 outstanding HTTP requests."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "slow_app.py").write_text(SLOW_APP)
    limits = {"maxConcurrentRequests": 2, "maxOutstandingRequests": 4}
    (root / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": limits}}))
    host = start_host(
        tmp_path / "state",
        app="slow_app:app",
        extra_args=("--script-root", str(root), "--request-timeout", str(REQUEST_TIMEOUT)),
    )
    try:
        yield host
    finally:
        host.stop()


def _trickle_headers(url: str, seconds: float) -> float | None:
    """Send a request head one byte every 0.1 s, never finishing it; seconds until the host hung up (None: never)."""
    parts = urlsplit(url)
    head = b"GET /api/slow?seconds=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        for byte in head:
            if time.monotonic() - started > seconds:
                return None
            try:
                sock.sendall(bytes([byte]))
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and sock.recv(1) == b"":
                    return time.monotonic() - started
            except OSError:  # reset: the host hung up
                return time.monotonic() - started
    return None


def test_clients_trickling_headers_are_dropped_and_do_not_stop_others(slow_host: RunningHost):
    # Each byte comes well within any per-read timeout: only a deadline on the whole head ends them.
    with ThreadPoolExecutor(max_workers=20) as pool:
        trickles = [pool.submit(_trickle_headers, slow_host.url, 3 * REQUEST_TIMEOUT) for _ in range(20)]
        time.sleep(0.5)
        while not all(t.done() for t in trickles):
            started = time.monotonic()
            answer = requests.get(f"{slow_host.url}/api/slow", params={"seconds": "0"}, timeout=5)
            assert answer.status_code == 200 and time.monotonic() - started < 1.5
            time.sleep(0.2)
        dropped_after = [t.result() for t in trickles]
    assert all(d is not None for d in dropped_after), f"the host never hung up on some: {dropped_after}"
    assert all(REQUEST_TIMEOUT - 0.5 <= d <= REQUEST_TIMEOUT + 3 for d in dropped_after if d), dropped_after


def test_concurrent_http_invocations_are_bounded_by_host_json(slow_host: RunningHost):
    start = threading.Barrier(8)

    def call() -> requests.Response:
        start.wait()
        return requests.get(f"{slow_host.url}/api/slow", params={"seconds": "3"}, timeout=30)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: call(), range(8)))
    statuses = sorted(a.status_code for a in answers)
    # 4 outstanding at most (maxOutstandingRequests): the other 4 are refused at once, as "Too Busy".
    assert statuses == [200] * 4 + [429] * 4, [a.text for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.headers["Retry-After"] and "maxOutstandingRequests" in busy.json()["message"]
    # 2 at a time at most (maxConcurrentRequests), and really 2 side by side.
    assert max(a.json()["running"] for a in answers if a.status_code == 200) == 2
    assert requests.get(f"{slow_host.url}/api/slow", params={"seconds": "0"}, timeout=5).status_code == 200


def test_http_trigger_gets_the_request_and_returns_the_response_as_the_worker_converts_them(slow_host: RunningHost):
    answer = requests.post(
        f"{slow_host.url}/api/echo/a%20b",
        params={"q": "x"},
        json={"k": [1, 2]},
        headers={"X-Test": "t"},
        timeout=5,
    )
    assert answer.status_code == 201 and answer.headers["X-Echo"] == "yes"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {
        "method": "POST",
        "url": f"{slow_host.url}/api/echo/a%20b?q=x",
        "name": "a b",
        "q": "x",
        "header": "t",
        "json": {"k": [1, 2]},
    }
    assert answer.cookies.get("a") == "1" and answer.cookies.get("b") == "2"
