"""Schemathesis against docs/openapi.json on the running host: positive and negative cases of every operation,
with the right key (function, admin or Event Grid system key) most of the time; ``not_a_server_error`` and the
harness's oracle (no crash, nothing queued except what a dead-letter replay re-sends)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.fuzz.harness import NOTHING, Expect, FuzzWorld, budget, fuzz_settings
from tests.hosting import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(300, budget()))]

INGRESS = "openapi (schemathesis)"
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


def test_openapi_description_with_schemathesis(fuzz_world: FuzzWorld) -> None:
    schema = schemathesis.openapi.from_path(SPEC)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    host, fuzzer = fuzz_world.host, fuzz_world.fuzzer
    keys = {"system": host.event_grid_key, "admin": host.master, "function": host.function_key}
    kinds = _key_kinds()
    assert set(kinds) == {op.ok().label for op in schema.get_all_operations()}

    @fuzz_settings(INGRESS)
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
        figures = fuzzer.figures.of(INGRESS)
        figures.payloads += 1
        figures.invalid_payloads += expect.invalid
        started = time.monotonic()
        try:
            response = case.call(base_url=host.url, session=fuzzer.session, headers=headers, timeout=60)
        except Exception as exc:
            figures.crashes += 1
            raise AssertionError(
                f"{INGRESS}: no answer ({type(exc).__name__}: {exc}) to {case.as_curl_command()}"
            ) from exc
        finally:
            figures.seconds += time.monotonic() - started
        new = fuzzer.check(INGRESS, response.status_code, response.text, expect, mark, case.as_curl_command())
        if replay and response.status_code == 200:
            assert len(new) == response.json()["counts"].get("replayed", 0)
        case.validate_response(response, checks=[not_a_server_error])

    run()
