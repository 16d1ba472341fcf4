"""AzureMLCompute and AzureMLServing drive the real azure-ai-ml ``MLClient`` against a local fake of Azure ML.

``FakeAzureML`` serves, over HTTPS on 127.0.0.1, the REST shapes the SDK reads and writes: the ARM
cloud metadata, the workspace and its discovery document, run history, command jobs (PUT/GET and the
cancel LRO), online endpoints and deployments (PUT/GET/list/DELETE, listKeys, getLogs, the
Azure-AsyncOperation / Location operations) and the endpoint's scoring URI. It records every request.

How the unmodified SDK reaches it:

- the cloud: ``ARM_CLOUD_METADATA_URL`` names the fake's metadata document, whose one cloud has the
  fake as ``resourceManager``; the SDK picks that cloud (as the az CLI does for a private cloud);
- TLS: azure-core refuses bearer tokens over plain http, so the fake serves a self-signed certificate
  made here, trusted through ``REQUESTS_CA_BUNDLE``;
- auth: a fake ``TokenCredential``; the fake answers 401 to any other bearer token.

Job specs name a registered code asset by its ARM id (``code: azureml:/subscriptions/…/codes/iris-src/versions/1``),
so the SDK uploads nothing; a local ``code`` folder would go to the workspace's blob datastore, which the fake
does not serve.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.adapters.azureml.compute import MAX_RESUBMITS, AzureMLCompute, workspace_tracking_uri
from shared.adapters.azureml.serving import AzureMLServing
from shared.errors import DeploymentFailed, PermanentError, TransientError
from shared.ports import Deployment, JobRequest, RunStatus, ScoringFrame
from tests.tls import self_signed_certificate

REPO = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "rg-signalbox"
WS = "mlw-signalbox"
WS_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
LOCATION = "westeurope"
TENANT = "72f988bf-0000-4000-8000-0000000000ff"


def _jwt(claims: dict[str, object], signature: str) -> str:
    def segment(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{segment({'alg': 'RS256', 'typ': 'JWT'})}.{segment(claims)}.{signature}"


# Shaped like an Entra ID access token: the SDK reads its tenant ("tid") for Studio links.
TOKEN = _jwt({"tid": TENANT, "aud": "https://management.azure.com/"}, "c2lnbmFsYm94LWZha2Utc2lnbmF0dXJl")
ENDPOINT_KEY = "endpoint-key-8d2a7f"  # likewise
SECRETS = (TOKEN, ENDPOINT_KEY)
MODEL = "iris"
ENDPOINT = "iris-live"
DATA_URI = "https://stsignalbox.blob.core.windows.net/landing/iris/2026-11-23.csv"
COMPUTES = {"cpu-cluster"}
FAST = {"retry-after-ms": "20"}  # keeps the SDK's LRO polling and retries quick
SLOW = {"retry-after-ms": "500"}  # the deployment pollers the adapter leaves running

SPEC = f"""\
$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
code: azureml:{WS_PATH}/codes/iris-src/versions/1
command: >-
  python train.py --data ${{{{inputs.data}}}} --max-iter ${{{{inputs.max_iter}}}}
environment: azureml:sklearn-env:3
compute: azureml:cpu-cluster
inputs:
  data:
    type: uri_file
    path: azureml://datastores/landing/paths/placeholder.csv
  max_iter: 200
tags:
  team: ml-platform
"""


# -- the fake ---------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """A canned error answer for matching requests, ``times`` often (``None``: always)."""

    method: str
    pattern: str
    status: int
    code: str
    message: str
    times: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


Answer = tuple[int, Any, dict[str, str]]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return status, {"error": {"code": code, "message": message}}, headers or {}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class FakeAzureML:
    """Azure ML's management, run-history and scoring APIs as the SDK sees them, in memory."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.calls: list[Call] = []
        self.unexpected: list[str] = []
        self.faults: list[Fault] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.run_errors: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.scores: dict[tuple[str, str], tuple[int, Any]] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.datastores: dict[str, dict[str, Any]] = {}
        self.datastore_keys: dict[str, str] = {}
        self.score_headers: dict[tuple[str, str], dict[str, str]] = {}
        self.operations: dict[str, Callable[[], Answer]] = {}
        self.hold_endpoint_updates = False
        self.hold_cancellations = False
        self.failing_endpoint_updates = ""
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
                parts = urlsplit(self.path)
                call = Call(
                    self.command,
                    parts.path,
                    {k: v[-1] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with fake.lock:
                    fake.calls.append(call)
                    answer = fake.answer(call)
                if answer is None:  # a dropped connection
                    self.close_connection = True
                    self.connection.close()
                    return
                status, payload, headers = answer
                # A str payload is sent as it is, as text/plain: what gateways answer in front of a model.
                text = isinstance(payload, str)
                data = b"" if payload is None else (payload if text else json.dumps(payload)).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test helpers ----------------------------------------------------------------------

    def fail(self, method: str, pattern: str, status: int, code: str = "Error", message: str = "", **kw: Any) -> None:
        """Answer matching requests with an error (see ``Fault``)."""
        self.faults.append(Fault(method, pattern, status, code, message or code, **kw))

    def requests(self, method: str | None = None, pattern: str = "") -> list[Call]:
        """The recorded requests with this method whose path matches the pattern."""
        with self.lock:
            return [c for c in self.calls if (method is None or c.method == method) and re.search(pattern, c.path)]

    def set_job_status(self, name: str, status: str, error: str | None = None, code: str = "UserError") -> None:
        with self.lock:
            self.jobs[name]["properties"]["status"] = status
            if error:
                self.run_errors[name] = {"code": code, "message": error}

    def add_endpoint(self, name: str, traffic: dict[str, int]) -> None:
        with self.lock:
            self.endpoints[name] = self._endpoint_resource(name, {"authMode": "Key", "traffic": traffic})
            self.endpoints[name]["properties"]["provisioningState"] = "Succeeded"

    def add_deployment(self, endpoint: str, slot: str, model: str, version: str, state: str = "Succeeded") -> None:
        with self.lock:
            body = {
                "location": LOCATION,
                "sku": {"name": "Default", "capacity": 1},
                "properties": {
                    "endpointComputeType": "Managed",
                    "model": f"{WS_PATH}/models/{model}/versions/{version}",
                    "instanceType": "Standard_DS3_v2",
                },
            }
            self.deployments[(endpoint, slot)] = self._deployment_resource(endpoint, slot, body, state)

    def add_model_version(self, name: str, version: str, model_uri: str, model_type: str = "mlflow_model") -> None:
        """A model asset version as ``Model Versions - Get`` (2024-04-01) returns it."""
        with self.lock:
            self.models[(name, version)] = {
                "id": f"{WS_PATH}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                "properties": {
                    "description": None,
                    "tags": {},
                    "properties": {},
                    "isAnonymous": False,
                    "isArchived": False,
                    "flavors": {"python_function": {"data": {"loader_module": "mlflow.sklearn"}}},
                    "modelType": model_type,
                    "modelUri": model_uri,
                    "provisioningState": "Succeeded",
                },
                "systemData": {"createdAt": _now(), "createdBy": "signalbox", "createdByType": "User"},
            }

    def add_blob_datastore(self, name: str, account: str, container: str, key: str | None) -> None:
        """An Azure Blob datastore as ``Datastores - Get`` returns it: with an account key, or identity-based."""
        credentials: dict[str, Any] = (
            {"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey"}}
            if key
            else {"credentialsType": "None"}
        )
        with self.lock:
            self.datastores[name] = {
                "id": f"{WS_PATH}/datastores/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "properties": {
                    "description": None,
                    "tags": {},
                    "isDefault": False,
                    "properties": None,
                    "credentials": credentials,
                    "datastoreType": "AzureBlob",
                    "accountName": account,
                    "containerName": container,
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                },
                "systemData": {"createdAt": _now(), "createdBy": "signalbox", "createdByType": "User"},
            }
            if key:
                self.datastore_keys[name] = key

    def set_deployment_state(self, endpoint: str, slot: str, state: str) -> None:
        with self.lock:
            self.deployments[(endpoint, slot)]["properties"]["provisioningState"] = state

    def traffic(self, endpoint: str) -> dict[str, int]:
        with self.lock:
            return dict(self.endpoints[endpoint]["properties"]["traffic"])

    # -- routing -----------------------------------------------------------------------------

    def answer(self, call: Call) -> Answer | None:
        for fault in self.faults:
            if fault.method == call.method and re.search(fault.pattern, call.path) and fault.times != 0:
                if fault.times is not None:
                    fault.times -= 1
                if fault.drop:
                    return None
                return _error(fault.status, fault.code, fault.message, fault.headers)
        path = call.path
        if path == "/metadata/endpoints":
            return 200, self._clouds(), {}
        if path.startswith("/score/"):
            return self._score(call, path.removeprefix("/score/"))
        if path.startswith("/operations/"):
            operation = self.operations.get(path.removeprefix("/operations/"))
            return operation() if operation else _error(404, "NotFound", "no such operation")
        if path == "/discovery":  # public, as Azure's is
            return 200, self._discovery(), {}
        if call.headers.get("authorization") != f"Bearer {TOKEN}":
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if path == WS_PATH and call.method == "GET":
            return 200, self._workspace(), {}
        history = re.fullmatch(rf"/history/v1\.0{re.escape(WS_PATH)}/runs/([^/]+)", path)
        if history and call.method == "GET":
            return self._run(history[1])
        if not path.startswith(WS_PATH + "/"):
            return self._unexpected(call)
        rest = path.removeprefix(WS_PATH + "/")
        for pattern, handler in (
            (r"jobs/([^/]+)", self._job),
            (r"jobs/([^/]+)/cancel", self._cancel),
            (r"onlineEndpoints/([^/]+)", self._endpoint),
            (r"onlineEndpoints/([^/]+)/listKeys", self._keys),
            (r"onlineEndpoints/([^/]+)/deployments", self._list_deployments),
            (r"onlineEndpoints/([^/]+)/deployments/([^/]+)", self._deployment),
            (r"onlineEndpoints/([^/]+)/deployments/([^/]+)/getLogs", self._logs),
            (r"models/([^/]+)/versions/([^/]+)", self._model_version),
            (r"datastores/([^/]+)", self._datastore),
            (r"datastores/([^/]+)/listSecrets", self._datastore_secrets),
        ):
            match = re.fullmatch(pattern, rest)
            if match:
                return handler(call, *match.groups())
        return self._unexpected(call)

    def _unexpected(self, call: Call) -> Answer:
        self.unexpected.append(f"{call.method} {call.path}")
        return _error(404, "NotFound", f"the fake does not serve {call.method} {call.path}")

    def _operation(self, answer: Callable[[], Answer]) -> str:
        operation = uuid.uuid4().hex
        self.operations[operation] = answer
        return f"{self.base}/operations/{operation}"

    # -- workspace, cloud, discovery, run history -------------------------------------------------

    def _clouds(self) -> list[dict[str, Any]]:
        # The ARM "metadata/endpoints" document (api-version 2019-05-01) with one private cloud.
        return [
            {
                "name": f"SignalboxFake{self.port}",
                "portal": "https://portal.signalbox.test/",
                "resourceManager": f"{self.base}/",
                "authentication": {"loginEndpoint": f"{self.base}/login/", "audiences": [f"{self.base}/"]},
                "suffixes": {"storage": "core.windows.net"},
            }
        ]

    def _workspace(self) -> dict[str, Any]:
        return {
            "id": WS_PATH,
            "name": WS,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": LOCATION,
            "kind": "Default",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": str(uuid.uuid4())},
            "sku": {"name": "Basic", "tier": "Basic"},
            "properties": {
                "friendlyName": WS,
                "workspaceId": "6f9a8b5e-0000-4000-8000-00000000c0de",
                "discoveryUrl": f"{self.base}/discovery",
                "mlFlowTrackingUri": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WS_PATH}",
                "storageAccount": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/"
                "storageAccounts/stsignalbox",
                "provisioningState": "Succeeded",
                "publicNetworkAccess": "Enabled",
            },
        }

    def _discovery(self) -> dict[str, str]:
        keys = ("api", "catalog", "experimentation", "history", "instance", "modelmanagement", "pipelines")
        return {**{key: self.base for key in keys}, "studio": "https://ml.azure.com"}

    def _run(self, name: str) -> Answer:
        job = self.jobs.get(name)
        if job is None:
            return _error(404, "UserError", f"Run {name} was not found")
        run: dict[str, Any] = {"runId": name, "status": job["properties"]["status"]}
        if name in self.run_errors:
            run["error"] = {"error": self.run_errors[name]}
        return 200, run, {}

    # -- jobs --------------------------------------------------------------------------------

    def _job(self, call: Call, name: str) -> Answer:
        if call.method == "GET":
            if name not in self.jobs:
                return _error(404, "UserError", f"The specified resource {name} was not found")
            return 200, self.jobs[name], {}
        if call.method != "PUT":
            return self._unexpected(call)
        if name in self.jobs:
            return _error(409, "Conflict", f"A job named {name} already exists")
        properties = dict(call.body["properties"])
        compute = properties.get("computeId", "").rsplit("/", 1)[-1]
        if compute not in COMPUTES:
            return _error(404, "ResourceNotFound", f"Compute '{compute}' not found in workspace {WS}")
        properties["status"] = "NotStarted"
        properties["services"] = {
            "Studio": {"jobServiceType": "Studio", "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_PATH}"}
        }
        self.jobs[name] = {
            "id": f"{WS_PATH}/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "systemData": {"createdAt": _now(), "createdBy": "signalbox", "createdByType": "Application"},
            "properties": properties,
        }
        return 201, self.jobs[name], {}

    def _cancel(self, call: Call, name: str) -> Answer:
        if call.method != "POST":
            return self._unexpected(call)
        if name not in self.jobs:
            return _error(404, "UserError", f"The specified resource {name} was not found")
        self.jobs[name]["properties"]["status"] = "CancelRequested"

        def done() -> Answer:
            if self.hold_cancellations:
                return 202, None, FAST
            self.jobs[name]["properties"]["status"] = "Canceled"
            return 200, None, {}

        return 202, None, {"Location": self._operation(done), **FAST}

    # -- online endpoints ------------------------------------------------------------------------

    def _endpoint_resource(self, name: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{WS_PATH}/onlineEndpoints/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": LOCATION,
            "kind": "Managed",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": str(uuid.uuid4())},
            "tags": {},
            "properties": {
                "authMode": properties.get("authMode", "Key"),
                "description": properties.get("description"),
                "properties": properties.get("properties") or {},
                "traffic": dict(properties.get("traffic") or {}),
                "mirrorTraffic": dict(properties.get("mirrorTraffic") or {}),
                "scoringUri": f"{self.base}/score/{name}",
                "swaggerUri": f"{self.base}/swagger/{name}",
                "provisioningState": "Creating",
            },
        }

    def _endpoint(self, call: Call, name: str) -> Answer:
        if call.method == "GET":
            if name not in self.endpoints:
                return _error(404, "ResourceNotFound", f"Endpoint {name} not found in workspace {WS}")
            return 200, self.endpoints[name], {}
        if call.method != "PUT":
            return self._unexpected(call)
        properties = call.body["properties"]
        traffic = {k: int(v) for k, v in (properties.get("traffic") or {}).items()}
        unknown = [slot for slot in traffic if (name, slot) not in self.deployments]
        if unknown or (traffic and sum(traffic.values()) != 100):
            return _error(400, "BadArgument", f"Invalid traffic {traffic}: deployments must exist and sum to 100")
        existed = name in self.endpoints
        if existed:
            resource = self.endpoints[name]
            resource["properties"]["provisioningState"] = "Updating"
        else:
            resource = self.endpoints[name] = self._endpoint_resource(name, {**properties, "traffic": {}})

        def progress() -> Answer:
            if self.hold_endpoint_updates:
                return 200, {"status": "InProgress"}, FAST
            if self.failing_endpoint_updates:
                resource["properties"]["provisioningState"] = "Failed"
                error = {"code": "EndpointUpdateFailed", "message": self.failing_endpoint_updates}
                return 200, {"status": "Failed", "error": error}, {}
            resource["properties"]["traffic"] = traffic  # traffic moves when the update completes
            resource["properties"]["provisioningState"] = "Succeeded"
            return 200, {"status": "Succeeded"}, {}

        return (200 if existed else 201), resource, {"Azure-AsyncOperation": self._operation(progress), **FAST}

    def _keys(self, call: Call, name: str) -> Answer:
        if name not in self.endpoints:
            return _error(404, "ResourceNotFound", f"Endpoint {name} not found")
        return 200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": ENDPOINT_KEY[::-1]}, {}

    def _deployment_resource(self, endpoint: str, slot: str, body: dict[str, Any], state: str) -> dict[str, Any]:
        properties = {
            "scaleSettings": {"scaleType": "Default"},
            "requestSettings": {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1},
            "livenessProbe": {"initialDelay": "PT10M", "period": "PT10S", "timeout": "PT2S", "failureThreshold": 30},
            "readinessProbe": {"initialDelay": "PT10S", "period": "PT10S", "timeout": "PT2S", "failureThreshold": 30},
            "egressPublicNetworkAccess": "Enabled",
            "appInsightsEnabled": False,
            **body["properties"],
            "provisioningState": state,
        }
        return {
            "id": f"{WS_PATH}/onlineEndpoints/{endpoint}/deployments/{slot}",
            "name": slot,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "location": body.get("location", LOCATION),
            "kind": "Managed",
            "sku": body.get("sku") or {"name": "Default", "capacity": 1},
            "tags": body.get("tags") or {},
            "properties": properties,
        }

    def _list_deployments(self, call: Call, endpoint: str) -> Answer:
        if endpoint not in self.endpoints:
            return _error(404, "ResourceNotFound", f"Endpoint {endpoint} not found")
        return 200, {"value": [d for (e, _), d in self.deployments.items() if e == endpoint]}, {}

    def _deployment(self, call: Call, endpoint: str, slot: str) -> Answer:
        key = (endpoint, slot)
        if endpoint not in self.endpoints:
            return _error(404, "ResourceNotFound", f"Endpoint {endpoint} not found in workspace {WS}")
        if call.method == "GET":
            if key not in self.deployments:
                return _error(404, "ResourceNotFound", f"Deployment {slot} not found on endpoint {endpoint}")
            return 200, self.deployments[key], {}
        if call.method == "DELETE":
            if key not in self.deployments:
                return 204, None, {}
            if self.traffic(endpoint).get(slot, 0) > 0:
                return _error(400, "BadArgument", f"Deployment {slot} takes traffic; route it elsewhere first")
            del self.deployments[key]
            return 202, None, {"Location": self._operation(lambda: (200, None, {})), **FAST}
        if call.method != "PUT":
            return self._unexpected(call)
        if call.body["properties"].get("endpointComputeType") != "Managed" or not call.body["properties"].get("model"):
            return _error(400, "BadArgument", "A managed deployment needs a model")
        resource = self.deployments[key] = self._deployment_resource(endpoint, slot, call.body, "Creating")

        def progress() -> Answer:
            state = resource["properties"]["provisioningState"]
            if state in ("Creating", "Updating"):
                return 200, {"status": "InProgress"}, SLOW
            if state == "Succeeded":
                return 200, {"status": "Succeeded"}, {}
            return 200, {"status": state, "error": {"code": "DeploymentFailed", "message": "see the logs"}}, {}

        return 201, resource, {"Azure-AsyncOperation": self._operation(progress), **SLOW}

    # -- model assets and datastores ---------------------------------------------------------------

    def _model_version(self, call: Call, name: str, version: str) -> Answer:
        if call.method != "GET":
            return self._unexpected(call)
        body = self.models.get((name, version))
        if body is None:
            return _error(404, "UserError", f"Could not find asset with name: {name}, version: {version}")
        return 200, body, {}

    def _datastore(self, call: Call, name: str) -> Answer:
        if call.method != "GET":
            return self._unexpected(call)
        body = self.datastores.get(name)
        return (200, body, {}) if body else _error(404, "UserError", f"Datastore {name} not found")

    def _datastore_secrets(self, call: Call, name: str) -> Answer:
        if call.method != "POST":
            return self._unexpected(call)
        key = self.datastore_keys.get(name)
        if key is None:
            return _error(400, "UserError", f"Datastore {name} has no secrets")
        return 200, {"secretsType": "AccountKey", "key": key}, {}

    def _logs(self, call: Call, endpoint: str, slot: str) -> Answer:
        return 200, {"content": self.logs.get((endpoint, slot), "")}, {}

    def _score(self, call: Call, endpoint: str) -> Answer:
        if endpoint not in self.endpoints:
            return _error(404, "NotFound", "No such endpoint")
        if call.headers.get("authorization") != f"Bearer {ENDPOINT_KEY}":
            return _error(401, "Unauthorized", "Invalid key")
        traffic = self.traffic(endpoint)
        slot = call.headers.get("azureml-model-deployment") or max(traffic, key=lambda s: traffic[s], default="")
        deployment = self.deployments.get((endpoint, slot))
        if deployment is None or deployment["properties"]["provisioningState"] != "Succeeded":
            return _error(404, "NotFound", f"No ready deployment {slot!r} on {endpoint}")
        status, answer = self.scores.get((endpoint, slot), (200, {"predictions": [0], "served_by": slot}))
        headers = {**self.score_headers.get((endpoint, slot), {}), **(FAST if status >= 400 else {})}
        return status, answer, headers  # FAST: the SDK retries a 5xx


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def fake(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureML]:
    """The fake, with this process's Azure ML SDK pointed at it and trusting its certificate."""
    with fake_azureml(certificate, monkeypatch) as server:
        yield server


@contextlib.contextmanager
def fake_azureml(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzureML]:
    """A ``FakeAzureML`` the SDK in this process reaches as its cloud; checks it heard nothing unknown."""
    server = FakeAzureML(*certificate)
    monkeypatch.setenv("ARM_CLOUD_METADATA_URL", f"{server.base}/metadata/endpoints?api-version=2019-05-01")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    # The SDK records the chosen cloud in os.environ; set-then-delete makes monkeypatch remove it afterwards.
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "unset")
    monkeypatch.delenv("AZUREML_CURRENT_CLOUD")
    try:
        yield server
    finally:
        server.close()
    assert server.unexpected == [], f"the SDK sent requests the fake does not know: {server.unexpected}"


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Every test: the token and the endpoint key never reach a log record or the console."""
    caplog.set_level(logging.DEBUG)
    yield
    captured = capsys.readouterr()
    logged = [r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase)]
    for number, secret in enumerate(SECRETS):
        assert not any(secret in line for line in logged), f"secret #{number} was logged"
        assert secret not in captured.out + captured.err, f"secret #{number} was printed"


class FakeCredential:
    """A ``TokenCredential`` that hands out a fixed token."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def compute(**kwargs: Any) -> AzureMLCompute:
    return AzureMLCompute(
        subscription_id=SUB,
        resource_group=RG,
        workspace=WS,
        credential=kwargs.pop("credential", FakeCredential()),
        **kwargs,
    )


def serving(**kwargs: Any) -> AzureMLServing:
    return AzureMLServing(subscription_id=SUB, resource_group=RG, workspace=WS, credential=FakeCredential(), **kwargs)


def job_request(spec: Path, key: str | None = "message-1", **kwargs: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "model_name": MODEL,
        "purpose": "train",
        "job_reference": str(spec),
        "data_uri": DATA_URI,
        "parameters": {"max_iter": "300", "C": "0.5"},
        "tags": {"signalbox.correlation_id": "corr-1", "signalbox.reason": "new data"},
        "idempotency_key": key,
    }
    return JobRequest(**{**fields, **kwargs})


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "iris.yml"
    path.parent.mkdir()
    path.write_text(SPEC, encoding="utf-8")
    return path


def assert_no_secret(exc: BaseException) -> None:
    text = f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    for secret in SECRETS:
        assert secret not in text


# -- compute ---------------------------------------------------------------------------------


def test_launch_submits_the_spec_with_data_parameters_and_tags(fake: FakeAzureML, spec: Path) -> None:
    run_id = compute().launch(job_request(spec))

    assert re.fullmatch(r"iris-train-[0-9a-f]{20}", run_id)
    [put] = fake.requests("PUT", r"/jobs/")
    assert put.path == f"{WS_PATH}/jobs/{run_id}"
    assert put.query["api-version"]
    assert put.headers["authorization"] == f"Bearer {TOKEN}"
    job = put.body["properties"]
    assert job["jobType"] == "Command"
    assert job["command"] == "python train.py --data ${{inputs.data}} --max-iter ${{inputs.max_iter}}"
    assert job["inputs"]["data"] == {"jobInputType": "uri_file", "uri": DATA_URI}
    assert job["inputs"]["max_iter"] == {"jobInputType": "literal", "value": "300"}
    assert job["inputs"]["C"] == {"jobInputType": "literal", "value": "0.5"}
    assert job["tags"] == {
        "team": "ml-platform",
        "signalbox.correlation_id": "corr-1",
        "signalbox.reason": "new data",
        "signalbox.model": MODEL,
    }
    assert job["experimentName"] == MODEL
    assert job["computeId"] == f"{WS_PATH}/computes/cpu-cluster"
    assert job["environmentId"] == f"{WS_PATH}/environments/sklearn-env/versions/3"
    assert job["codeId"] == f"{WS_PATH}/codes/iris-src/versions/1"
    # The SDK found the fake through the cloud metadata, then read the workspace there.
    assert fake.requests("GET", r"^/metadata/endpoints$")


def test_a_spec_without_a_data_input_gets_one_and_keeps_a_declared_type(fake: FakeAzureML, tmp_path: Path) -> None:
    bare = tmp_path / "bare.yml"
    bare.write_text("command: python score.py\nenvironment: azureml:sklearn-env:3\ncompute: azureml:cpu-cluster\n")
    folder = tmp_path / "folder.yml"
    folder.write_text(SPEC.replace("type: uri_file", "type: uri_folder"))
    adapter = compute()

    adapter.launch(job_request(bare, key="k-bare", parameters={}, purpose="score"))
    adapter.launch(job_request(folder, key="k-folder", parameters={}))

    bare_put, folder_put = fake.requests("PUT", r"/jobs/")
    assert re.search(r"/jobs/iris-score-", bare_put.path)
    assert bare_put.body["properties"]["inputs"] == {"data": {"jobInputType": "uri_file", "uri": DATA_URI}}
    assert folder_put.body["properties"]["inputs"]["data"] == {"jobInputType": "uri_folder", "uri": DATA_URI}


def test_a_job_runs_to_success_and_reports_its_mlflow_run(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))

    assert adapter.status(run_id).state == "pending"
    fake.set_job_status(run_id, "Running")
    assert adapter.status(run_id).state == "running"
    fake.set_job_status(run_id, "Completed")
    done = adapter.status(run_id)

    assert done.state == "succeeded" and done.finished
    assert done.outputs == {"mlflow_run_id": run_id}
    assert fake.requests("GET", rf"/jobs/{run_id}$")


@pytest.mark.parametrize(
    ("azure", "state"),
    [
        ("NotStarted", "pending"),
        ("Queued", "pending"),
        ("Preparing", "pending"),
        ("Provisioning", "pending"),
        ("Starting", "pending"),
        ("Running", "running"),
        ("Finalizing", "running"),
        ("Completed", "succeeded"),
        ("Failed", "failed"),
        ("NotResponding", "running"),  # documented: it may still resume
        ("CancelRequested", "cancelled"),
        ("Canceled", "cancelled"),
    ],
)
def test_job_states_map_to_run_states(fake: FakeAzureML, spec: Path, azure: str, state: str) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, azure)
    assert adapter.status(run_id).state == state


def test_a_failed_job_says_why(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Failed", error="ModuleNotFoundError: No module named 'sklearn'")

    failed = adapter.status(run_id)

    assert failed.state == "failed"
    assert failed.message is not None
    assert "No module named 'sklearn'" in failed.message
    assert f"https://ml.azure.com/runs/{run_id}" in failed.message
    assert fake.requests("GET", rf"^/history/v1\.0{re.escape(WS_PATH)}/runs/{run_id}$")


def test_a_job_not_responding_is_still_running_and_may_recover(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "NotResponding")

    assert adapter.status(run_id) == RunStatus(run_id, "running", message="NotResponding")
    fake.set_job_status(run_id, "Running")
    fake.set_job_status(run_id, "Completed")
    assert adapter.status(run_id).state == "succeeded"
    assert len(fake.requests("PUT", r"/jobs/")) == 1


def test_a_job_azure_ml_failed_is_resubmitted_as_a_new_job(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Failed", error="Node preempted: capacity was reclaimed", code="SystemError")

    retried = adapter.status(run_id)
    again = adapter.status(run_id)  # the next poll of the same message follows the chain, no second job

    assert retried.run_id == f"{run_id}-r1" and retried.state == "pending"
    assert retried.message is not None and "capacity was reclaimed" in retried.message
    assert again.run_id == f"{run_id}-r1"
    first, second = fake.requests("PUT", r"/jobs/")
    assert second.path == f"{WS_PATH}/jobs/{run_id}-r1"
    for key in ("command", "computeId", "environmentId", "codeId", "inputs", "experimentName"):
        assert second.body["properties"][key] == first.body["properties"][key]
    assert second.body["properties"]["tags"]["signalbox.resubmitted_after"] == "SystemError"

    fake.set_job_status(f"{run_id}-r1", "Completed")
    done = adapter.status(run_id)
    assert done == RunStatus(f"{run_id}-r1", "succeeded", outputs={"mlflow_run_id": f"{run_id}-r1"})
    # A redelivered launch still finds the first job, whose status leads to the same answer.
    assert compute().launch(job_request(spec)) == run_id
    assert len(fake.requests("PUT", r"/jobs/")) == 2


def test_cancel_stops_the_resubmitted_job(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Failed", error="node failure", code="SystemError")
    adapter.status(run_id)
    fake.set_job_status(f"{run_id}-r1", "Running")

    adapter.cancel(run_id)  # the poll gave up on the lifecycle's job: the resubmission is what runs

    [cancel] = fake.requests("POST", r"/cancel$")
    assert cancel.path == f"{WS_PATH}/jobs/{run_id}-r1/cancel"


def test_resubmissions_are_bounded(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    names = [run_id] + [f"{run_id}-r{n}" for n in range(1, MAX_RESUBMITS + 1)]
    for name in names:
        fake.set_job_status(name, "Failed", error="ServiceError: the cluster could not be resized", code="ServiceError")
        answer = adapter.status(run_id)

    assert answer.run_id == names[-1] and answer.state == "failed"
    assert [c.path.rsplit("/", 1)[-1] for c in fake.requests("PUT", r"/jobs/")] == names


def test_a_job_that_failed_by_its_own_fault_is_not_resubmitted(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Failed", error="ModuleNotFoundError: No module named 'sklearn'")

    assert adapter.status(run_id).state == "failed"
    assert len(fake.requests("PUT", r"/jobs/")) == 1


def test_cancel_asks_azure_ml_and_the_job_ends_cancelled(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute()
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Running")

    adapter.cancel(run_id)

    [cancel] = fake.requests("POST", r"/cancel$")
    assert cancel.path == f"{WS_PATH}/jobs/{run_id}/cancel"
    assert adapter.status(run_id).state == "cancelled"
    adapter.cancel(run_id)  # finished: nothing more to ask
    assert len(fake.requests("POST", r"/cancel$")) == 1


def test_cancel_does_not_wait_for_ever(fake: FakeAzureML, spec: Path) -> None:
    adapter = compute(cancel_timeout=0.3)
    run_id = adapter.launch(job_request(spec))
    fake.set_job_status(run_id, "Running")
    fake.hold_cancellations = True

    began = time.monotonic()
    adapter.cancel(run_id)

    assert time.monotonic() - began < 5
    assert adapter.status(run_id).state == "cancelled"  # CancelRequested


def test_a_redelivered_launch_does_not_submit_twice(fake: FakeAzureML, spec: Path) -> None:
    first = compute().launch(job_request(spec, key="message-7"))
    again = compute().launch(job_request(spec, key="message-7"))  # another worker, the same message
    other = compute().launch(job_request(spec, key="message-8"))

    assert again == first != other
    assert [c.path.rsplit("/", 1)[-1] for c in fake.requests("PUT", r"/jobs/")] == [first, other]


def test_a_launch_racing_another_delivery_finds_its_job(fake: FakeAzureML, spec: Path) -> None:
    winner = compute().launch(job_request(spec))
    fake.fail("GET", rf"/jobs/{winner}$", 404, "UserError", "not found yet", times=1)

    assert compute().launch(job_request(spec)) == winner  # its PUT conflicts; the job is there
    assert len(fake.requests("PUT", r"/jobs/")) == 2


@pytest.mark.parametrize(("status", "code"), [(429, "TooManyRequests"), (503, "ServiceUnavailable")])
def test_throttling_and_outages_are_transient(fake: FakeAzureML, spec: Path, status: int, code: str) -> None:
    fake.fail("PUT", r"/jobs/", status, code, "try again later", headers={"Retry-After": "0.01"})

    with pytest.raises(TransientError) as raised:
        compute().launch(job_request(spec))

    assert str(status) in str(raised.value)
    assert len(fake.requests("PUT", r"/jobs/")) == 4  # the SDK's own retries came first
    assert_no_secret(raised.value)


def test_status_of_an_overloaded_service_is_transient(fake: FakeAzureML) -> None:
    fake.fail("GET", r"/jobs/", 503, "ServiceUnavailable", "busy", headers={"Retry-After": "0.01"})
    with pytest.raises(TransientError):
        compute().status("iris-train-0123456789abcdef0123")


def test_an_unreachable_service_is_transient(fake: FakeAzureML, spec: Path) -> None:
    from azure.ai.ml import MLClient

    # The client injected as built by the caller, without retries, so the dropped connection shows at once.
    client = MLClient(FakeCredential(), SUB, RG, WS, retry_total=0, show_progress=False, enable_telemetry=False)
    fake.fail("GET", r"/jobs/", 0, drop=True)

    with pytest.raises(TransientError) as raised:
        AzureMLCompute(subscription_id=SUB, resource_group=RG, workspace=WS, client=client).launch(job_request(spec))

    assert "could not be reached" in str(raised.value)


def test_a_missing_compute_is_permanent_and_names_it(fake: FakeAzureML, spec: Path) -> None:
    spec.write_text(SPEC.replace("azureml:cpu-cluster", "azureml:gpu-cluster"))

    with pytest.raises(PermanentError) as raised:
        compute().launch(job_request(spec))

    message = str(raised.value)
    assert str(spec) in message and "gpu-cluster" in message and WS in message
    assert_no_secret(raised.value)


def test_forbidden_is_permanent_and_says_which_role(fake: FakeAzureML, spec: Path) -> None:
    fake.fail("PUT", r"/jobs/", 403, "AuthorizationFailed", "The client does not have authorization")

    with pytest.raises(PermanentError) as raised:
        compute().launch(job_request(spec))

    assert "AuthorizationFailed" in str(raised.value) and "role" in str(raised.value)
    assert len(fake.requests("PUT", r"/jobs/")) == 1
    assert_no_secret(raised.value)


def test_a_rejected_token_is_permanent(fake: FakeAzureML, spec: Path) -> None:
    with pytest.raises(PermanentError) as raised:
        compute(credential=FakeCredential("expired-" + TOKEN)).status("iris-train-0123456789abcdef0123")

    assert "authentication failed" in str(raised.value)
    assert_no_secret(raised.value)


def test_an_unknown_job_is_permanent(fake: FakeAzureML) -> None:
    with pytest.raises(PermanentError, match="iris-train-0123456789abcdef0123"):
        compute().status("iris-train-0123456789abcdef0123")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "no such file"),
        ("command: [", "invalid"),
        ("environment: azureml:sklearn-env:3\ncompute: azureml:cpu-cluster\n", "invalid"),
        (SPEC.replace("${{inputs.max_iter}}", "${{inputs.epochs}}"), "invalid"),
    ],
    ids=["missing", "not-yaml", "no-command", "unknown-input"],
)
def test_a_bad_job_spec_is_permanent_and_nothing_is_submitted(
    fake: FakeAzureML, tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "iris.yml"
    if text is not None:
        path.write_text(text)

    with pytest.raises(PermanentError, match=problem) as raised:
        compute().launch(job_request(path, parameters={}))

    assert str(path) in str(raised.value)
    assert fake.requests("PUT") == []


def test_a_parameter_that_cannot_be_an_input_is_permanent(fake: FakeAzureML, spec: Path) -> None:
    with pytest.raises(PermanentError, match="max-iter"):
        compute().launch(job_request(spec, parameters={"max-iter": "3"}))
    assert fake.requests("PUT") == []


def test_default_azure_credential_when_none_is_given(fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.identity

    made: list[FakeCredential] = []

    def default_credential(**kwargs: Any) -> FakeCredential:
        made.append(FakeCredential())
        return made[-1]

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", default_credential)
    adapter = AzureMLCompute(subscription_id=SUB, resource_group=RG, workspace=WS)
    assert made == []  # nothing is built (nor imported) before it is needed

    with pytest.raises(PermanentError):
        adapter.status("iris-train-0123456789abcdef0123")

    assert len(made) == 1 and made[0].scopes == [(f"{fake.base}/.default",)]


def test_workspace_tracking_uri(fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")  # restored to absent afterwards

    uri = workspace_tracking_uri(SUB, RG, WS, credential=FakeCredential())

    # The workspace reports azureml://…/mlflow/v1.0/…; MLflow's own RestStore needs the https base.
    assert uri == f"https://{LOCATION}.api.azureml.ms/mlflow/v2.0{WS_PATH}"
    import os

    assert os.environ["MLFLOW_TRACKING_AUTH"] == "signalbox-azureml"


# -- serving ---------------------------------------------------------------------------------


def deployment_puts(fake: FakeAzureML) -> list[Call]:
    return fake.requests("PUT", r"/onlineEndpoints/[^/]+/deployments/")


def endpoint_puts(fake: FakeAzureML) -> list[Call]:
    return fake.requests("PUT", r"/onlineEndpoints/[^/]+$")


def test_first_deploy_creates_the_endpoint_then_deploys_blue(fake: FakeAzureML) -> None:
    adapter = serving()
    assert adapter.current(ENDPOINT) is None

    candidate = adapter.start(ENDPOINT, MODEL, "1")

    assert candidate == Deployment(ENDPOINT, MODEL, "1", "blue", f"{fake.base}/score/{ENDPOINT}")
    [create] = endpoint_puts(fake)
    assert create.body["location"] == LOCATION
    assert create.body["properties"]["authMode"] == "Key"
    [put] = deployment_puts(fake)
    assert put.path == f"{WS_PATH}/onlineEndpoints/{ENDPOINT}/deployments/blue"
    assert put.body["properties"]["model"] == f"{WS_PATH}/models/{MODEL}/versions/1"
    assert put.body["properties"]["instanceType"] == "Standard_DS3_v2"
    assert put.body["properties"]["endpointComputeType"] == "Managed"
    assert put.body["sku"]["capacity"] == 1

    assert adapter.readiness(candidate).state == "pending"
    fake.set_deployment_state(ENDPOINT, "blue", "Succeeded")
    assert adapter.readiness(candidate).state == "ready"
    assert adapter.invoke(candidate, ScoringFrame(("a", "b", "c", "d"), ((5.1, 3.5, 1.4, 0.2),))) == {
        "predictions": [0],
        "served_by": "blue",
    }
    [score] = fake.requests("POST", r"^/score/")
    assert score.headers["azureml-model-deployment"] == "blue"
    assert score.headers["authorization"] == f"Bearer {ENDPOINT_KEY}"  # from listKeys
    assert score.body == {"input_data": {"columns": ["a", "b", "c", "d"], "index": [0], "data": [[5.1, 3.5, 1.4, 0.2]]}}
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields

    assert "Authorization" not in EndpointInvokeFields.DEFAULT_HEADER  # the SDK's shared dict is wiped

    adapter.route(ENDPOINT, candidate)

    assert endpoint_puts(fake)[-1].body["properties"]["traffic"] == {"blue": 100}
    assert fake.traffic(ENDPOINT) == {"blue": 100}
    assert adapter.current(ENDPOINT) == candidate
    assert adapter.endpoint_url(ENDPOINT) == f"{fake.base}/score/{ENDPOINT}"


def test_an_endpoint_still_being_created_makes_start_retry_later(fake: FakeAzureML) -> None:
    adapter = serving(endpoint_timeout=0.3)
    fake.hold_endpoint_updates = True

    with pytest.raises(TransientError, match="still being created"):
        adapter.start(ENDPOINT, MODEL, "1")
    with pytest.raises(TransientError, match="still Creating"):
        adapter.start(ENDPOINT, MODEL, "1")  # the redelivered command, while Azure ML is still at it
    assert deployment_puts(fake) == []

    fake.hold_endpoint_updates = False
    deadline = time.monotonic() + 10
    while fake.endpoints[ENDPOINT]["properties"]["provisioningState"] != "Succeeded" and time.monotonic() < deadline:
        time.sleep(0.05)  # the SDK's poller, left running, sees the creation through
    candidate = adapter.start(ENDPOINT, MODEL, "1")

    assert candidate.slot == "blue"
    assert len(endpoint_puts(fake)) == 1
    assert len(deployment_puts(fake)) == 1


def test_blue_green_switch(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    adapter = serving(instance_type="Standard_F4s_v2", instance_count=2)
    previous = adapter.current(ENDPOINT)
    assert previous == Deployment(ENDPOINT, MODEL, "1", "blue", f"{fake.base}/score/{ENDPOINT}")

    candidate = adapter.start(ENDPOINT, MODEL, "2")

    assert candidate.slot == "green" and candidate.version == "2"
    assert endpoint_puts(fake) == []  # the endpoint exists; traffic has not moved
    [put] = deployment_puts(fake)
    assert put.path.endswith("/deployments/green")
    assert put.body["properties"]["model"] == f"{WS_PATH}/models/{MODEL}/versions/2"
    assert put.body["properties"]["instanceType"] == "Standard_F4s_v2"
    assert put.body["sku"]["capacity"] == 2
    assert adapter.readiness(candidate).state == "pending"  # Creating
    fake.set_deployment_state(ENDPOINT, "green", "Succeeded")
    assert adapter.readiness(candidate).state == "ready"
    assert adapter.invoke(candidate, ScoringFrame((), ())) == {"predictions": [0], "served_by": "green"}
    assert fake.traffic(ENDPOINT) == {"blue": 100}  # the smoke request needed no traffic

    adapter.route(ENDPOINT, candidate)
    adapter.stop(previous)

    assert endpoint_puts(fake)[-1].body["properties"]["traffic"] == {"green": 100}
    [delete] = fake.requests("DELETE")
    assert delete.path == f"{WS_PATH}/onlineEndpoints/{ENDPOINT}/deployments/blue"
    assert adapter.current(ENDPOINT) == candidate
    assert (ENDPOINT, "blue") not in fake.deployments


def test_a_failed_deployment_is_rolled_back_and_the_old_slot_keeps_the_traffic(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    adapter = serving()
    candidate = adapter.start(ENDPOINT, MODEL, "2")
    fake.set_deployment_state(ENDPOINT, "green", "Failed")
    fake.logs[(ENDPOINT, "green")] = "loading model\nMemoryError: the model does not fit on Standard_DS3_v2\n"

    readiness = adapter.readiness(candidate)
    adapter.stop(candidate)

    assert readiness.state == "failed"
    assert readiness.message is not None
    assert "Failed" in readiness.message and "MemoryError" in readiness.message
    [delete] = fake.requests("DELETE")
    assert delete.path.endswith("/deployments/green")
    assert endpoint_puts(fake) == []
    assert fake.traffic(ENDPOINT) == {"blue": 100}
    assert adapter.current(ENDPOINT) == Deployment(ENDPOINT, MODEL, "1", "blue", f"{fake.base}/score/{ENDPOINT}")


def test_a_model_error_fails_the_deployment_so_the_deploy_rolls_back(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.add_deployment(ENDPOINT, "green", MODEL, "2")
    # A managed online endpoint answers 424 when the model container answers an error, with its status in headers.
    fake.scores[(ENDPOINT, "green")] = (424, {"error": {"code": "ModelError", "message": "predict() failed"}})
    fake.score_headers[(ENDPOINT, "green")] = {
        "ms-azureml-model-error-statuscode": "500",
        "ms-azureml-model-error-reason": "model_error",
    }
    adapter = serving()
    candidate = Deployment(ENDPOINT, MODEL, "2", "green", f"{fake.base}/score/{ENDPOINT}")

    with pytest.raises(DeploymentFailed, match="predict") as raised:
        adapter.invoke(candidate, ScoringFrame((), ()))
    assert "the model answered 500 (model_error)" in str(raised.value)
    assert_no_secret(raised.value)
    adapter.stop(candidate)

    assert fake.traffic(ENDPOINT) == {"blue": 100}
    assert list(fake.deployments) == [(ENDPOINT, "blue")]

    fake.add_deployment(ENDPOINT, "green", MODEL, "2")
    fake.scores[(ENDPOINT, "green")] = (503, {"error": {"code": "Busy", "message": "upstream overloaded"}})
    with pytest.raises(TransientError):
        adapter.invoke(candidate, ScoringFrame((), ()))


def _green_candidate(fake: FakeAzureML) -> Deployment:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.add_deployment(ENDPOINT, "green", MODEL, "2")
    return Deployment(ENDPOINT, MODEL, "2", "green", f"{fake.base}/score/{ENDPOINT}")


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (504, "upstream request timeout"),
        (503, "no healthy upstream"),
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    ],
)
def test_plain_text_gateway_errors_are_transient(fake: FakeAzureML, status: int, text: str) -> None:
    from azure.ai.ml.exceptions import MlException

    candidate = _green_candidate(fake)
    fake.scores[(ENDPOINT, "green")] = (status, text)
    client = serving()._ml()
    request = REPO / "tests" / "contract" / "_smoke.json"
    request.write_text('{"input_data": {"columns": [], "data": []}}')
    try:
        # What the SDK itself does with a non-JSON error body: a bare MlException, no status.
        with pytest.raises(MlException) as bare:
            client.online_endpoints.invoke(endpoint_name=ENDPOINT, deployment_name="green", request_file=str(request))
    finally:
        request.unlink()
    assert getattr(bare.value, "status_code", None) is None

    with pytest.raises(TransientError, match=str(status)) as raised:
        serving().invoke(candidate, ScoringFrame(("a",), ((1.0,),)))

    assert not isinstance(raised.value, PermanentError)
    assert_no_secret(raised.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientError),  # documented: Azure ML's infrastructure is failing
        (429, TransientError),
        (401, PermanentError),  # the key, not the model
        (408, DeploymentFailed),  # the model overran request_timeout_ms
        (400, DeploymentFailed),  # the model refused the request
    ],
)
def test_scoring_answers_map_to_retry_configuration_or_rollback(
    fake: FakeAzureML, status: int, error: type[Exception]
) -> None:
    candidate = _green_candidate(fake)
    fake.scores[(ENDPOINT, "green")] = (status, {"error": {"code": "E", "message": f"answered {status}"}})

    with pytest.raises(error) as raised:
        serving().invoke(candidate, ScoringFrame(("a",), ((1.0,),)))

    assert type(raised.value) is error  # a PermanentError is not a DeploymentFailed: no rollback
    assert str(status) in str(raised.value)
    assert_no_secret(raised.value)


@pytest.mark.parametrize("name", ["ab", "1iris", "iris-", "iris_live", "iris.live", "i" * 33, ""])
def test_an_illegal_endpoint_name_is_permanent_and_names_the_rule(fake: FakeAzureML, name: str) -> None:
    adapter = serving()

    for call in (lambda: adapter.start(name, MODEL, "1"), lambda: adapter.current(name)):
        with pytest.raises(PermanentError, match="3-32 characters long, start with a letter") as raised:
            call()
        assert not isinstance(raised.value, DeploymentFailed)
        assert repr(name) in str(raised.value)
    assert fake.requests(pattern="onlineEndpoints") == []


def test_legal_endpoint_and_slot_names_pass() -> None:
    from shared.adapters.azureml.serving import SLOTS, check_endpoint_name

    for name in ("abc", "iris-live", "I" + "x" * 31, *SLOTS):
        check_endpoint_name(name)


def test_an_endpoint_name_taken_in_the_region_is_permanent(fake: FakeAzureML) -> None:
    message = f"Endpoint name {ENDPOINT} is already used by another workspace; names are unique per region"
    fake.fail("PUT", rf"/onlineEndpoints/{ENDPOINT}$", 409, "Conflict", message)

    with pytest.raises(PermanentError, match="unique in their Azure region") as raised:
        serving().start(ENDPOINT, MODEL, "1")

    assert not isinstance(raised.value, (DeploymentFailed, TransientError))
    assert deployment_puts(fake) == []


def test_a_racing_creation_of_the_same_endpoint_is_not_a_taken_name(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {})
    fake.fail("GET", rf"/onlineEndpoints/{ENDPOINT}$", 404, "ResourceNotFound", "not yet", times=1)
    fake.fail("PUT", rf"/onlineEndpoints/{ENDPOINT}$", 409, "Conflict", "an operation is in progress", times=1)

    candidate = serving().start(ENDPOINT, MODEL, "1")

    assert candidate.slot == "blue"
    assert len(deployment_puts(fake)) == 1


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "QuotaExceeded", "Not enough quota available for Standard_DS3_v2 in westeurope"),
        (403, "AuthorizationFailed", "cannot write onlineEndpoints/deployments"),
        (401, "InvalidAuthenticationToken", "The access token expired"),
    ],
)
def test_configuration_errors_from_start_are_permanent_not_deployment_failures(
    fake: FakeAzureML, status: int, code: str, message: str
) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.fail("PUT", r"/deployments/", status, code, message)

    with pytest.raises(PermanentError) as raised:
        serving().start(ENDPOINT, MODEL, "2")

    assert not isinstance(raised.value, DeploymentFailed)
    assert_no_secret(raised.value)


def test_a_model_version_the_workspace_cannot_deploy_fails_the_deployment(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.fail("PUT", r"/deployments/", 404, "ResourceNotFound", f"Model {WS_PATH}/models/{MODEL}/versions/9 not found")

    with pytest.raises(DeploymentFailed, match="cannot be deployed"):
        serving().start(ENDPOINT, MODEL, "9")


def test_a_redelivered_start_reuses_the_deployment_under_way(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    adapter = serving()

    first = adapter.start(ENDPOINT, MODEL, "2")
    again = adapter.start(ENDPOINT, MODEL, "2")

    assert first == again
    assert len(deployment_puts(fake)) == 1


def test_stop_leaves_a_slot_that_holds_another_version(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.add_deployment(ENDPOINT, "green", MODEL, "3")
    adapter = serving()

    adapter.stop(Deployment(ENDPOINT, MODEL, "2", "green", f"{fake.base}/score/{ENDPOINT}"))
    adapter.stop(Deployment(ENDPOINT, MODEL, "9", "purple", f"{fake.base}/score/{ENDPOINT}"))  # gone already

    assert fake.requests("DELETE") == []


def test_a_route_not_confirmed_in_time_is_transient(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.add_deployment(ENDPOINT, "green", MODEL, "2")
    fake.hold_endpoint_updates = True

    with pytest.raises(TransientError, match="not confirmed"):
        serving(route_timeout=0.3).route(ENDPOINT, Deployment(ENDPOINT, MODEL, "2", "green", "u"))


def test_a_failed_traffic_update_is_permanent(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    fake.add_deployment(ENDPOINT, "green", MODEL, "2")
    fake.failing_endpoint_updates = "Deployment green is not healthy"

    with pytest.raises(PermanentError, match="not healthy"):
        serving().route(ENDPOINT, Deployment(ENDPOINT, MODEL, "2", "green", "u"))

    assert fake.traffic(ENDPOINT) == {"blue": 100}


def test_importing_the_adapters_loads_no_azure_sdk() -> None:
    code = (
        "import sys, shared.adapters.azureml.compute, shared.adapters.azureml.serving\n"
        "print(sorted(m for m in sys.modules if m.startswith(('azure.ai.ml', 'azure.identity', 'azure.core'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


def test_serving_translates_errors(fake: FakeAzureML) -> None:
    fake.add_endpoint(ENDPOINT, {"blue": 100})
    fake.add_deployment(ENDPOINT, "blue", MODEL, "1")
    adapter = serving()

    fake.fail("GET", rf"/onlineEndpoints/{ENDPOINT}$", 429, "TooManyRequests", "slow down", times=4, headers=FAST)
    with pytest.raises(TransientError):
        adapter.current(ENDPOINT)

    fake.fail("PUT", r"/deployments/", 403, "AuthorizationFailed", "cannot write deployments")
    with pytest.raises(PermanentError, match="AuthorizationFailed") as raised:
        adapter.start(ENDPOINT, MODEL, "2")
    assert_no_secret(raised.value)

    with pytest.raises(PermanentError, match="does not exist"):
        adapter.endpoint_url("no-such-endpoint")


# -- the deploy handler over AzureMLServing --------------------------------------------------

HANDLER_MODEL = "iris-classifier"  # in catalogue.toml, deployed to the endpoint "iris"
HANDLER_ENDPOINT = "iris"


def _deploy_services(fake: FakeAzureML) -> tuple[Any, str]:
    """Fake services whose serving is AzureMLServing; v1 serves from blue, v2 is staged and approved."""
    from dataclasses import replace

    from shared import domain
    from tests.fakes import FakeRegistry, services

    registry = FakeRegistry()
    svc = replace(services(), serving=serving(), registry=registry)
    v1 = registry.register(HANDLER_MODEL, stage=domain.Stage.PRODUCTION)
    registry.set_alias(HANDLER_MODEL, domain.CHAMPION, v1)
    v2 = registry.register(HANDLER_MODEL, stage=domain.Stage.STAGED, approval=domain.Approval.AUTO)
    fake.add_endpoint(HANDLER_ENDPOINT, {"blue": 100})
    fake.add_deployment(HANDLER_ENDPOINT, "blue", HANDLER_MODEL, v1)
    return svc, v2


def _deploy_command(svc: Any, version: str) -> Any:
    from shared.contracts import DeployVersion, Envelope

    command = DeployVersion(model_name=HANDLER_MODEL, version=version)
    return Envelope.start(command, cause=f"test-deploy:{version}", environment="dev")


def test_the_deploy_handler_goes_blue_to_green(fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import handlers

    monkeypatch.chdir(REPO)  # the smoke payload comes from the catalogue's evaluation CSV
    svc, v2 = _deploy_services(fake)

    assert handlers.deploy(_deploy_command(svc, v2), svc) == "starting"  # green is Creating
    [(check, scheduled_at)] = svc.bus.sent
    assert scheduled_at is not None and check.command.candidate_slot == "green"
    fake.set_deployment_state(HANDLER_ENDPOINT, "green", "Succeeded")
    assert handlers.deploy(check, svc) == "deployed"

    [smoke] = fake.requests("POST", r"^/score/")
    assert smoke.headers["azureml-model-deployment"] == "green"
    assert smoke.body["input_data"]["columns"] and smoke.body["input_data"]["data"]
    assert fake.traffic(HANDLER_ENDPOINT) == {"green": 100}
    assert list(fake.deployments) == [(HANDLER_ENDPOINT, "green")]
    assert svc.registry.stage(HANDLER_MODEL, v2) == "production"
    deployment = json.loads(svc.registry.get_version(HANDLER_MODEL, v2).tags["signalbox.deployment"])
    assert deployment["url"] == f"{fake.base}/score/{HANDLER_ENDPOINT}" and deployment["slot"] == "green"


def test_the_deploy_handler_rolls_back_a_failed_deployment(fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import handlers

    monkeypatch.chdir(REPO)
    svc, v2 = _deploy_services(fake)
    assert handlers.deploy(_deploy_command(svc, v2), svc) == "starting"
    [(check, _)] = svc.bus.sent
    fake.set_deployment_state(HANDLER_ENDPOINT, "green", "Failed")
    fake.logs[(HANDLER_ENDPOINT, "green")] = "ImageBuildFailure: conda environment could not be solved"

    assert handlers.deploy(check, svc) == "rolled-back"

    assert fake.traffic(HANDLER_ENDPOINT) == {"blue": 100}
    assert list(fake.deployments) == [(HANDLER_ENDPOINT, "blue")]
    assert fake.requests("POST", r"^/score/") == []
    record = json.loads(svc.registry.get_version(HANDLER_MODEL, v2).tags["signalbox.deployment"])
    assert "ImageBuildFailure" in record["reason"]


def test_the_deploy_handler_retries_a_gateway_timeout_and_rolls_back_a_model_error(
    fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import handlers

    monkeypatch.chdir(REPO)
    svc, v2 = _deploy_services(fake)
    assert handlers.deploy(_deploy_command(svc, v2), svc) == "starting"
    [(check, _)] = svc.bus.sent
    fake.set_deployment_state(HANDLER_ENDPOINT, "green", "Succeeded")

    fake.scores[(HANDLER_ENDPOINT, "green")] = (504, "upstream request timeout")
    with pytest.raises(TransientError):
        handlers.deploy(check, svc)  # retried later; nothing rolled back
    assert (HANDLER_ENDPOINT, "green") in fake.deployments
    assert svc.registry.stage(HANDLER_MODEL, v2) == "staged"

    fake.scores[(HANDLER_ENDPOINT, "green")] = (424, {"error": {"code": "ModelError", "message": "bad input"}})
    assert handlers.deploy(check, svc) == "rolled-back"
    assert list(fake.deployments) == [(HANDLER_ENDPOINT, "blue")]
    assert fake.traffic(HANDLER_ENDPOINT) == {"blue": 100}
