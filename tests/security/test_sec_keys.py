"""Keys, from outside: every admin and function-level function refuses a missing or wrong key.

The functions come from ``app.get_functions()`` (compared to ``func.AuthLevel``), so a function added
later is covered without touching this file. A refusal is a 401 and the function does not run (the
host's invocation count stays); the right key makes it run.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.security.stack import SecureHost, http_functions, leaks

# Anonymous HTTP functions must authenticate their caller themselves (tests/security/test_sec_signatures.py).
SIGNED_WEBHOOKS = {"mlflow_webhook", "databricks_webhook", "github_webhook"}
SAMPLES = {"model": "iris-classifier", "decision": "approve", "message_id": "no-such-message"}


def concrete_path(route: str) -> str:
    """A request path for a route template: ``{x:int}`` → 1, other parameters a harmless sample."""

    def value(match: re.Match[str]) -> str:
        name, constraint = match.group(1), match.group(2)
        return "1" if constraint == "int" else SAMPLES.get(name, "sample")

    return "/api/" + re.sub(r"\{\*?([A-Za-z_]\w*)(?::(\w+))?\??\}", value, route.strip("/"))


def keyed_functions() -> list[dict[str, Any]]:
    return [f for f in http_functions() if f["auth"] in ("function", "admin")]


def _call(secure: SecureHost, function: dict[str, Any], headers: dict[str, str], params: dict[str, str]) -> Any:
    method = function["methods"][0] if function["methods"] else "GET"
    return requests.request(
        method,
        secure.url + concrete_path(function["route"] or function["name"]),
        headers=headers,
        params=params,
        # An empty object or a dry run: the right key must not change anything either.
        json={"dry_run": True} if method == "POST" else None,
        timeout=60,
    )


def test_the_app_has_admin_and_function_level_functions_and_only_signed_anonymous_ones() -> None:
    levels = {f["name"]: f["auth"] for f in http_functions()}
    assert {"admin", "function", "anonymous"} <= set(levels.values())
    assert {name for name, level in levels.items() if level == "anonymous"} <= SIGNED_WEBHOOKS


def test_the_host_applies_the_auth_level_the_app_declares(secure: SecureHost) -> None:
    listed = requests.get(f"{secure.url}/admin/functions", headers={"x-functions-key": secure.host.master}, timeout=10)
    by_name = {f["name"]: f.get("authLevel") for f in listed.json()}
    assert {f["name"]: f["auth"] for f in http_functions()} == {
        name: level for name, level in by_name.items() if level is not None
    }


WRONG_KEYS = {
    "no key": lambda s, f: ({}, {}),
    "wrong key": lambda s, f: ({"x-functions-key": "not-a-key"}, {}),
    "wrong key in the query": lambda s, f: ({}, {"code": "not-a-key"}),
    "truncated key": lambda s, f: ({"x-functions-key": s.host.function_key[:-1]}, {}),
    "Event Grid system key": lambda s, f: ({"x-functions-key": s.host.event_grid_key}, {}),
    "function key where the admin key is needed": lambda s, f: (
        ({"x-functions-key": s.host.function_key}, {}) if f["auth"] == "admin" else ({"x-functions-key": "x"}, {})
    ),
}


@pytest.mark.parametrize("case", list(WRONG_KEYS))
@pytest.mark.parametrize("name", [f["name"] for f in keyed_functions()])
def test_keyed_functions_refuse_a_missing_or_wrong_key(secure: SecureHost, name: str, case: str) -> None:
    (function,) = [f for f in keyed_functions() if f["name"] == name]
    headers, params = WRONG_KEYS[case](secure, function)
    before = secure.invocations(name), secure.enqueued()
    answer = _call(secure, function, headers, params)
    assert answer.status_code == 401, f"{name} with {case}: {answer.status_code} {answer.text[:200]}"
    assert answer.json()["message"].startswith("this endpoint needs")
    assert not leaks(answer.text, secure.all_secrets)
    assert (secure.invocations(name), secure.enqueued()) == before, f"{name} ran with {case}"


@pytest.mark.parametrize("name", [f["name"] for f in keyed_functions()])
def test_keyed_functions_run_with_the_right_key(secure: SecureHost, name: str) -> None:
    (function,) = [f for f in keyed_functions() if f["name"] == name]
    keys = [secure.host.master] + ([secure.host.function_key] if function["auth"] == "function" else [])
    for key in keys:
        before = secure.invocations(name)
        answer = _call(secure, function, {"x-functions-key": key}, {})
        assert answer.status_code != 401 and answer.status_code < 500, f"{name}: {answer.status_code} {answer.text}"
        assert secure.invocations(name) == before + 1, f"{name} did not run with the right key"


HOST_ADMIN = [("GET", "/admin/functions"), ("GET", "/admin/host/status"), ("POST", "/admin/functions/landing_events")]


@pytest.mark.parametrize(("method", "path"), HOST_ADMIN)
def test_host_admin_endpoints_need_the_master_key(secure: SecureHost, method: str, path: str) -> None:
    for key in (None, "not-a-key", secure.host.function_key, secure.host.event_grid_key, secure.host.master[:-1]):
        headers = {"x-functions-key": key} if key else {}
        answer = requests.request(method, secure.url + path, headers=headers, timeout=10)
        assert answer.status_code == 401, f"{method} {path} with {key and key[:4]}…: {answer.status_code}"
        assert not leaks(answer.text, secure.all_secrets)
    answer = requests.request(method, secure.url + path, headers={"x-functions-key": secure.host.master}, timeout=10)
    # landing_events is not a timer: with the key the host says so (400) instead of refusing the caller.
    assert answer.status_code in (200, 400), answer.text
