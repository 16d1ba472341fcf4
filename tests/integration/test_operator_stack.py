"""An operator in an incident, on a running embedded default: roll back, hold, release, history.

One ``signalbox host --with-mlflow`` serves the module (the lifecycle tests' stack, with this
module's catalogue: one model per scenario, so scenarios cannot act on each other). The tests
act as an operator does, through the ``signalbox`` CLI and the HTTP functions with the function
key, and read the result straight from MLflow (tags, aliases, the history experiment), from
``GET /api/status`` and ``GET /api/history``, and from the endpoint's stable URL.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from signalbox import cli
from tests.hosting import REPO
from tests.integration.test_lifecycle import Stack, running_stack

pytestmark = pytest.mark.integration

CATALOGUE = REPO / "tests" / "integration" / "operator_catalogue.toml"
MODELS = ("op-rollback", "op-race", "op-hold")
STAGES = (None, "staged", "unstaged", "production", "surpassed")


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("operator") / "state", catalogue=CATALOGUE) as running:
        for model in MODELS:  # every scenario starts from a v1 in production: train them side by side
            running.land(model + "/", "batch-001.csv", "small", seed=11)
        yield running


# -- helpers ---------------------------------------------------------------------------------------


def run_cli(stack: Stack, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """``signalbox ARGS --state-dir STATE --host-url URL``; its JSON output."""
    capsys.readouterr()
    code = cli.main([*args, "--state-dir", str(stack.state), "--host-url", stack.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def post(stack: Stack, model: str, action: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{stack.url}/api/models/{model}/{action}",
        data=data,
        headers={"x-functions-key": stack.function_key, "Content-Type": "application/json"},
        timeout=60,
    )


def history(stack: Stack, model: str, **params: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{stack.url}/api/history/{model}", params=params, headers={"x-functions-key": stack.function_key}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model
    return list(body["entries"])


def tags_of(stack: Stack, model: str) -> dict[str, dict[str, str]]:
    return {v: stack.tags(model, v) for v in stack.versions(model)}


def check_invariants(stack: Stack, model: str) -> dict[str, dict[str, str]]:
    """≤ 1 production, ≤ 1 staged, champion = production, the endpoint routed to it with one server."""
    versions = tags_of(stack, model)
    production = [v for v, t in versions.items() if t.get("stage") == "production"]
    staged = [v for v, t in versions.items() if t.get("stage") == "staged"]
    assert all(t.get("stage") in STAGES for t in versions.values()), versions
    assert len(production) <= 1 and len(staged) <= 1, (production, staged)
    assert stack.aliases(model).get("champion") == (production[0] if production else None)
    if production:
        assert stack.route(model).get("version") == production[0], stack.route(model)
        slots = sorted(p.stem for p in (stack.state / "endpoints" / model).glob("*.json") if p.name != "route.json")
        assert slots == [stack.route(model)["slot"]], f"servers left in slots {slots}"
    return versions


def land_and_deploy(stack: Stack, model: str, name: str, kind: Any, version: str) -> None:
    stack.land(model + "/", name, kind, seed=int(version) * 7)
    stack.wait(f"{model} v{version} in production", lambda: stack.in_production(model, version))


def land_medium(stack: Stack, model: str, name: str) -> None:
    """A batch between "small" and "full" (about 0.87 accuracy against 0.65 and 0.93)."""
    import pandas as pd

    from signalbox.examples.iris.data import TARGET, training_frame
    from tests.integration.test_lifecycle import MEDIUM_PER_CLASS

    full = training_frame("full")
    medium = pd.concat([full[full[TARGET] == label].head(n) for label, n in MEDIUM_PER_CLASS.items()])
    aside = stack.state.parent / "incoming" / f"{model}-{name}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    medium.to_csv(aside, index=False)
    target = stack.state / "landing" / "landing" / model / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(aside, target)


def model_files(stack: Stack, model: str, version: str) -> Path:
    source = stack.mlflow.get_model_version_download_uri(model, version)
    if source.startswith("models:/"):
        source = stack.mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    # The local server proxies artifacts (mlflow-artifacts:/PATH) from STATE/mlartifacts/PATH.
    assert source.startswith("mlflow-artifacts:/"), source
    path = stack.state / "mlartifacts" / source.removeprefix("mlflow-artifacts:/")
    assert (path / "MLmodel").is_file(), path
    return path


# -- roll back after a bad v2; history -------------------------------------------------------------


def test_roll_back_after_a_bad_v2_then_read_the_history(ops: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    model = "op-rollback"
    stack = ops
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    url = stack.record(model, "1", "signalbox.deployment")["url"]
    land_and_deploy(stack, model, "batch-002.csv", "full", "2")
    stack.settle()

    # Refusals answer at once and change nothing.
    before = tags_of(stack, model)
    assert post(stack, model, "rollback", b"{not json").status_code == 400
    missing = post(stack, model, "rollback", {"by": "alice"})
    assert missing.status_code == 400 and "reason" in missing.json()["error"]
    assert post(stack, model, "rollback", {"to": "9", "by": "a", "reason": "r"}).status_code == 404
    assert post(stack, "no-such-model", "rollback", {"by": "a", "reason": "r"}).status_code == 404
    already = post(stack, model, "rollback", {"to": "2", "by": "a", "reason": "r"})
    assert already.status_code == 409 and "already in production" in already.json()["error"]
    assert tags_of(stack, model) == before

    # signalbox rollback: v1 serves again, through the same URL.
    answer = run_cli(stack, capsys, "rollback", model, "--by", "alice", "--reason", "v2 answers wrong for virginica")
    assert answer["to_version"] == "1" and answer["from_version"] == "2" and answer["outcome"] == "queued"
    assert answer["request_id"].startswith("cli-")
    # The same request again (a double click, a client retry): the same answer, one rollback.
    again = post(stack, model, "rollback", {"by": "alice", "reason": "again", "request_id": answer["request_id"]})
    assert again.status_code == 202 and again.json()["to_version"] == "1"
    stack.wait_event(model, "ModelRolledBack", version="1")
    stack.settle()
    done = post(stack, model, "rollback", {"by": "alice", "reason": "again", "request_id": answer["request_id"]})
    assert done.status_code == 202 and done.json() == answer  # answered from the record, nothing queued
    stack.settle()

    versions = check_invariants(stack, model)
    assert versions["1"]["stage"] == "production" and versions["2"]["stage"] == "unstaged"
    assert stack.aliases(model) == {"champion": "1"}
    rollback = json.loads(versions["2"]["signalbox.rollback"])
    assert (rollback["by"], rollback["reason"], rollback["to_version"]) == (
        "alice",
        "v2 answers wrong for virginica",
        "1",
    )
    assert rollback["request_id"] == answer["request_id"] and rollback["at"]
    assert versions["2"]["signalbox.outcome"] == "rolled back to v1 by alice: v2 answers wrong for virginica"
    deployment = json.loads(versions["1"]["signalbox.deployment"])
    assert deployment["status"] == "deployed" and deployment["url"] == url == stack.endpoint_url(model)
    assert deployment["rollback_from"] == "2" and deployment["by"] == "alice"
    stack.assert_serves(model, model, "1")  # the stable URL scores exactly as v1's evaluation said
    assert len(stack.events(model, "ModelRolledBack")) == 1
    status = stack.status(model)
    assert status["champion"] == "1" and status["held"] is None
    assert {v["version"]: v["rollback"] for v in status["versions"]}["2"]["by"] == "alice"

    # v2's model files are gone: a roll forward to it is refused and nothing changes.
    files = model_files(stack, model, "2")
    files.rename(files.with_name(files.name + ".gone"))
    before = tags_of(stack, model)
    gone = post(stack, model, "rollback", {"to": "2", "by": "alice", "reason": "try v2 again"})
    assert gone.status_code == 409 and "model files" in gone.json()["error"], gone.text
    stack.settle()
    assert tags_of(stack, model) == before and stack.route(model)["version"] == "1"

    # The history: every step of both lifecycles and the rollback, newest first, from the registry.
    entries = history(stack, model)
    whats = [e["what"] for e in entries]
    for expected in (
        "v1 won its evaluation",
        "v1 none → staged",
        "challenger → v1",
        "v1 approved automatically",
        "v1 deployed to op-rollback",
        "v1 staged → production",
        "champion → v1",
        "challenger removed (was v1)",
        "v2 won its evaluation",
        "v1 production → surpassed",
        "v2 staged → production",
        "champion → v2 (was v1)",
        "rollback to v1 requested (v2 serves)",
        "v2 production → unstaged",
        "v1 surpassed → production",
        "champion → v1 (was v2)",
        "v1 deployed to op-rollback again (rollback)",
        "rolled back to v1 from v2",
    ):
        assert whats.count(expected) == 1, (expected, whats)
    keys = [e["key"] for e in entries]
    assert keys == sorted(keys, reverse=True)
    assert whats.index("rolled back to v1 from v2") < whats.index("v2 staged → production")
    assert whats.index("v2 staged → production") < whats.index("v1 staged → production")
    for entry in entries:
        assert entry["at"] and entry["who"] and entry["kind"] and entry["correlation_id"] and entry["cause"], entry
    by_what = {e["what"]: e for e in entries}
    assert by_what["v2 production → unstaged"]["who"] == "alice"
    assert by_what["v2 production → unstaged"]["why"] == "rollback: v2 answers wrong for virginica"
    # Correlation ids tie each entry to its lifecycle: v2's evaluation to the training that made v2.
    assert by_what["v2 won its evaluation"]["correlation_id"] == versions["2"]["signalbox.correlation_id"]
    assert by_what["rolled back to v1 from v2"]["correlation_id"] == by_what["champion → v1 (was v2)"]["correlation_id"]
    # Kept in the registry: the history experiment's runs, one per entry, in the MLflow server.
    experiment = stack.mlflow.get_experiment_by_name(f"signalbox-history-{model}")
    runs = stack.mlflow.search_runs([experiment.experiment_id], max_results=1000)
    assert {r.data.tags["signalbox.history.id"] for r in runs} == {e["id"] for e in entries}
    # --since keeps what came after; the CLI reads the same.
    newest = entries[0]["at"]
    recent = history(stack, model, since=newest)
    assert recent and all(e["at"] >= newest for e in recent)
    assert (
        requests.get(
            f"{stack.url}/api/history/{model}",
            params={"since": "yesterday"},
            headers={"x-functions-key": stack.function_key},
            timeout=30,
        ).status_code
        == 400
    )
    cli_history = run_cli(stack, capsys, "history", model, "--since", "7d", "--json")
    assert [e["id"] for e in cli_history["entries"]] == [e["id"] for e in entries]


# -- a rollback racing a promotion -----------------------------------------------------------------


def test_a_rollback_racing_a_promotion_ends_with_one_production_version(ops: Stack) -> None:
    model = "op-race"
    stack = ops
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    land_medium(stack, model, "batch-002.csv")
    stack.wait(f"{model} v2 in production", lambda: stack.in_production(model, "2"))
    stack.settle()
    stack.land(model + "/", "batch-003.csv", "full", seed=3)
    # As soon as v3 is staged its deployment is on its way: the rollback joins the same session.
    stack.wait_event(model, "VersionStaged", version="3")
    answer = post(stack, model, "rollback", {"to": "1", "by": "alice", "reason": "race", "request_id": "race-1"})
    assert answer.status_code == 202, answer.text
    stack.wait_event(model, "ModelRolledBack", version="1")
    stack.wait_event(model, "VersionDeployed", version="3")
    stack.settle()

    versions = check_invariants(stack, model)
    production = [v for v, t in versions.items() if t.get("stage") == "production"]
    assert production in (["1"], ["3"]), versions
    # The session ran them one after the other; the later one serves.
    entries = history(stack, model)
    rolled = next(i for i, e in enumerate(entries) if e["what"].startswith("rolled back to v1"))
    deployed = next(i for i, e in enumerate(entries) if e["what"] == "v3 deployed to op-race")
    assert production == (["1"] if rolled < deployed else ["3"])
    stack.assert_serves(model, model, production[0])
    if production == ["1"]:
        assert versions["3"]["stage"] == "unstaged" and json.loads(versions["3"]["signalbox.rollback"])["by"] == "alice"
    else:
        assert versions["1"]["stage"] == "surpassed" and versions["2"]["stage"] == "unstaged"


# -- hold during a challenger's win, then release --------------------------------------------------


def test_hold_keeps_a_winner_staged_and_release_deploys_it(ops: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    model = "op-hold"
    stack = ops
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()
    held = run_cli(stack, capsys, "hold", model, "--by", "bob", "--reason", "checking a data incident")
    assert held["outcome"] == "held" and held["held"]["by"] == "bob"
    status = stack.status(model)
    assert status["held"]["by"] == "bob" and status["held"]["reason"] == "checking a data incident"
    assert status["held"]["at"]

    stack.land(model + "/", "batch-002.csv", "full", seed=2)
    stack.wait_event(model, "VersionStaged", version="2")
    stack.settle()
    time.sleep(1)  # nothing may follow: no deployment while held
    stack.settle()
    v2 = stack.tags(model, "2")
    assert v2["stage"] == "staged" and v2["approval"] == "auto"
    decision = json.loads(v2["signalbox.decision"])
    assert decision["won"] is True and decision["held"]["reason"] == "checking a data incident"
    assert not stack.events(model, "VersionDeployed", version="2")
    assert stack.route(model)["version"] == "1"
    refused = stack.decide(model, "2", "approve")
    assert refused.status_code == 409 and "checking a data incident" in refused.json()["error"]
    check_invariants(stack, model)

    released = run_cli(stack, capsys, "release", model, "--by", "bob", "--reason", "incident closed")
    assert released["outcome"] == "released" and released["sent"] == {"kind": "deploy", "version": "2"}
    stack.wait(f"{model} v2 in production", lambda: stack.in_production(model, "2"))
    stack.settle()
    assert stack.status(model)["held"] is None
    check_invariants(stack, model)
    stack.assert_serves(model, model, "2")
    whats = [e["what"] for e in history(stack, model)]
    assert whats.index("v2 deployed to op-hold") < whats.index("op-hold released: automatic deployment resumes")
    assert whats.index("op-hold released: automatic deployment resumes") < whats.index("v2 waits: the model is held")
    assert whats.index("v2 waits: the model is held") < whats.index("op-hold held: no automatic deployment")
    again = post(stack, model, "release", {"by": "bob", "request_id": str(uuid.uuid4())})
    assert again.status_code == 200 and again.json()["outcome"] == "not-held"
