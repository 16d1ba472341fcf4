"""The registry sweep against real registries: versions no event announced each get one decision.

- The embedded default (``signalbox host --with-mlflow``: the local host, a real ``mlflow server``
  with its registry webhook): the host and its MLflow server are stopped, versions are registered
  straight into the server's SQL store (``MlflowClient`` on ``sqlite:///…/mlflow.db``, so no
  webhook can fire), the stack is started again and the reconcile timer is fired by hand
  (``POST /admin/functions/reconcile``, as Core Tools does): each version gets its decision,
  exactly once, and a late webhook or another sweep changes nothing.
- ``Registry.versions_after`` on each store: MLflow's SQL store (one ``version_number >`` search),
  the Databricks workspace registry and Unity Catalog through MLflow's own REST stores against
  the local Databricks REST server (tests/databricks_rest.py), newest-first or not.
- Unity Catalog end to end: a version registered by hand reaches its decision through the sweep
  alone (the handlers over the real ``MlflowRegistry`` on ``databricks-uc``; fakes for the rest).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from shared import domain, handlers
from shared.adapters.mlflow.registry import MlflowRegistry
from shared.handlers.reconcile import reconcile
from signalbox.localhost.process import HostProcess
from tests.databricks_rest import UC, WS, DatabricksRest, catalogue_for, databricks_env
from tests.fakes import services
from tests.hosting import REPO
from tests.integration.test_crash_recovery import _launch
from tests.integration.test_lifecycle import Stack, _clean_env, _model_version_created, _stop

pytestmark = pytest.mark.integration

MODEL = "rc-main"
TOKEN = "dapi-local-reconcile-token"

# Logs one iris classifier to the tracking server (no registration, so no webhook): model id, run id.
_LOG_MODEL = """
import json, sys
import mlflow
from sklearn.linear_model import LogisticRegression
from signalbox.examples.iris.data import FEATURES, TARGET, training_frame

mlflow.set_tracking_uri(sys.argv[1])
frame = training_frame(seed=7)
model = LogisticRegression(max_iter=500).fit(frame[list(FEATURES)], frame[TARGET].astype(str))
with mlflow.start_run() as run:
    info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
print(json.dumps({"model_id": info.model_id, "run_id": run.info.run_id}))
"""


# -- the embedded default, with its MLflow server down while versions are registered ------------------


def _fire_timer(stack: Stack) -> None:
    answer = requests.post(
        f"{stack.url}/admin/functions/reconcile", headers={"x-functions-key": stack.master_key}, timeout=30
    )
    assert answer.status_code == 202, answer.text


def _register_in_the_sql_store(state: Path, model_id: str, run_id: str, count: int) -> list[str]:
    """Versions written straight into the stopped server's store: nothing announces them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(state / 'mlflow.db').resolve()}")
    source = client.get_logged_model(model_id).artifact_location
    try:
        client.create_registered_model(MODEL)
    except Exception as error:  # registered by an earlier start
        if "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    created = [client.create_model_version(MODEL, source, run_id=run_id, model_id=model_id) for _ in range(count)]
    return [str(v.version) for v in created]


def test_versions_registered_while_mlflow_was_down_each_get_one_decision_through_the_sweep(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {
        **_clean_env(),
        "SIGNALBOX_CATALOGUE": str(catalogue_for(MODEL, tmp_path)),
        # Manual approval: the winners wait as staged versions; no scoring server is started.
        "SIGNALBOX_ENVIRONMENT": "staging",
        "SIGNALBOX_RECONCILE_GRACE_SECONDS": "1",
        # The sweeps run when the test fires them (a yearly schedule: never during the test).
        "SIGNALBOX_RECONCILE_SCHEDULE": "0 0 0 1 1 *",
    }
    host = HostProcess(state, args=("--with-mlflow",), env=env, log_dir=tmp_path, new_session=True)
    stack = _start(host, state)
    try:
        logged = subprocess.run(
            [sys.executable, "-c", _LOG_MODEL, stack.mlflow_url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        ids = json.loads(logged.stdout.strip().splitlines()[-1])
        _stop(stack)

        versions = _register_in_the_sql_store(state, ids["model_id"], ids["run_id"], count=3)
        assert versions == ["1", "2", "3"]

        stack = _start(host, state)
        time.sleep(1.5)  # past the grace period
        assert not stack.events(MODEL, "VersionEvaluated"), "something announced the versions"
        _fire_timer(stack)
        for version in versions:
            stack.wait(f"v{version} decided", lambda v=version: "signalbox.decision" in stack.tags(MODEL, v))
        stack.settle()
        (first,) = stack.events(MODEL, "Reconciled")
        assert first["data"]["registry"]["versions_sent"] == 3, first
        assert stack.mlflow.get_registered_model(MODEL).tags[domain.RECONCILED_VERSION] == "3"

        # A late webhook for v2, then a sweep from the command line: nothing is evaluated again.
        answer = stack.mlflow_webhook(_model_version_created(MODEL, "2"), str(uuid.uuid4()))
        assert answer.status_code == 200, answer.text
        stack.settle()
        done = subprocess.run(
            [sys.executable, "-m", "signalbox.cli", "reconcile", "--state-dir", str(state), "--json"],
            cwd=REPO,
            env={**env, "MLFLOW_TRACKING_URI": stack.mlflow_url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        (report,) = json.loads(done.stdout)
        assert report["model"] == MODEL and report["sent"] == 0, report
        assert report["counts"]["registry"]["versions_new"] == 0, report
        stack.settle()
        second = stack.events(MODEL, "Reconciled")[1]
        assert second["data"]["sent"] == 0, second
        for version in versions:
            assert len(stack.events(MODEL, "VersionEvaluated", version=version)) == 1, version
        # The late webhook's evaluate command has the sweep's message id: duplicate detection dropped it.
        invocations = stack.host_status()["invocations"]
        assert invocations.get("evaluate:Succeeded", 0) == 3, invocations
        assert invocations.get("mlflow_webhook:Succeeded", 0) == 1, invocations
    finally:
        _stop(stack)


def _start(host: HostProcess, state: Path) -> Stack:
    mlflow_url = _launch(host)
    return Stack(process=host.process, url=host.url, state=state, log_path=host.log_path, mlflow_url=mlflow_url)


# -- versions_after on each store -----------------------------------------------------------------------


def test_versions_after_on_mlflows_sql_store_is_one_ordered_search(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model(MODEL)
    client.create_registered_model(f"{MODEL}-other")
    for number in range(1, 13):
        tags = {domain.DECISION: "{}"} if number <= 9 else {}
        client.create_model_version(MODEL, f"file:///m/{number}", tags=tags)
        client.create_model_version(f"{MODEL}-other", f"file:///o/{number}")
    registry = MlflowRegistry(uri)
    searches: list[dict[str, Any]] = []
    original = registry._client.search_model_versions

    def counted(*args: Any, **kwargs: Any) -> Any:
        searches.append(kwargs)
        return original(*args, **kwargs)

    registry._client.search_model_versions = counted  # type: ignore[method-assign]
    found = registry.versions_after(MODEL, "9", 100)
    assert [(v.model_name, v.version) for v in found] == [(MODEL, "10"), (MODEL, "11"), (MODEL, "12")]
    assert all(domain.DECISION not in v.tags and v.created_at is not None for v in found)
    assert len(searches) == 1 and "version_number > 9" in searches[0]["filter_string"]
    assert [v.version for v in registry.versions_after(MODEL, "0", 2)] == ["1", "2"]
    assert registry.versions_after(MODEL, "12", 100) == []
    assert registry.versions_after("no-such-model", "0", 100) == []


class _NewestFirst(DatabricksRest):
    """The local Databricks REST server answering searches newest version first, as Databricks does."""

    def _search(self, params: dict[str, Any]) -> dict[str, Any]:
        saved = {name: dict(m.versions) for name, m in self.models.items()}
        try:
            for model in self.models.values():
                model.versions = dict(reversed(list(model.versions.items())))
            return super()._search(params)
        finally:
            for name, versions in saved.items():
                self.models[name].versions = versions


@pytest.fixture(params=["unity-catalog", "unity-catalog-newest-first", "workspace"])
def databricks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabricksRest]:
    kind = str(request.param)
    server = (_NewestFirst if kind.endswith("newest-first") else DatabricksRest)(
        TOKEN, unity_catalog=kind.startswith("unity")
    )
    with server.running():
        databricks_env(monkeypatch, server)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield server


def _registry(server: DatabricksRest) -> MlflowRegistry:
    return MlflowRegistry("databricks", "databricks-uc" if server.unity_catalog else "databricks")


def test_versions_after_on_databricks_searches_by_name_and_reads_only_the_new(databricks: DatabricksRest) -> None:
    name = "main.signalbox.churn" if databricks.unity_catalog else "churn"
    for number in range(1, 2501):
        databricks.add_version(name, {domain.DECISION: "{}"} if number <= 2490 else {})
    registry = _registry(databricks)
    base = UC if databricks.unity_catalog else WS
    found = registry.versions_after(name, "2490", 100)
    assert [v.version for v in found] == [str(n) for n in range(2491, 2501)]
    assert all(domain.DECISION not in v.tags for v in found)  # tags read (UC: one get per new version)
    searches = [c for c in databricks.api_calls() if c.path == f"{base}/model-versions/search"]
    assert all(c.params.get("filter") == f"name='{name}'" and "order_by" not in c.params for c in searches)
    gets = databricks.count(f"{base}/model-versions/get")
    assert gets == (10 if databricks.unity_catalog else 0)
    if isinstance(databricks, _NewestFirst):
        assert len(searches) == 1  # stops at the page that reaches the watermark
    else:
        assert len(searches) == 3  # 2,500 versions in pages of 1,000, oldest first: read to the end
    assert [v.version for v in registry.versions_after(name, "2498", 1)] == ["2499"]


def test_delete_model_tag_on_databricks_takes_a_missing_tag_as_deleted(databricks: DatabricksRest) -> None:
    name = "main.signalbox.churn" if databricks.unity_catalog else "churn"
    databricks.add_version(name)
    registry = _registry(databricks)
    registry.set_model_tag(name, "signalbox.run.42", "{}")
    path = f"{UC if databricks.unity_catalog else WS}/registered-models/delete-tag"
    databricks.fail(path, 404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such tag"}))
    registry.delete_model_tag(name, "signalbox.run.42")  # absent (as the server says): no error
    assert databricks.count(path, "DELETE") == 1


# -- Unity Catalog: the sweep is the trigger ----------------------------------------------------------


def test_a_version_registered_by_hand_in_unity_catalog_is_decided_through_the_sweep_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.catalogue import load_catalogue

    name = "main.signalbox.churn"
    server = _NewestFirst(TOKEN, unity_catalog=True)
    with server.running():
        databricks_env(monkeypatch, server)
        svc = services(catalogue=load_catalogue(catalogue_for(name, tmp_path)))
        svc.registry = MlflowRegistry("databricks", "databricks-uc")
        # Registered in a notebook: Unity Catalog has no registry webhooks, nothing else announces it.
        version = server.add_version(name, run_id="nb-run")
        svc.evaluator.scores[version] = {"accuracy": 0.9, "f1_macro": 0.9}
        svc.clock.now = svc.clock.now + timedelta(days=1)  # long after it was registered

        report = reconcile(name, svc, sweeps=("registry", "runs"))
        assert report.counts["registry"]["versions_sent"] == 1
        outcomes = []
        while svc.bus.sent:
            envelope, _ = svc.bus.sent.pop(0)
            outcomes.append(f"{envelope.command.kind}:{handlers.PIPELINE[envelope.queue](envelope, svc)}")
        assert outcomes == ["evaluate:won", "promote:deploy", "deploy:deployed"]
        assert json.loads(server.models[name].versions[version].tags[domain.DECISION])["won"] is True
        assert server.models[name].aliases == {"champion": version}
        assert server.models[name].tags[domain.RECONCILED_VERSION] == version

        # The next sweep: one search, no version read, nothing sent.
        before = len(server.api_calls())
        assert reconcile(name, svc, sweeps=("registry",)).sent == 0
        calls = server.api_calls()[before:]
        assert [c.path for c in calls] == [f"{UC}/registered-models/get", f"{UC}/model-versions/search"]
        assert svc.evaluator.calls == [version]
