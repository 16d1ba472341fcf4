"""docs/openapi.json describes exactly the HTTP functions the app registers, and the host endpoints they rely on."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest

from tests.app_functions import registered_functions
from tests.hosting import REPO

SPEC_PATH = REPO / "docs" / "openapi.json"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# The host's own endpoints (signalbox/localhost/server.py, as the Functions host serves them).
HOST_OPERATIONS = {
    ("/runtime/webhooks/EventGrid", "post"),
    ("/runtime/webhooks/EventGrid", "options"),
    ("/admin/functions", "get"),
    ("/admin/host/status", "get"),
    ("/admin/functions/{name}", "post"),
}
SECURITY = {
    "anonymous": [],
    "function": [{"functionKeyHeader": []}, {"functionKeyQuery": []}],
    "admin": [{"adminKeyHeader": []}, {"adminKeyQuery": []}],
}


@cache
def spec() -> dict[str, Any]:
    return dict(json.loads(SPEC_PATH.read_text()))


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op for path, item in spec()["paths"].items() for method, op in item.items() if method in METHODS
    }


def openapi_path(route: str) -> str:
    """``approvals/{model}/{version:int}/{decision}`` → ``/api/approvals/{model}/{version}/{decision}``."""
    return "/api/" + re.sub(r"\{\*?([A-Za-z_]\w*)(?::\w+)?\??\}", r"{\1}", route.strip("/"))


def http_functions() -> list[dict[str, Any]]:
    return [f for f in registered_functions() if f["trigger"] == "httpTrigger"]


def test_every_http_function_is_described_and_nothing_else():
    app_ops = {(openapi_path(f["route"] or f["name"]), m.lower()) for f in http_functions() for m in f["methods"]}
    described = set(operations())
    assert app_ops - described == set(), "HTTP functions missing from docs/openapi.json"
    assert described - app_ops - HOST_OPERATIONS == set(), "docs/openapi.json describes operations the app lacks"
    assert described >= HOST_OPERATIONS


@pytest.mark.parametrize("function", [f["name"] for f in http_functions()])
def test_operation_matches_the_function(function):
    (fn,) = [f for f in http_functions() if f["name"] == function]
    route = fn["route"] or fn["name"]
    for method in fn["methods"]:
        op = operations()[(openapi_path(route), method.lower())]
        assert op["operationId"] == fn["name"]
        # The key the host asks for: none, a function key (or the admin key), the admin key.
        assert op["security"] == SECURITY[fn["auth"]]
        if fn["auth"] != "anonymous":
            assert "401" in op["responses"]
        declared = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
        in_route = dict(re.findall(r"\{\*?([A-Za-z_]\w*)(?::(\w+))?\??\}", route))
        assert set(declared) == set(in_route)
        for name, constraint in in_route.items():
            assert declared[name]["required"] is True
            assert declared[name]["schema"]["type"] == ("integer" if constraint == "int" else "string")
        assert all(re.fullmatch(r"[1-5]\d\d", status) for status in op["responses"])


def test_event_grid_endpoint_lists_the_event_grid_functions():
    op = operations()[("/runtime/webhooks/EventGrid", "post")]
    (function_name,) = [p for p in op["parameters"] if p["name"] == "functionName"]
    event_grid = [f["name"] for f in registered_functions() if f["trigger"] == "eventGridTrigger"]
    assert function_name["schema"]["enum"] == event_grid
    assert op["security"] == [{"systemKeyQuery": []}, {"systemKeyHeader": []}]


def test_security_schemes_are_the_hosts_key_locations():
    schemes = spec()["components"]["securitySchemes"]
    for name, scheme in schemes.items():
        assert scheme["type"] == "apiKey"
        where = ("header", "x-functions-key") if name.endswith("Header") else ("query", "code")
        assert (scheme["in"], scheme["name"]) == where
    used = {name for op in operations().values() for alternative in op["security"] for name in alternative}
    assert used == set(schemes)


def test_the_description_is_valid_openapi():
    import jsonschema
    import schemathesis
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.definitions import OPENAPI_30  # the OpenAPI 3.0 meta-schema

    jsonschema.Draft4Validator(OPENAPI_30).validate(spec())
    loaded = schemathesis.openapi.from_path(SPEC_PATH)
    results = list(loaded.get_all_operations())
    assert results and all(isinstance(r, Ok) for r in results), [r for r in results if not isinstance(r, Ok)]
    assert len(results) == len(operations())
