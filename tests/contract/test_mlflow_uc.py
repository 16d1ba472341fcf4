"""The MLflow adapters against MLflow's own Unity Catalog store (``UcModelRegistryStore``).

``MlflowClient(registry_uri="databricks-uc")`` runs as in Azure (MLflow's store, the Databricks SDK's
API client, MLflow's UC artifact repository); only the HTTP answers come from a local server
speaking the Databricks REST shapes (tests/databricks_rest.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.mlflow.client import HTTP_DEFAULTS
from shared.adapters.mlflow.evaluator import MlflowEvaluator
from shared.adapters.mlflow.registry import MlflowRegistry
from shared.errors import PermanentError, TransientError, UnknownVersion
from tests.databricks_rest import (
    UC,
    DatabricksRest,
    catalogue_for,
    databricks_env,
    isolate_mlflow_http_env,
    lifecycle_step,
    tiny_dataset,
    tiny_model,
)
from tests.fakes import services

MODEL = "main.signalbox.churn"
TOKEN = "dapi-local-test-token"
SEARCH, GET = f"{UC}/model-versions/search", f"{UC}/model-versions/get"


@pytest.fixture(params=["databricks-sdk", "requests"])
def uc(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[DatabricksRest]:
    """The server, reached through MLflow's Databricks SDK client (a token) or its requests path.

    The requests path is what the app's managed identity uses (``MLFLOW_ENABLE_DB_SDK=false``, see
    shared/adapters/databricks/mlflow_auth.py).
    """
    server = DatabricksRest(TOKEN, unity_catalog=True)
    with server.running():
        databricks_env(monkeypatch, server)
        monkeypatch.setenv("MLFLOW_ENABLE_DB_SDK", "true" if request.param == "databricks-sdk" else "false")
        # Failure tests must not wait out the adapter's retry budget; the defaults have their own test.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "1")
        yield server


@pytest.fixture
def registry(uc: DatabricksRest) -> MlflowRegistry:
    return MlflowRegistry("databricks", "databricks-uc")


def _stages(uc: DatabricksRest, model: str = MODEL) -> dict[str, str | None]:
    return {n: v.tags.get("stage") for n, v in uc.models[model].versions.items()}


def test_the_adapter_drives_mlflows_unity_catalog_store(registry: MlflowRegistry, uc: DatabricksRest) -> None:
    from mlflow.store._unity_catalog.registry.rest_store import UcModelRegistryStore

    assert isinstance(registry._writer.store, UcModelRegistryStore)
    # A "databricks" tracking URI alone means Unity Catalog in MLflow 3: the adapter knows it too.
    assert MlflowRegistry("databricks").capabilities.unity_catalog
    uc.add_version(MODEL, {"stage": "production"}, run_id="r1")
    assert registry.get_version(MODEL, "1").tags == {"stage": "production"}
    calls = uc.api_calls()
    assert calls and all(c.authorization == f"Bearer {TOKEN}" for c in calls)


def test_versions_with_tag_reads_each_version_and_never_filters_on_tags(
    registry: MlflowRegistry, uc: DatabricksRest
) -> None:
    for number in range(1, 6):
        uc.add_version(MODEL, {"stage": "staged" if number in (2, 4) else "surpassed"}, run_id="r1")
    uc.add_version("main.signalbox.other", {"stage": "staged"})
    uc.models[MODEL].aliases["challenger"] = "4"

    found = registry.versions_with_tag(MODEL, "stage", "staged")

    assert [(v.version, v.aliases, v.tags["stage"]) for v in found] == [
        ("2", (), "staged"),
        ("4", ("challenger",), "staged"),
    ]
    searches = [c.params["filter"] for c in uc.api_calls() if c.path == SEARCH]
    assert searches == [f"name='{MODEL}'"]  # one condition, as UC accepts; never tags.
    assert uc.count(GET) == 5  # the cost on UC: one search page plus one read per version
    assert registry.versions_with_tag(MODEL, "stage", "production") == []
    assert registry.versions_with_tag("main.signalbox.nothing", "stage", "staged") == []


def test_listing_and_run_search_carry_tags_and_aliases(registry: MlflowRegistry, uc: DatabricksRest) -> None:
    uc.add_version(MODEL, {"stage": "surpassed"}, run_id="run-a")
    uc.add_version(MODEL, {"stage": "production"}, run_id="run-b")
    uc.models[MODEL].aliases["champion"] = "2"
    listed = registry.list_versions(MODEL)
    assert [(v.version, v.tags, v.aliases) for v in listed] == [
        ("1", {"stage": "surpassed"}, ()),
        ("2", {"stage": "production"}, ("champion",)),
    ]
    assert [(v.model_name, v.version, v.run_id) for v in registry.versions_of_run("run-b")] == [(MODEL, "2", "run-b")]
    assert registry.list_versions("main.signalbox.nothing") == []


def test_tags_and_aliases_round_trip(registry: MlflowRegistry, uc: DatabricksRest) -> None:
    uc.add_version(MODEL)
    uc.add_version(MODEL)
    registry.set_version_tags(MODEL, "2", {"stage": "staged", "commit": "abc"})
    registry.delete_version_tag(MODEL, "2", "commit")
    assert uc.models[MODEL].versions["2"].tags == {"stage": "staged"}
    assert registry.alias_version(MODEL, "challenger") is None
    registry.set_alias(MODEL, "challenger", "2")
    assert uc.models[MODEL].aliases == {"challenger": "2"}
    assert registry.alias_version(MODEL, "challenger") == "2"
    assert registry.get_version(MODEL, "2").aliases == ("challenger",)
    registry.delete_alias(MODEL, "challenger")
    registry.delete_alias(MODEL, "challenger")  # absent: no error
    assert registry.alias_version(MODEL, "challenger") is None
    with pytest.raises(UnknownVersion, match="version 9 is not registered"):
        registry.set_alias(MODEL, "challenger", "9")
    with pytest.raises(LookupError):
        registry.get_version(MODEL, "9")
    registry.set_model_tag(MODEL, "signalbox.latest_data", "abfss://landing/x.csv")
    assert registry.model_tags(MODEL) == {"signalbox.latest_data": "abfss://landing/x.csv"}


def test_promotion_and_deployment_run_on_unity_catalog(uc: DatabricksRest, tmp_path: Path) -> None:
    svc = services(catalogue=_catalogue(tmp_path))
    svc = svc.__class__(**{**svc.__dict__, "registry": MlflowRegistry("databricks", "databricks-uc")})

    v1 = uc.add_version(MODEL, run_id="r1")
    svc.evaluator.scores[v1] = {"accuracy": 0.8, "f1_macro": 0.8}
    assert lifecycle_step(svc, MODEL, v1) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    v2 = uc.add_version(MODEL, run_id="r2")
    svc.evaluator.scores[v2] = {"accuracy": 0.9, "f1_macro": 0.9}
    assert lifecycle_step(svc, MODEL, v2) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    assert _stages(uc) == {"1": "surpassed", "2": "production"}
    assert uc.models[MODEL].aliases == {"champion": "2"}

    # Manual approval (staging): a better winner replaces the staged one and takes the challenger alias.
    v3, v4 = uc.add_version(MODEL, run_id="r3"), uc.add_version(MODEL, run_id="r4")
    svc.evaluator.scores[v3] = {"accuracy": 0.92, "f1_macro": 0.92}
    svc.evaluator.scores[v4] = {"accuracy": 0.95, "f1_macro": 0.95}
    assert lifecycle_step(svc, MODEL, v3, "staging") == ["evaluate:won", "promote:pending-approval"]
    assert lifecycle_step(svc, MODEL, v4, "staging") == ["evaluate:won", "promote:pending-approval"]
    assert _stages(uc) == {"1": "surpassed", "2": "production", "3": "unstaged", "4": "staged"}
    assert uc.models[MODEL].aliases == {"champion": "2", "challenger": "4"}
    assert not [c for c in uc.api_calls() if c.path == SEARCH and "tags" in str(c.params.get("filter"))]


def _catalogue(tmp_path: Path) -> object:
    from shared.catalogue import load_catalogue

    return load_catalogue(catalogue_for(MODEL, tmp_path))


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "content_type", "error"),
    [
        (503, "Service Unavailable", "text/plain", TransientError),
        (502, "<html><body>502 Bad Gateway</body></html>", "text/html", TransientError),
        (500, '{"error_code": "INTERNAL_ERROR", "message": "boom"}', "application/json", TransientError),
        (429, '{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}', "application/json", TransientError),
        (
            401,
            '{"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}',
            "application/json",
            PermanentError,
        ),
        (403, '{"error_code": "PERMISSION_DENIED", "message": "no USE SCHEMA"}', "application/json", PermanentError),
        (404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}', "application/json", UnknownVersion),
    ],
)
def test_mlflow_failures_become_signalbox_errors(
    registry: MlflowRegistry, uc: DatabricksRest, status: int, body: str, content_type: str, error: type
) -> None:
    uc.add_version(MODEL, {"stage": "staged"})
    uc.fail(GET, status, body, content_type=content_type, times=20)
    with pytest.raises(error) as raised:
        registry.get_version(MODEL, "1")
    assert TOKEN not in str(raised.value)
    if error is UnknownVersion:
        assert isinstance(raised.value, LookupError) and "version 1 is not registered" in str(raised.value)
    else:
        assert "MLflow registry get_version" in str(raised.value)


def test_an_unanswered_request_is_transient_on_the_requests_path(
    registry: MlflowRegistry, uc: DatabricksRest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the Databricks SDK MLflow sends with requests, bounded by MLFLOW_HTTP_REQUEST_TIMEOUT.
    monkeypatch.setenv("MLFLOW_ENABLE_DB_SDK", "false")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    uc.add_version(MODEL)
    uc.fail(GET, 200, "{}", delay=3)
    started = time.monotonic()
    with pytest.raises(TransientError, match="get_version"):
        registry.get_version(MODEL, "1")
    assert time.monotonic() - started < 3


def test_bounded_http_defaults_are_set_unless_the_app_sets_them(
    uc: DatabricksRest, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_mlflow_http_env(monkeypatch)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")  # an app setting wins
    registry = MlflowRegistry("databricks", "databricks-uc")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert {n: os.environ[n] for n in HTTP_DEFAULTS if n != "MLFLOW_HTTP_REQUEST_TIMEOUT"} == {
        n: v for n, v in HTTP_DEFAULTS.items() if n != "MLFLOW_HTTP_REQUEST_TIMEOUT"
    }
    # A 5xx is retried within the bound (1 + MLFLOW_HTTP_REQUEST_MAX_RETRIES attempts, not MLflow's 8)
    # and then handed to Signalbox's own scheduled retry, well inside Event Grid's 30 s.
    uc.add_version(MODEL)
    uc.fail(GET, 503, "Service Unavailable", content_type="text/plain", times=50)
    started = time.monotonic()
    with pytest.raises(TransientError):
        registry.get_version(MODEL, "1")
    assert uc.count(GET) == 1 + int(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    assert time.monotonic() - started < 15


# -- evaluation: the model files come through UC's temporary credentials ------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("uc-model"))


def test_evaluator_downloads_a_uc_version_through_temporary_credentials(
    uc: DatabricksRest, model_dir: Path, tmp_path: Path
) -> None:
    version = uc.add_version(MODEL, files=model_dir)
    evaluator = MlflowEvaluator("databricks", "databricks-uc")

    scores = evaluator.score(MODEL, version, str(tiny_dataset(tmp_path)), ["accuracy"])

    assert scores == {"accuracy": 1.0}
    (credentials,) = [c for c in uc.api_calls() if c.path.endswith("/generate-temporary-credentials")]
    assert credentials.params == {"name": MODEL, "version": version, "operation": "MODEL_VERSION_OPERATION_READ"}
    # Default storage: MLflow reads the files through the Files API's presigned URLs, served here.
    assert uc.count("/api/2.0/fs/create-download-url") >= 2  # MLmodel, model.pkl, ...
    presigned = [c for c in uc.calls if c.path.startswith("/presigned/")]
    assert presigned and all(c.authorization is None for c in presigned)  # the token never goes to storage
    assert uc.count(f"{UC}/model-versions/get-download-uri") == 0  # the raw storage path is not read


def test_evaluator_hands_a_customer_storage_path_the_sas_of_the_temporary_credentials(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    """External storage on Azure: MLflow builds its ADLS repository with the SAS UC handed out.

    The download from ``abfss://…dfs.core.windows.net`` is where this stops: the repository's read
    is answered from the local model folder (no Azure storage on this machine).
    """
    import shutil

    from mlflow.store.artifact.azure_data_lake_artifact_repo import AzureDataLakeArtifactRepository

    seen: list[tuple[str, str]] = []

    def local_read(repo: AzureDataLakeArtifactRepository, artifact_path: str, dst_path: str | None = None) -> str:
        seen.append((repo.artifact_uri, repo.credential.signature))
        assert dst_path is not None
        return shutil.copytree(model_dir, Path(dst_path) / "model")

    monkeypatch.setattr(AzureDataLakeArtifactRepository, "download_artifacts", local_read)
    server = DatabricksRest(TOKEN, unity_catalog=True, storage_mode="CUSTOMER_HOSTED")
    with server.running():
        databricks_env(monkeypatch, server)
        version = server.add_version(MODEL, files=model_dir)
        scores = MlflowEvaluator("databricks", "databricks-uc").score(
            MODEL, version, str(tiny_dataset(tmp_path)), ["accuracy"]
        )
    assert scores == {"accuracy": 1.0}
    assert seen == [(server.models[MODEL].versions[version].storage_location, "sv=2024-05-04&sr=d&sp=rl&sig=local")]
    assert server.count(f"{UC}/model-versions/generate-temporary-credentials") == 1


def test_evaluator_download_failures_become_signalbox_errors(
    uc: DatabricksRest, model_dir: Path, tmp_path: Path
) -> None:
    version = uc.add_version(MODEL, files=model_dir)
    uc.fail(
        f"{UC}/model-versions/generate-temporary-credentials",
        403,
        '{"error_code": "PERMISSION_DENIED", "message": "no EXECUTE on the model"}',
    )
    with pytest.raises(PermanentError, match="no EXECUTE"):
        MlflowEvaluator("databricks", "databricks-uc").score(MODEL, version, str(tiny_dataset(tmp_path)), ["accuracy"])


def test_uc_search_results_are_read_one_by_one_even_under_an_unrecognised_uri(
    registry: MlflowRegistry, uc: DatabricksRest
) -> None:
    from shared.adapters.mlflow.client import Capabilities

    uc.add_version(MODEL, {"stage": "production"})
    uc.add_version(MODEL, {"stage": "staged"})
    registry.capabilities = Capabilities()  # as if the URI had not said Unity Catalog
    assert [(v.version, v.tags) for v in registry.list_versions(MODEL)] == [
        ("1", {"stage": "production"}),
        ("2", {"stage": "staged"}),
    ]
    # The tag-filtered search UC refuses falls back to the listing, read one by one.
    assert [v.version for v in registry.versions_with_tag(MODEL, "stage", "staged")] == ["2"]
