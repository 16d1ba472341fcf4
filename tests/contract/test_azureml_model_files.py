"""Evaluation on the Azure ML registry: a version's files through azure-ai-ml's ``models.download``, unmodified.

The path is the one Azure takes: ``Model Versions - Get`` (the asset's ``modelUri`` into the workspace
artifact store), ``Datastores - Get`` and ``listSecrets`` (answered by ``FakeAzureML`` with the shapes of
the REST API reference examples, 2024-04-01), then the blobs from **Azurite** (Microsoft's storage
emulator) over HTTPS at the storage account's real host name, ``devstoreaccount1.blob.core.windows.net``:
that name resolves to Azurite in this process only, and Azurite reads the account from the host name as
Azure does. The model files are a scikit-learn model saved by MLflow, laid out as a run leaves them
(``ExperimentRun/dcid.RUN/model``); the evaluator loads and scores what came down.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.adapters import Wiring
from shared.adapters.azureml import make_evaluator
from shared.adapters.azureml.model_files import AzureMLModelFiles
from shared.adapters.mlflow.evaluator import MlflowEvaluator
from shared.errors import PermanentError, TransientError
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.contract.test_azureml import (  # no_secrets_in_logs: the token never logged, as there
    FAST,
    RG,
    SUB,
    TOKEN,
    WS,
    WS_PATH,
    FakeAzureML,
    FakeCredential,
    fake_azureml,
    no_secrets_in_logs,  # noqa: F401
)
from tests.contract.test_blob_landing import jwt
from tests.tls import self_signed_certificate

STORAGE_HOST = f"{ACCOUNT}.blob.core.windows.net"
STORE = "workspaceartifactstore"
CONTAINER = "azureml"  # the artifact store's container in a workspace's storage account
STORAGE_SCOPE = "https://storage.azure.com/.default"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One certificate for the fake's 127.0.0.1 and the storage account's host name."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), hosts=(STORAGE_HOST,))


@pytest.fixture(scope="module")
def azurite(certificate: tuple[Path, Path]) -> Iterator[Azurite]:
    server = Azurite(*certificate)
    yield server
    server.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow scikit-learn model, saved as a run logs it."""
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=300).fit(features, target)
    folder = tmp_path_factory.mktemp("mlflow-model") / "model"
    mlflow.sklearn.save_model(model, folder, serialization_format="pickle")
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    path = tmp_path / "eval.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def fake(certificate: tuple[Path, Path], azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureML]:
    """The fake ARM, and the storage account's host name (port 443) reaching Azurite, in this process only."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == STORAGE_HOST:
            return real("127.0.0.1", azurite.port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with fake_azureml(certificate, monkeypatch) as server:
        monkeypatch.setenv("NO_PROXY", f"127.0.0.1,{STORAGE_HOST}")
        yield server


def upload(azurite: Azurite, cert: Path, folder: Path, prefix: str) -> None:
    """The folder's files into the artifact store's container under ``prefix``, with the account key."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient(azurite.url, credential=ACCOUNT_KEY, connection_verify=str(cert))
    container = service.get_container_client(CONTAINER)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    for path in folder.rglob("*"):
        if path.is_file():
            container.upload_blob(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def registered(fake: FakeAzureML, azurite: Azurite, cert: Path, folder: Path, name: str = "iris") -> str:
    """A model version whose files a run left in the artifact store; returns the version."""
    run = f"signalbox_run_{uuid.uuid4().hex[:10]}"
    upload(azurite, cert, folder, f"ExperimentRun/dcid.{run}/model")
    version = str(len([key for key in fake.models if key[0] == name]) + 1)
    uri = f"azureml://subscriptions/{SUB}/resourceGroups/{RG}/workspaces/{WS}/datastores/{STORE}/paths/ExperimentRun/dcid.{run}/model"
    fake.add_model_version(name, version, uri)
    return version


class WorkspaceIdentity(FakeCredential):
    """The app's identity: an ARM token for Azure ML, a storage token (``aud`` storage) for blobs."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        token = jwt() if STORAGE_SCOPE in scopes else self.token
        return AccessToken(token, int(time.time()) + 3600)


def files(credential: Any | None = None) -> AzureMLModelFiles:
    return AzureMLModelFiles(
        subscription_id=SUB, resource_group=RG, workspace=WS, credential=credential or FakeCredential()
    )


def evaluator(model_files: AzureMLModelFiles, tmp_path: Path) -> MlflowEvaluator:
    # The tracking URI is never contacted: model files come from the workspace.
    return MlflowEvaluator(f"sqlite:///{tmp_path / 'mlflow.db'}", model_files=model_files)


def local_scores(model_dir: Path, dataset: Path, metrics: list[str]) -> dict[str, float]:
    import mlflow.pyfunc
    import pandas as pd

    from shared.adapters.mlflow.evaluator import METRICS, TARGET

    frame = pd.read_csv(dataset)
    predicted = mlflow.pyfunc.load_model(str(model_dir)).predict(frame.drop(columns=[TARGET]))
    return {name: METRICS[name](frame[TARGET].to_numpy(), predicted) for name in metrics}


METRICS = ["accuracy", "f1_macro"]


def test_a_version_is_scored_from_its_datastore_files_with_the_account_key(
    fake: FakeAzureML,
    azurite: Azurite,
    certificate: tuple[Path, Path],
    model_dir: Path,
    dataset: Path,
    tmp_path: Path,
) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, ACCOUNT_KEY)
    version = registered(fake, azurite, certificate[0], model_dir)

    scores = evaluator(files(), tmp_path).score("iris", version, str(dataset), METRICS)

    assert scores == pytest.approx(local_scores(model_dir, dataset, METRICS))
    assert scores["accuracy"] > 0.9
    asked = [(c.method, c.path.removeprefix(WS_PATH)) for c in fake.calls if c.path.startswith(WS_PATH + "/")]
    assert asked == [
        ("GET", f"/models/iris/versions/{version}"),
        ("GET", f"/datastores/{STORE}"),
        ("POST", f"/datastores/{STORE}/listSecrets"),
    ]


def test_an_identity_based_datastore_is_read_with_the_apps_token_and_no_secret(
    fake: FakeAzureML, azurite: Azurite, certificate: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, key=None)
    version = registered(fake, azurite, certificate[0], model_dir)
    identity = WorkspaceIdentity()

    folder = files(identity).fetch("iris", version, tmp_path)

    assert (folder / "MLmodel").read_text() == (model_dir / "MLmodel").read_text()
    assert (STORAGE_SCOPE,) in identity.scopes
    assert not fake.requests("POST", "listSecrets")


def test_storage_refusing_the_apps_identity_is_permanent_and_names_the_role(
    fake: FakeAzureML, azurite: Azurite, certificate: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, key=None)
    version = registered(fake, azurite, certificate[0], model_dir)
    # An ARM token offered to storage: the audience is wrong, and Azurite answers 403 as Azure does.
    with pytest.raises(PermanentError, match=r"refused the read \(403.*Storage Blob Data Reader") as caught:
        files(FakeCredential()).fetch("iris", version, tmp_path)
    assert TOKEN not in str(caught.value)


def test_a_version_not_yet_in_the_workspace_registry_is_transient(fake: FakeAzureML, tmp_path: Path) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, ACCOUNT_KEY)
    with pytest.raises(TransientError, match="not in the workspace's model registry yet"):
        files().fetch("iris", "41", tmp_path)


def test_files_without_an_mlmodel_are_permanent(
    fake: FakeAzureML, azurite: Azurite, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, ACCOUNT_KEY)
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "model.pkl").write_bytes(b"not an MLflow model")
    version = registered(fake, azurite, certificate[0], custom, name="custom")
    with pytest.raises(PermanentError, match="no MLmodel file"):
        files().fetch("custom", version, tmp_path / "into")


def test_a_model_registered_from_a_job_output_uri_is_permanent_and_says_so(fake: FakeAzureML, tmp_path: Path) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, ACCOUNT_KEY)
    fake.add_model_version("from-job", "1", "azureml://jobs/signalbox_job_1/outputs/artifacts/paths/model/")
    with pytest.raises(PermanentError, match=r"not in a datastore of the workspace.*azureml://jobs/"):
        files().fetch("from-job", "1", tmp_path)
    # azure-ai-ml reads a datastore name out of the job URI ("artifacts") and asks for it.
    assert [c.path.rsplit("/", 1)[-1] for c in fake.requests("GET", "/datastores/")] == ["artifacts"]


def test_listing_the_datastore_secret_forbidden_is_permanent_and_names_the_role(
    fake: FakeAzureML, azurite: Azurite, certificate: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    fake.add_blob_datastore(STORE, ACCOUNT, CONTAINER, ACCOUNT_KEY)
    version = registered(fake, azurite, certificate[0], model_dir)
    fake.fail("POST", "listSecrets", 403, "AuthorizationFailed", "does not have authorization to perform action")
    with pytest.raises(PermanentError, match=r"forbidden.*AzureML Data Scientist") as caught:
        files().fetch("iris", version, tmp_path)
    assert ACCOUNT_KEY not in str(caught.value)


def test_azure_ml_overloaded_is_transient(fake: FakeAzureML, tmp_path: Path) -> None:
    fake.fail("GET", "/models/", 503, "ServiceUnavailable", "try again", headers=FAST)
    with pytest.raises(TransientError, match="503"):
        files().fetch("iris", "1", tmp_path)


def test_the_evaluator_on_the_azure_ml_registry_takes_files_from_that_workspace(tmp_path: Path) -> None:
    from shared.settings import Settings

    uri = f"https://westeurope.api.azureml.ms/mlflow/v2.0{WS_PATH}"
    wiring = Wiring(Settings.model_validate({"SIGNALBOX_STATE_DIR": str(tmp_path)}), uri, uri, catalogue=None)
    chosen = make_evaluator(wiring)
    model_files = chosen._model_files  # type: ignore[attr-defined]
    assert isinstance(model_files, AzureMLModelFiles)
    assert (model_files.subscription_id, model_files.resource_group, model_files.workspace) == (SUB, RG, WS)
    elsewhere = make_evaluator(Wiring(wiring.settings, "https://mlflow.example.test", None, catalogue=None))
    assert elsewhere._model_files is None  # type: ignore[attr-defined]
