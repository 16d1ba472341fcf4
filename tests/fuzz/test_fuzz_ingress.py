"""Fuzz every ingress of a real ``signalbox host`` over HTTP (issue 7), with Hypothesis and with Schemathesis on
docs/openapi.json: only 2xx/4xx, no crash, and nothing queued by invalid input (the oracle: tests/fuzz/harness.py).

``SIGNALBOX_FUZZ_EXAMPLES`` sets the total number of payloads (small by default, for CI); the full run:
``SIGNALBOX_FUZZ_EXAMPLES=12000 .venv/bin/pytest tests/fuzz -q`` prints the figures at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.fuzz import strategies as fs
from tests.fuzz.harness import (
    MODELS,
    NOTHING,
    PENDING_VERSION,
    SECRETS,
    Expect,
    FuzzWorld,
    budget,
    fuzz_settings,
    may_queue,
)
from tests.hosting import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(300, budget()))]

EVENT_GRID_FUNCTIONS = ("landing_events", "workspace_events", "alert_events")


def _keys(world: FuzzWorld, *valid: str) -> st.SearchStrategy[tuple[str, dict[str, str], dict[str, str]]]:
    """(kind, query, headers) carrying a key: the ``valid`` kinds among them open the endpoint."""
    host = world.host
    by_kind = {
        "master": host.master,
        "function": host.function_key,
        "eventgrid": host.event_grid_key,
        "wrong": "not-a-key",
        "empty": "",
        "truncated": host.master[:-1],
    }
    kinds = sorted(set(by_kind) | {"none"})

    @st.composite
    def key(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str]]:
        # Mostly a key that opens the endpoint, so the function behind it is what gets fuzzed.
        kind = draw(st.sampled_from(valid if draw(fs.chance(7, 10)) else kinds))
        if kind == "none":
            return kind, {}, {}
        value = by_kind[kind]
        if draw(st.booleans()):
            return kind, {"code": value}, {}
        return kind, {}, {"x-functions-key": value}

    return key()


# -- Event Grid ------------------------------------------------------------------------------------


def _subscriber(document: Any) -> str:
    """The function whose subscription would carry the document's first event."""
    first = document[0] if isinstance(document, list) and document else document
    kind = str(first.get("eventType") or first.get("type") or "") if isinstance(first, dict) else ""
    if "storage" in kind.lower():
        return "landing_events"
    return "alert_events" if "signalbox" in kind.lower() else "workspace_events"


@st.composite
def event_grid_request(draw: st.DrawFn, world: FuzzWorld) -> dict[str, Any]:
    document, body, content_type = draw(fs.event_grid_body(world.landed_uri))
    kind, query, headers = draw(_keys(world, "eventgrid", "master"))
    function = draw(
        fs.weighted(
            (12, st.just(_subscriber(document))),
            (4, st.sampled_from(EVENT_GRID_FUNCTIONS)),
            (1, st.sampled_from(["approval", "train", "", "LANDING_EVENTS"])),
            (1, st.text(max_size=12)),
        )
    )
    if draw(fs.chance(19, 20)):
        query = {**query, "functionName": function}
    event_type = draw(
        st.sampled_from([None] * 4 + ["Notification"] * 4 + ["SubscriptionValidation", "Unsubscribe", "x"])
    )
    if event_type is not None:
        headers = {**headers, "aeg-event-type": event_type}
    if content_type is not None:
        headers = {**headers, "Content-Type": content_type}
    method = draw(st.sampled_from(["POST"] * 8 + ["OPTIONS", "GET"]))
    if method == "OPTIONS" and draw(st.booleans()):
        headers = {**headers, "WebHook-Request-Origin": draw(fs.HEADER_TEXT)}
    opens = kind in ("eventgrid", "master", "function") and query.get("functionName") in EVENT_GRID_FUNCTIONS
    delivers = method == "POST" and (event_type or "").lower() not in ("subscriptionvalidation", "unsubscribe")
    events = document if isinstance(document, list) else [document]
    expect = may_queue(document, at_most=len(events)) if opens and delivers else NOTHING
    return {"method": method, "query": query, "headers": headers, "body": body, "expect": expect}


def test_event_grid_deliveries(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("eventgrid")
    @given(request=event_grid_request(fuzz_world))
    def run(request: dict[str, Any]) -> None:
        fuzz_world.fuzzer.send(
            "eventgrid",
            request["method"],
            "/runtime/webhooks/EventGrid",
            request["expect"],
            params=request["query"],
            headers=request["headers"],
            data=request["body"],
        )

    run()


# -- signed webhooks -------------------------------------------------------------------------------


@st.composite
def webhook_body(draw: st.DrawFn, payloads: st.SearchStrategy[dict[str, Any]]) -> tuple[Any, bytes]:
    """(document or None, body): random bytes, random JSON, or a valid-looking payload, mutated or not."""
    mode = draw(st.sampled_from(["bytes", "json"] + ["payload"] * 4 + ["mutated"] * 2))
    if mode == "bytes":
        return None, draw(fs.random_bytes)
    document = draw(fs.json_values if mode == "json" else payloads if mode == "payload" else fs.mutated(payloads))
    return document, json.dumps(document, ensure_ascii=draw(st.booleans())).encode()


def _mlflow_signature(secret: str, delivery: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@st.composite
def mlflow_request(draw: st.DrawFn) -> tuple[dict[str, str], bytes, Expect]:
    document, body = draw(webhook_body(fs.mlflow_payload()))
    secret = SECRETS["SIGNALBOX_MLFLOW_WEBHOOK_SECRET"]
    delivery = draw(st.one_of(st.uuids().map(str), st.text(fs.ASCII_PRINTABLE, min_size=1, max_size=60)))
    now = int(time.time())
    timestamp = str(now)
    mode = draw(
        st.sampled_from(
            ["valid"] * 14
            + ["rotated", "no-signature", "no-delivery", "no-timestamp", "wrong-secret", "stale", "future"]
            + ["v0", "garbage", "other-body", "bad-timestamp", "long-delivery"]
        )
    )
    if mode == "stale":
        timestamp = str(now - 3600)
    elif mode == "future":
        timestamp = str(now + 3600)
    elif mode == "bad-timestamp":
        timestamp = draw(st.sampled_from(["-1", "1e9", "0x10", " ", "١٢٣", str(now) + ".5"]))
    elif mode == "long-delivery":
        delivery = "d" * 500
    signature = _mlflow_signature(
        "wrong" if mode == "wrong-secret" else secret, delivery, timestamp, b"{}" if mode == "other-body" else body
    )
    if mode == "rotated":
        signature = f"{_mlflow_signature('old-secret', delivery, timestamp, body)} {signature}"
    elif mode == "v0":
        signature = "v0," + signature.partition(",")[2]
    elif mode == "garbage":
        signature = draw(fs.HEADER_TEXT)
    headers = {"X-MLflow-Signature": signature, "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": timestamp}
    # The header each "no-..." mode leaves out (the delivery id's name does not end in "delivery").
    dropped = {
        "no-signature": "X-MLflow-Signature",
        "no-delivery": "X-MLflow-Delivery-Id",
        "no-timestamp": "X-MLflow-Timestamp",
    }
    headers = {k: v for k, v in headers.items() if dropped.get(mode) != k}
    headers["Content-Type"] = "application/json"
    valid = mode in ("valid", "rotated")
    return headers, body, may_queue(document, at_most=1) if valid else NOTHING


def test_mlflow_webhook(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("webhook:mlflow")
    @given(request=mlflow_request())
    def run(request: tuple[dict[str, str], bytes, Expect]) -> None:
        headers, body, expect = request
        fuzz_world.fuzzer.send("webhook:mlflow", "POST", "/api/webhooks/mlflow", expect, headers=headers, data=body)

    run()


def _hex_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@st.composite
def databricks_request(draw: st.DrawFn) -> tuple[dict[str, str], bytes, Expect]:
    payloads = st.one_of(fs.databricks_registry_payload(), fs.databricks_job_payload())
    document, body = draw(webhook_body(payloads))
    secret = SECRETS["SIGNALBOX_DATABRICKS_WEBHOOK_SECRET"]
    mode = draw(
        st.sampled_from(["valid"] * 14 + ["upper", "none", "wrong-secret", "garbage", "prefixed", "other-body"])
    )
    signature = _hex_signature("wrong" if mode == "wrong-secret" else secret, b"{}" if mode == "other-body" else body)
    if mode == "upper":
        signature = signature.upper()
    elif mode == "garbage":
        signature = draw(fs.HEADER_TEXT)
    elif mode == "prefixed":
        signature = "sha256=" + signature
    headers = {} if mode == "none" else {"X-Databricks-Signature": signature}
    valid = mode in ("valid", "upper")
    return headers, body, may_queue(document, at_most=1) if valid else NOTHING


def test_databricks_webhook(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("webhook:databricks")
    @given(request=databricks_request())
    def run(request: tuple[dict[str, str], bytes, Expect]) -> None:
        headers, body, expect = request
        fuzz_world.fuzzer.send(
            "webhook:databricks", "POST", "/api/webhooks/databricks", expect, headers=headers, data=body
        )

    run()


def test_databricks_job_notifications(fuzz_world: FuzzWorld) -> None:
    # No model of the fuzz catalogue runs a Databricks job: no notification may queue anything.
    payloads = st.one_of(fs.databricks_job_payload(), fs.databricks_registry_payload())

    @fuzz_settings("webhook:databricks-jobs")
    @given(key=_keys(fuzz_world, "function", "master"), body=webhook_body(payloads))
    def run(key: tuple[str, dict[str, str], dict[str, str]], body: tuple[Any, bytes]) -> None:
        _, query, headers = key
        fuzz_world.fuzzer.send(
            "webhook:databricks-jobs",
            "POST",
            "/api/webhooks/databricks-jobs",
            NOTHING,
            params=query,
            headers={**headers, "Content-Type": "application/json"},
            data=body[1],
        )

    run()


@st.composite
def github_request(draw: st.DrawFn) -> tuple[dict[str, str], bytes, Expect]:
    document, body = draw(webhook_body(fs.github_payload()))
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if document is not None and draw(fs.chance(1, 5)):
        # Hooks set to form encoding send the JSON as payload=...
        body = urlencode({"payload": json.dumps(document)}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    secret = SECRETS["SIGNALBOX_GITHUB_WEBHOOK_SECRET"]
    mode = draw(
        st.sampled_from(
            ["valid"] * 14 + ["upper", "none", "sha1", "wrong-secret", "empty", "sha512", "garbage", "other-body"]
        )
    )
    digest = _hex_signature("wrong" if mode == "wrong-secret" else secret, b"{}" if mode == "other-body" else body)
    if mode == "sha1":
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    elif mode != "none":
        headers["X-Hub-Signature-256"] = {
            "upper": "sha256=" + digest.upper(),
            "empty": "sha256=",
            "sha512": "sha512=" + digest,
            "garbage": draw(fs.HEADER_TEXT),
        }.get(mode, "sha256=" + digest)
    event = draw(st.sampled_from(["push"] * 8 + ["ping", "Push", "issues", "", None]))
    if event is not None:
        headers["X-GitHub-Event"] = event
    delivery = draw(
        fs.weighted(
            (6, st.uuids().map(str)),
            (1, st.text(fs.ASCII_PRINTABLE, max_size=40)),
            (1, st.none()),
            (1, st.just("x" * 300)),
        )
    )
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    valid = mode in ("valid", "upper") and event == "push"
    return headers, body, may_queue(document) if valid else NOTHING


def test_github_webhook(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("webhook:github")
    @given(request=github_request())
    def run(request: tuple[dict[str, str], bytes, Expect]) -> None:
        headers, body, expect = request
        fuzz_world.fuzzer.send("webhook:github", "POST", "/api/webhooks/github", expect, headers=headers, data=body)

    run()


# -- people: approvals and status ------------------------------------------------------------------


def _segment(value: str) -> str:
    return quote(value, safe="")


@st.composite
def approval_request(draw: st.DrawFn, world: FuzzWorld) -> tuple[str, dict[str, str], dict[str, str], bytes, Expect]:
    model = draw(fs.weighted((3, st.just("fz-trained")), (1, fs.catalogue_names), (2, fs.unknown_names)))
    version = draw(
        fs.weighted(
            (4, st.just(PENDING_VERSION)),
            (2, st.sampled_from(["2", "3", "0", "-1", "01", "001", "99999999999999999999", "2147483648"])),
            (1, st.integers(min_value=-5, max_value=50).map(str)),
            (1, st.text(max_size=8)),
        )
    )
    decision = draw(st.sampled_from(["approve"] * 3 + ["reject"] * 3 + ["Approve", "APPROVE", "yes", "", "approve "]))
    kind, query, headers = draw(_keys(world, "function", "master"))
    body = draw(
        st.one_of(
            st.just(b""),
            st.builds(lambda by: json.dumps({"by": by}).encode(), fs.json_values),
            fs.json_values.map(lambda v: json.dumps(v).encode()),
            fs.random_bytes,
        )
    )
    path = f"/api/approvals/{_segment(model)}/{_segment(version)}/{_segment(decision)}"
    valid = (
        kind in ("function", "master")
        and model == "fz-trained"
        and version.lstrip("0") == PENDING_VERSION
        and decision in ("approve", "reject")
    )
    return path, query, headers, body, Expect(frozenset({model}), 1) if valid else NOTHING


def test_approvals(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("approvals")
    @given(request=approval_request(fuzz_world))
    def run(request: tuple[str, dict[str, str], dict[str, str], bytes, Expect]) -> None:
        path, query, headers, body, expect = request
        fuzz_world.fuzzer.send("approvals", "POST", path, expect, params=query, headers=headers, data=body)

    run()


def test_status(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("status")
    @given(
        model=st.one_of(st.none(), fs.any_names),
        key=_keys(fuzz_world, "function", "master"),
        extra=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
    )
    def run(model: str | None, key: tuple[str, dict[str, str], dict[str, str]], extra: dict[str, str]) -> None:
        _, query, headers = key
        path = "/api/status" if model is None else f"/api/status/{_segment(model)}"
        fuzz_world.fuzzer.send("status", "GET", path, NOTHING, params={**extra, **query}, headers=headers)

    run()


# -- operations: admin functions and the host's admin API ------------------------------------------

FILTER_FIELDS = ("queue", "reason", "since", "message_id", "correlation_id", "limit")
filter_values = st.one_of(
    st.sampled_from(
        ["deploy", "train", "all", "nope", "FuzzSeed", "2h", "0s", "-1h", "1", "0", "-1", "10", "true", ""]
    ),
    st.sampled_from(["2026-11-23T10:00:00Z", "fuzz-dead-1", "fuzz-dead-2", "1e3", "99999999999999999999"]),
    st.text(max_size=20),
)
filter_dicts = st.dictionaries(
    st.one_of(st.sampled_from(FILTER_FIELDS), st.text(max_size=8)), filter_values, max_size=4
)


@st.composite
def ops_request(draw: st.DrawFn, world: FuzzWorld) -> dict[str, Any]:
    kind, query, headers = draw(_keys(world, "master"))
    operation = draw(st.sampled_from(["page", "overview", "list", "show", "replay", "replay", "purge", "purge"]))
    method, path, body = "GET", "/api/ops", None
    if operation == "page":
        query = {**query, **draw(st.dictionaries(st.sampled_from(["refresh", "x"]), filter_values, max_size=2))}
    elif operation == "overview":
        path = "/api/ops/overview"
    elif operation == "list":
        path = "/api/ops/deadletters"
        query = {**query, **{k: v for k, v in draw(filter_dicts).items() if k != "code"}}
    elif operation == "show":
        message_id = draw(
            st.one_of(
                st.sampled_from(["fuzz-dead-1", "fuzz-dead-2", "replay", "purge"]), st.text(min_size=1, max_size=30)
            )
        )
        path = f"/api/ops/deadletters/{_segment(message_id)}"
        query = {**query, **draw(st.dictionaries(st.sampled_from(["queue", "x"]), filter_values, max_size=2))}
    else:
        method, path = "POST", f"/api/ops/deadletters/{operation}"
        extra = {
            "dry_run": st.one_of(st.booleans(), filter_values),
            "max_replays": st.one_of(st.integers(min_value=-2, max_value=5), filter_values),
            "confirm": st.one_of(st.sampled_from(["deploy", "all", "train"]), filter_values, st.integers()),
        }
        document: Any = draw(filter_dicts)
        for name in ("dry_run", "max_replays" if operation == "replay" else "confirm"):
            if draw(st.booleans()):
                document[name] = draw(extra[name])
        body = draw(
            st.one_of(
                st.just(json.dumps(document).encode()),
                st.just(json.dumps(document).encode()),
                st.just(b""),
                fs.json_values.map(lambda v: json.dumps(v).encode()),
                fs.random_bytes,
            )
        )
    # A replay re-sends dead letters (the seeded ones are fz-trained's); the answer says how many.
    expect = Expect(frozenset({"fz-trained"}), 10_000) if operation == "replay" and kind == "master" else NOTHING
    return {
        "operation": operation,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body,
        "expect": expect,
    }


def test_ops_admin_functions(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("ops (admin functions)")
    @given(request=ops_request(fuzz_world))
    def run(request: dict[str, Any]) -> None:
        if request["operation"] in ("replay", "purge") and fuzz_world.dead_letters() < 2:
            fuzz_world.seed_dead_letters()
        response, new = fuzz_world.fuzzer.send(
            "ops (admin functions)",
            request["method"],
            request["path"],
            request["expect"],
            params=request["query"],
            headers=request["headers"],
            data=request["body"],
        )
        if request["operation"] == "replay":
            replayed = response.json()["counts"].get("replayed", 0) if response.status_code == 200 else 0
            assert len(new) == replayed, (response.text, new)

    run()


@st.composite
def host_admin_request(draw: st.DrawFn, world: FuzzWorld) -> tuple[str, str, dict[str, str], dict[str, str], bytes]:
    _, query, headers = draw(_keys(world, "master"))
    names = st.one_of(
        st.sampled_from(["landing_events", "approval", "train", "nope", "..", "LANDING_EVENTS"]), st.text(max_size=20)
    )
    method, path = draw(
        st.one_of(
            st.sampled_from(
                [
                    ("GET", "/admin/functions"),
                    ("GET", "/admin/host/status"),
                    ("GET", "/admin/"),
                    ("DELETE", "/admin/functions"),
                ]
            ),
            st.builds(lambda n: ("POST", f"/admin/functions/{_segment(n)}"), names),
            st.builds(
                lambda m, p: (m, f"/admin/{_segment(p)}"),
                st.sampled_from(["GET", "POST", "PUT", "HEAD"]),
                st.text(max_size=20),
            ),
        )
    )
    body = draw(st.one_of(st.just(b""), fs.random_bytes))
    return method, path, query, headers, body


def test_host_admin_api(fuzz_world: FuzzWorld) -> None:
    @fuzz_settings("host admin")
    @given(request=host_admin_request(fuzz_world))
    def run(request: tuple[str, str, dict[str, str], dict[str, str], bytes]) -> None:
        method, path, query, headers, body = request
        fuzz_world.fuzzer.send("host admin", method, path, NOTHING, params=query, headers=headers, data=body or None)

    run()


def test_routing(fuzz_world: FuzzWorld) -> None:
    """Any method on any path, without a key: a 2xx/4xx answer and nothing queued."""
    segments = st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "api",
                    "approvals",
                    *MODELS,
                    "1",
                    "approve",
                    "ops",
                    "..",
                    "%2e%2e",
                    "webhooks",
                    "endpoints",
                    "invocations",
                    "runtime",
                    "admin",
                ]
            ),
            st.text(min_size=1, max_size=10),
        ),
        max_size=6,
    )

    @fuzz_settings("routing")
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        parts=segments,
        encoded=st.booleans(),
        body=st.one_of(st.just(b""), fs.random_bytes),
        key=st.sampled_from(["", "wrong", str(uuid.uuid4())]),
    )
    def run(method: str, parts: list[str], encoded: bool, body: bytes, key: str) -> None:
        path = "/" + "/".join(_segment(p) if encoded else quote(p, safe="/%") for p in parts)
        headers = {"x-functions-key": key} if key else {}
        fuzz_world.fuzzer.send("routing", method, path, NOTHING, headers=headers, data=body or None)

    run()


# -- the OpenAPI description, with Schemathesis ------------------------------------------------------
# Positive and negative cases of every operation of docs/openapi.json, with the right key (function,
# admin or Event Grid system key) nine times in ten; not_a_server_error and the harness's oracle.

OPENAPI = "openapi (schemathesis)"
SPEC = REPO / "docs" / "openapi.json"


def _key_kinds() -> dict[str, str]:
    """Operation label → the key that opens it (by its security schemes in the description)."""
    spec = json.loads(SPEC.read_text())
    kinds = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            schemes = {name for alternative in operation.get("security", []) for name in alternative}
            kind = next((k for k in ("system", "admin", "function") if any(s.startswith(k) for s in schemes)), "none")
            kinds[f"{method.upper()} {path}"] = kind
    return kinds


def _the_worker_refuses(case: Any) -> bool:
    """An Event Grid delivery with an event azure-functions' own converter cannot bind (an ``eventTime``
    with a non-UTC offset): the Python worker fails that invocation, so Azure answers 500 and Event Grid
    retries it, then dead-letters it. The local host does the same (it binds with the same converter)."""
    import json

    from azure.functions import eventgrid, meta

    if case.operation.path != "/runtime/webhooks/EventGrid":
        return False
    events = case.body if isinstance(case.body, list) else [case.body]
    for event in events:
        if not isinstance(event, dict) or "specversion" in event:
            continue
        try:
            eventgrid.EventGridEventInConverter.decode(
                meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={}
            )
        except ValueError:
            return True
        except Exception:  # noqa: S112 - anything else the host refuses itself (400), judged as usual
            continue
    return False


def test_openapi_description_with_schemathesis(fuzz_world: FuzzWorld) -> None:
    schema = schemathesis.openapi.from_path(SPEC)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    host, fuzzer = fuzz_world.host, fuzz_world.fuzzer
    keys = {"system": host.event_grid_key, "admin": host.master, "function": host.function_key}
    kinds = _key_kinds()
    assert set(kinds) == {op.ok().label for op in schema.get_all_operations()}

    @fuzz_settings(OPENAPI)
    @given(case=cases, keyed=st.sampled_from([True] * 9 + [False]))
    def run(case: Any, keyed: bool) -> None:
        kind = kinds[case.operation.label]
        headers = {"x-functions-key": keys[kind]} if keyed and kind in keys else None
        # A replay re-sends the seeded dead letters (fz-trained's); nothing else may queue anything.
        replay = case.operation.label == "POST /api/ops/deadletters/replay"
        expect = Expect(frozenset({"fz-trained"}), 10_000) if replay else NOTHING
        if replay and fuzz_world.dead_letters() < 2:
            fuzz_world.seed_dead_letters()
        mark = fuzzer.watcher.mark()
        figures = fuzzer.figures.of(OPENAPI)
        figures.payloads += 1
        figures.invalid_payloads += expect.invalid
        started = time.monotonic()
        try:
            response = case.call(base_url=host.url, session=fuzzer.session, headers=headers, timeout=60)
        except Exception as exc:
            figures.crashes += 1
            raise AssertionError(
                f"{OPENAPI}: no answer ({type(exc).__name__}: {exc}) to {case.as_curl_command()}"
            ) from exc
        finally:
            figures.seconds += time.monotonic() - started
        if response.status_code == 500 and _the_worker_refuses(case):
            figures.statuses[500] += 1
            assert fuzzer.watcher.since(mark) == [], (
                f"queued from an event the worker refuses: {case.as_curl_command()}"
            )
            return
        new = fuzzer.check(OPENAPI, response.status_code, response.text, expect, mark, case.as_curl_command())
        if replay and response.status_code == 200:
            assert len(new) == response.json()["counts"].get("replayed", 0)
        case.validate_response(response, checks=[not_a_server_error])

    run()
