"""The Azure ML smoke request, as azure-ai-ml sends it, scored by Microsoft's own inference server.

What is real here and what is ours:

- real: ``AzureMLServing.invoke`` and azure-ai-ml's ``online_endpoints.invoke`` (listKeys, the scoring
  POST, its response handling), against the local fake of Azure ML from ``test_azureml.py``;
- real: ``azureml-inference-server-http`` (the server Azure ML's MLflow images run, started through its
  own ``azmlinfsrv`` entry point, bound to 127.0.0.1 instead of 0.0.0.0), mlflow-skinny and
  scikit-learn loading an MLflow model saved here. The server pins pydantic~=2.12 and
  opentelemetry-sdk==1.33, which conflict with Signalbox's pins (pydantic 2.14, azure-monitor-
  opentelemetry's opentelemetry-sdk~=1.45), so it lives in its own virtual environment
  (``.signalbox/azureml-server-venv``, built on first use), as it does in its own container in Azure;
- ours: the scoring script. Azure ML's MLflow images ship their own (``mlflow_score_script.py``), which
  is not in the package; ``SCORE_SCRIPT`` below follows the documented contract of no-code MLflow
  deployments (learn.microsoft.com, "Guidelines for deploying MLflow models", Input structure): the body
  must hold ``input_data``; a dict of ``columns``/``index``/``data`` is a DataFrame in split orientation,
  a list a tensor, another dict named tensors; the model's signature is enforced;
- ours: the managed endpoint's front end (in the fake), which relays the body to the container and,
  as documented for managed online endpoints, answers 424 with ``ms-azureml-model-error-statuscode``
  when the container answers an error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.adapters.azureml import serving as serving_module
from shared.adapters.azureml.serving import AzureMLServing
from shared.adapters.local.net import free_port
from shared.errors import DeploymentFailed
from shared.handlers.deployment import smoke_frame
from shared.ports import Deployment, ScoringFrame
from tests.contract.test_azureml import (
    ENDPOINT,
    ENDPOINT_KEY,
    MODEL,
    RG,
    SUB,
    WS,
    Answer,
    Call,
    FakeAzureML,
    FakeCredential,
    _error,
    certificate,  # noqa: F401 - the module-scoped certificate fixture
)

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "signalbox" / "examples" / "iris" / "evaluation.csv"
SERVER_VENV = REPO / ".signalbox" / "azureml-server-venv"
SERVER_PACKAGES = [
    "azureml-inference-server-http==1.5.1",
    # The model is loaded by the versions that saved it, as Azure ML installs the model's own requirements.
    f"mlflow-skinny=={importlib.metadata.version('mlflow')}",
    f"scikit-learn=={importlib.metadata.version('scikit-learn')}",
    f"skops=={importlib.metadata.version('skops')}",  # MLflow 3 saves scikit-learn models in skops format
    "pandas",
]
MODEL_FOLDER = "model"  # the MLflow model's folder under AZUREML_MODEL_DIR, as Azure ML lays it out

SCORE_SCRIPT = '''\
"""No-code MLflow scoring, following Azure ML's documented input_data contract (Signalbox's test script)."""

import json
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd

model = None


def init():
    global model
    # Azure ML mounts the registered model under AZUREML_MODEL_DIR; MLFLOW_MODEL_FOLDER names its folder.
    model = mlflow.pyfunc.load_model(os.path.join(os.environ["AZUREML_MODEL_DIR"], os.environ["MLFLOW_MODEL_FOLDER"]))


def run(raw_data):
    body = json.loads(raw_data)
    if not isinstance(body, dict) or "input_data" not in body:
        raise ValueError("the request must hold its input under the top-level key 'input_data'")
    data = body["input_data"]
    if isinstance(data, dict) and {"columns", "index", "data"} <= data.keys():
        frame = pd.DataFrame(data["data"], columns=data["columns"], index=data["index"])
    elif isinstance(data, list):
        frame = np.asarray(data)
    elif isinstance(data, dict):
        frame = {name: np.asarray(value) for name, value in data.items()}
    else:
        raise ValueError("input_data must be a split DataFrame, a tensor or named tensors")
    predictions = model.predict(frame, params=body.get("params"))  # enforces the model's signature
    return np.asarray(predictions).tolist()
'''

server_logs: dict[str, Path] = {}  # each server's console log, by its base URL

LAUNCHER = """\
import sys

from azureml_inference_server_http import amlserver

# azmlinfsrv binds every interface; servers in these tests listen on the loopback interface only.
amlserver.DEFAULT_HOST = "127.0.0.1"
sys.argv = ["azmlinfsrv", *sys.argv[1:]]
amlserver.run()
"""


@pytest.fixture(scope="module")
def server_python() -> Path:
    """The inference server's Python, in its own virtual environment (built here on first use)."""
    override = os.environ.get("SIGNALBOX_AZUREML_SERVER_PYTHON")
    python = Path(override) if override else SERVER_VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(SERVER_VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *SERVER_PACKAGES], check=True, capture_output=True, timeout=280
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not install the Azure ML inference server ({type(exc).__name__}); see SERVER_PACKAGES")
    return python


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An iris classifier saved as MLflow models, with and without a signature (AZUREML_MODEL_DIR of each)."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    table = pd.read_csv(DATASET)
    features, target = table.drop(columns=["target"]), table["target"]
    classifier = LogisticRegression(max_iter=500).fit(features, target)
    made = {}
    for kind, signature in (("signature", infer_signature(features, classifier.predict(features))), ("bare", None)):
        # Azure ML mounts a registered model at azureml-models/NAME/VERSION (the server reads the id from it).
        model_dir = tmp_path_factory.mktemp(f"azureml-{kind}") / "azureml-models" / MODEL / "2"
        mlflow.sklearn.save_model(classifier, model_dir / MODEL_FOLDER, signature=signature)
        made[kind] = model_dir
    return made


@contextlib.contextmanager
def _inference_server(python: Path, model_dir: Path, folder: Path) -> Iterator[str]:
    script = folder / "score.py"
    script.write_text(SCORE_SCRIPT, encoding="utf-8")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "MLFLOW_MODEL_FOLDER": MODEL_FOLDER,
        "AML_APP_ROOT": str(folder),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    argv = ["--entry_script", str(script), "--model_dir", str(model_dir), "--port", str(port)]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [str(python), "-c", LAUNCHER, *argv],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    server_logs[base] = folder / "server.log"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the inference server exited: {(folder / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the inference server did not start: {(folder / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # gunicorn and its worker, both started here
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def servers(
    server_python: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """One inference server per model, on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        yield {
            kind: stack.enter_context(_inference_server(server_python, model_dir, tmp_path_factory.mktemp(kind)))
            for kind, model_dir in models.items()
        }


class RelayingAzureML(FakeAzureML):
    """The fake Azure ML whose scoring URI relays to an inference server, as a managed endpoint's front end does."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(cert, key)
        self.upstream: dict[tuple[str, str], str] = {}
        self.relayed: list[tuple[Any, int, str]] = []

    def _score(self, call: Call, endpoint: str) -> Answer:
        if call.headers.get("authorization") != f"Bearer {ENDPOINT_KEY}":
            return _error(401, "Unauthorized", "Invalid key")
        slot = call.headers.get("azureml-model-deployment", "")
        base = self.upstream.get((endpoint, slot))
        if base is None:
            return _error(404, "NotFound", f"No ready deployment {slot!r} on {endpoint}")
        answer = requests.post(f"{base}/score", json=call.body, timeout=60)
        self.relayed.append((call.body, answer.status_code, answer.text))
        if answer.status_code == 200:
            return 200, answer.json(), {}
        # Documented: a non-200 from the model container becomes a 424, its status in a header.
        headers = {
            "ms-azureml-model-error-statuscode": str(answer.status_code),
            "ms-azureml-model-error-reason": "model_error",
        }
        return 424, {"error": {"code": "ModelError", "message": answer.text[:500]}}, headers


@pytest.fixture
def relay(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[RelayingAzureML]:  # noqa: F811
    server = RelayingAzureML(*certificate)
    monkeypatch.setenv("ARM_CLOUD_METADATA_URL", f"{server.base}/metadata/endpoints?api-version=2019-05-01")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "unset")
    monkeypatch.delenv("AZUREML_CURRENT_CLOUD")
    server.add_endpoint(ENDPOINT, {"blue": 100})
    server.add_deployment(ENDPOINT, "blue", MODEL, "1")
    server.add_deployment(ENDPOINT, "green", MODEL, "2")
    try:
        yield server
    finally:
        server.close()
    assert server.unexpected == [], f"the SDK sent requests the fake does not know: {server.unexpected}"


def _adapter() -> AzureMLServing:
    return AzureMLServing(subscription_id=SUB, resource_group=RG, workspace=WS, credential=FakeCredential())


def _expected(model_dir: Path, frame: ScoringFrame) -> list[str]:
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(model_dir / MODEL_FOLDER))
    return [str(p) for p in model.predict(pd.DataFrame(list(frame.data), columns=list(frame.columns)))]


CANDIDATE = Deployment(ENDPOINT, MODEL, "2", "green", "unused")


@pytest.mark.parametrize("kind", ["signature", "bare"])
def test_the_smoke_request_scores_on_the_inference_server(
    relay: RelayingAzureML, servers: dict[str, str], models: dict[str, Path], kind: str
) -> None:
    relay.upstream[(ENDPOINT, "green")] = servers[kind]
    frame = smoke_frame(DATASET)  # what the deploy handler sends: five rows of the evaluation data

    predictions = _adapter().invoke(CANDIDATE, frame)

    assert predictions == _expected(models[kind], frame)
    assert set(predictions) <= {"setosa", "versicolor", "virginica"} and len(predictions) == len(frame.data)
    [(body, status, _)] = relay.relayed
    assert status == 200
    assert body == {
        "input_data": {"columns": list(frame.columns), "index": [0, 1, 2, 3, 4], "data": [list(r) for r in frame.data]}
    }


def test_a_request_against_the_signature_fails_the_deployment(relay: RelayingAzureML, servers: dict[str, str]) -> None:
    relay.upstream[(ENDPOINT, "green")] = servers["signature"]
    frame = ScoringFrame(("sepal_length", "sepal_width"), ((5.1, 3.5),))  # two of four columns

    with pytest.raises(DeploymentFailed, match="424") as raised:
        _adapter().invoke(CANDIDATE, frame)

    assert "the model answered 500" in str(raised.value)


def test_the_mlflow_server_body_is_refused(
    relay: RelayingAzureML, servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.upstream[(ENDPOINT, "green")] = servers["signature"]
    frame = smoke_frame(DATASET)
    # The body of `mlflow models serve` (and of this adapter before it sent input_data).
    monkeypatch.setattr(serving_module, "scoring_body", lambda f: f.dataframe_split())

    with pytest.raises(DeploymentFailed) as raised:
        _adapter().invoke(CANDIDATE, frame)

    [(body, status, text)] = relay.relayed
    assert "dataframe_split" in body and status == 500
    assert "error occurred in scoring script" in text  # the server hides the reason from the caller...
    log = server_logs[servers["signature"]].read_text()
    assert "the request must hold its input under the top-level key 'input_data'" in log  # ...and logs it
    assert "the model answered 500" in str(raised.value)


def test_the_inference_server_itself_answers_the_documented_shapes(servers: dict[str, str]) -> None:
    frame = smoke_frame(DATASET, rows=2)
    split = {"columns": list(frame.columns), "index": [0, 1], "data": [list(r) for r in frame.data]}

    good = requests.post(f"{servers['signature']}/score", json={"input_data": split}, timeout=60)
    tensor = requests.post(f"{servers['bare']}/score", json={"input_data": split["data"]}, timeout=60)
    refused = requests.post(f"{servers['signature']}/score", json={"inputs": split["data"]}, timeout=60)

    assert good.status_code == 200 and len(good.json()) == 2
    assert tensor.status_code == 200 and tensor.json() == good.json()
    assert refused.status_code == 500
    assert json.loads(refused.text)["message"]
