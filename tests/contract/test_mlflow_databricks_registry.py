"""The MLflow registry adapter against MLflow's own Databricks workspace registry store.

``MlflowClient(registry_uri="databricks")`` builds MLflow's ``DatabricksWorkspaceModelRegistryRestStore``
(its ``RestStore`` with every alias method refused: ``INTERNAL_ERROR`` "unsupported for models in the
Workspace Model Registry"); the HTTP answers come from a local server speaking the Databricks REST
shapes (tests/databricks_rest.py). Without aliases, the stage tags carry the lifecycle. Evaluation
reads a version's files as ``mlflow.pyfunc.load_model("models:/…")`` would: MLflow's
``DatabricksModelsArtifactRepository`` lists them and fetches each through a signed URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.adapters.mlflow.evaluator import MlflowEvaluator
from shared.adapters.mlflow.registry import MlflowRegistry
from shared.catalogue import load_catalogue
from shared.errors import PermanentError, TransientError, UnknownVersion
from tests.databricks_rest import (
    WS,
    DatabricksRest,
    catalogue_for,
    databricks_env,
    lifecycle_step,
    tiny_dataset,
    tiny_model,
)
from tests.fakes import services

MODEL = "churn-classifier"
TOKEN = "dapi-local-workspace-token"
SEARCH, GET, ALIAS = f"{WS}/model-versions/search", f"{WS}/model-versions/get", f"{WS}/registered-models/alias"


@pytest.fixture(params=["databricks-sdk", "requests"])
def workspace(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[DatabricksRest]:
    """The server, reached through MLflow's Databricks SDK client (a token) or its requests path.

    The requests path is what the app's managed identity uses (``MLFLOW_ENABLE_DB_SDK=false``, see
    shared/adapters/databricks/mlflow_auth.py).
    """
    server = DatabricksRest(TOKEN, unity_catalog=False)
    with server.running():
        databricks_env(monkeypatch, server)
        monkeypatch.setenv("MLFLOW_ENABLE_DB_SDK", "true" if request.param == "databricks-sdk" else "false")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "1")
        yield server


@pytest.fixture
def registry(workspace: DatabricksRest) -> MlflowRegistry:
    return MlflowRegistry("databricks", "databricks")


def test_the_adapter_drives_mlflows_workspace_registry_store(registry: MlflowRegistry) -> None:
    from mlflow.store.model_registry.databricks_workspace_model_registry_rest_store import (
        DatabricksWorkspaceModelRegistryRestStore,
    )
    from mlflow.store.model_registry.rest_store import RestStore

    store = registry._writer.store
    assert isinstance(store, DatabricksWorkspaceModelRegistryRestStore) and isinstance(store, RestStore)
    assert not registry.capabilities.aliases and not registry.capabilities.unity_catalog


def test_champion_and_challenger_are_the_stage_tags(registry: MlflowRegistry, workspace: DatabricksRest) -> None:
    for stage in ("surpassed", "production", "unstaged", "staged"):
        workspace.add_version(MODEL, {"stage": stage})
    assert registry.alias_version(MODEL, "champion") == "2"
    assert registry.alias_version(MODEL, "challenger") == "4"
    assert registry.alias_version(MODEL, "anything-else") is None
    assert registry.alias_version("no-such-model", "champion") is None
    # Alias writes do nothing: the stage tag already says it.
    registry.set_alias(MODEL, "challenger", "1")
    registry.delete_alias(MODEL, "champion")
    assert registry.alias_version(MODEL, "champion") == "2" and registry.alias_version(MODEL, "challenger") == "4"
    assert [(v.version, v.aliases) for v in registry.list_versions(MODEL)] == [
        ("1", ()),
        ("2", ("champion",)),
        ("3", ()),
        ("4", ("challenger",)),
    ]
    assert registry.get_version(MODEL, "2").aliases == ("champion",)
    assert workspace.count(ALIAS) == 0  # never tried
    # One condition per search, as the workspace registry accepts; tags come with the search.
    assert {c.params["filter"] for c in workspace.api_calls() if c.path == SEARCH} == {
        f"name='{MODEL}'",
        "name='no-such-model'",
    }


def test_an_alias_refusal_under_an_unrecognised_uri_switches_to_the_stage_tags(
    registry: MlflowRegistry, workspace: DatabricksRest
) -> None:
    workspace.add_version(MODEL, {"stage": "production"})
    registry.capabilities.aliases = True  # as if the URI had not told
    assert registry.alias_version(MODEL, "champion") == "1"
    assert not registry.capabilities.aliases
    registry.capabilities.aliases = True
    registry.set_alias(MODEL, "champion", "1")  # refused by MLflow, taken as a no-op
    assert not registry.capabilities.aliases


def test_the_lifecycle_runs_on_the_workspace_registry(workspace: DatabricksRest, tmp_path: Path) -> None:
    svc = services(catalogue=load_catalogue(catalogue_for(MODEL, tmp_path)))
    svc = svc.__class__(**{**svc.__dict__, "registry": MlflowRegistry("databricks", "databricks")})

    v1 = workspace.add_version(MODEL, run_id="r1")
    svc.evaluator.scores[v1] = {"accuracy": 0.8, "f1_macro": 0.8}
    assert lifecycle_step(svc, MODEL, v1) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    v2 = workspace.add_version(MODEL, run_id="r2")
    svc.evaluator.scores[v2] = {"accuracy": 0.9, "f1_macro": 0.9}
    assert lifecycle_step(svc, MODEL, v2) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    assert svc.evaluator.calls == ["1", "2", "1"]  # the champion (from its stage tag) was scored against v2
    v3 = workspace.add_version(MODEL, run_id="r3")
    svc.evaluator.scores[v3] = {"accuracy": 0.5, "f1_macro": 0.5}
    assert lifecycle_step(svc, MODEL, v3) == ["evaluate:lost", "promote:lost"]

    v4, v5 = workspace.add_version(MODEL, run_id="r4"), workspace.add_version(MODEL, run_id="r5")
    svc.evaluator.scores[v4] = {"accuracy": 0.92, "f1_macro": 0.92}
    svc.evaluator.scores[v5] = {"accuracy": 0.95, "f1_macro": 0.95}
    assert lifecycle_step(svc, MODEL, v4, "staging") == ["evaluate:won", "promote:pending-approval"]
    assert lifecycle_step(svc, MODEL, v5, "staging") == ["evaluate:won", "promote:pending-approval"]

    stages = {n: v.tags.get("stage") for n, v in workspace.models[MODEL].versions.items()}
    assert stages == {"1": "surpassed", "2": "production", "3": None, "4": "unstaged", "5": "staged"}
    assert svc.registry.alias_version(MODEL, "champion") == "2"
    assert svc.registry.alias_version(MODEL, "challenger") == "5"
    assert workspace.count(ALIAS) == 0


def test_failures_become_signalbox_errors(registry: MlflowRegistry, workspace: DatabricksRest) -> None:
    workspace.add_version(MODEL)
    with pytest.raises(UnknownVersion):
        registry.get_version(MODEL, "7")
    workspace.fail(GET, 503, "upstream connect error or disconnect/reset before headers", content_type="text/plain")
    with pytest.raises(TransientError):
        registry.get_version(MODEL, "1")
    workspace.fail(SEARCH, 500, '{"error_code": "INTERNAL_ERROR", "message": "try again"}')
    with pytest.raises(TransientError, match="list_versions"):
        registry.alias_version(MODEL, "champion")


# -- evaluation: the registry's copy of the files, through signed URLs ----------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("workspace-model"))


def test_evaluator_downloads_a_version_through_the_registrys_signed_urls(
    workspace: DatabricksRest, model_dir: Path, tmp_path: Path
) -> None:
    version = workspace.add_version(MODEL, run_id="r1", files=model_dir)

    scores = MlflowEvaluator("databricks", "databricks").score(
        MODEL, version, str(tiny_dataset(tmp_path)), ["accuracy"]
    )

    assert scores == {"accuracy": 1.0}
    listed = [c.params for c in workspace.api_calls() if c.path == f"{WS}/model-versions/list-artifacts"]
    assert listed and all((p["name"], p["version"]) == (MODEL, version) for p in listed)
    signed = {c.params["path"] for c in workspace.api_calls() if c.path.endswith("/get-signed-download-uri")}
    assert signed == {path.name for path in model_dir.iterdir()}  # every file, each by its own signed URL
    presigned = [c for c in workspace.calls if c.path.startswith("/presigned/")]
    assert presigned and all(c.authorization is None for c in presigned)  # the token never goes to storage
    assert not [c for c in workspace.calls if c.path.startswith("/api/2.0/dbfs/")]  # the DBFS API is not used


def test_evaluator_download_refused_is_permanent(workspace: DatabricksRest, model_dir: Path, tmp_path: Path) -> None:
    version = workspace.add_version(MODEL, files=model_dir)
    workspace.fail(
        f"{WS}/model-versions/list-artifacts",
        403,
        '{"error_code": "PERMISSION_DENIED", "message": "no CAN_READ on the registered model"}',
    )
    with pytest.raises(PermanentError, match="no CAN_READ"):
        MlflowEvaluator("databricks", "databricks").score(MODEL, version, str(tiny_dataset(tmp_path)), ["accuracy"])


# -- the history: one run per entry in /Shared/signalbox-history-MODEL ------------------------------------


def _entry(kind: str, at: datetime, why: str = "") -> dict[str, str]:
    from shared.history import Entry

    return Entry(kind=kind, what=f"{kind} v1", why=why, version="1", cause=f"cause-{kind}").fields(at)  # type: ignore[arg-type]


def test_history_is_written_and_read_through_the_workspace_tracking_api(
    registry: MlflowRegistry, workspace: DatabricksRest
) -> None:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    for minutes, kind in enumerate(("trained", "evaluated", "promoted", "deployed")):
        registry.append_history(MODEL, _entry(kind, start + timedelta(minutes=minutes), why="x" * 1000))

    (experiment,) = workspace.experiments.values()
    assert experiment["name"] == f"/Shared/signalbox-history-{MODEL}"  # an absolute workspace path
    assert {run["info"]["status"] for run in workspace.runs.values()} == {"FINISHED"}
    assert [e["kind"] for e in registry.history(MODEL)] == ["deployed", "promoted", "evaluated", "trained"]
    since = registry.history(MODEL, since=start + timedelta(minutes=2))
    assert [e["kind"] for e in since] == ["deployed", "promoted"]
    assert registry.history("no-history-yet") == []
    searches = [c.params for c in workspace.api_calls() if c.path == f"{WS}/runs/search"]
    assert searches and not any(p.get("filter") for p in searches)  # no start-time filter: cut while reading


def test_history_written_by_two_workers_at_once_shares_one_experiment(
    registry: MlflowRegistry, workspace: DatabricksRest
) -> None:
    """The second worker's create answers ALREADY_EXISTS (the remapped code Databricks documents)."""
    other = MlflowRegistry("databricks", "databricks")
    registry.append_history(MODEL, _entry("trained", datetime(2026, 12, 1, tzinfo=UTC)))
    experiment_id = next(iter(workspace.experiments))
    # The other worker did not see it in its lookup: its create is refused, as in a race.
    workspace.fail(f"{WS}/experiments/get-by-name", 404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}')
    workspace.fail(f"{WS}/experiments/create", 400, '{"error_code": "ALREADY_EXISTS", "message": "Node exists"}')
    other.append_history(MODEL, _entry("evaluated", datetime(2026, 12, 1, 0, 1, tzinfo=UTC)))
    assert list(workspace.experiments) == [experiment_id]
    assert [e["kind"] for e in registry.history(MODEL)] == ["evaluated", "trained"]
