"""MLflow's own ``MlflowClient`` and REST stores reach an Azure ML workspace's MLflow API with Entra ID tokens.

No azureml-mlflow plugin: ``workspace_tracking_uri`` gives the workspace's https MLflow base and turns on
the ``signalbox-azureml`` request auth provider, which MLflow loads from its entry point (installed
package metadata) and asks for the auth of every request.

``FakeWorkspaceMlflow`` answers the MLflow REST API (experiments, registered models, tags, version
search) over HTTPS on 127.0.0.1, under the workspace's path, and refuses any request whose bearer
token is not the one currently valid. The hosts ``westeurope.api.azureml.ms`` (an Azure ML MLflow host)
and ``mlflow.example.test`` (any other MLflow server) resolve to it in this process only; its
certificate names both.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.adapters.azureml import mlflow_auth
from shared.adapters.azureml.compute import workspace_tracking_uri
from shared.errors import PermanentError

AZURE_HOST = "westeurope.api.azureml.ms"
OTHER_HOST = "mlflow.example.test"
SUB = "00000000-0000-0000-0000-0000000000aa"
WS_PATH = (
    f"/subscriptions/{SUB}/resourceGroups/rg-signalbox/providers/Microsoft.MachineLearningServices"
    "/workspaces/mlw-signalbox"
)
BASE_PATH = f"/mlflow/v2.0{WS_PATH}"
ARM_SCOPE = "https://management.azure.com/.default"
TOKENS = [f"eyJ0eXAiOiJKV1QifQ.fake-entra-token-{n}.c2lnbmF0dXJl" for n in range(4)]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the two test host names and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AZURE_HOST)])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName(AZURE_HOST),
        x509.DNSName(OTHER_HOST),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Seen:
    host: str
    method: str
    path: str
    authorization: str | None
    probe: str | None = None  # the X-Probe header, if any


class FakeWorkspaceMlflow:
    """The MLflow REST API of one workspace, in memory; ``valid`` is the one token it accepts."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.valid = TOKENS[0]
        self.seen: list[Seen] = []
        self.unexpected: list[str] = []
        self.experiments: dict[str, str] = {}
        self.models: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                with fake.lock:
                    seen = Seen(
                        self.headers.get("host", ""),
                        self.command,
                        parts.path,
                        self.headers.get("authorization"),
                        self.headers.get("x-probe"),
                    )
                    fake.seen.append(seen)
                    status, answer = fake.answer(seen, {**query, **body})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, seen: Seen, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        host = seen.host.split(":")[0]
        if host == AZURE_HOST:
            if seen.authorization != f"Bearer {self.valid}":
                return 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid or expired access token"}
            if not seen.path.startswith(BASE_PATH + "/api/"):
                return self._unexpected(seen)
            path = seen.path.removeprefix(BASE_PATH)
        else:
            path = seen.path
        return self._mlflow(seen, path, args)

    def _unexpected(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        self.unexpected.append(f"{seen.method} {seen.path}")
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no {seen.method} {seen.path}"}

    def _mlflow(self, seen: Seen, path: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        now = int(time.time() * 1000)
        if path == "/api/2.0/mlflow/experiments/get-by-name":
            name = args["experiment_name"]
            if name not in self.experiments:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no experiment {name}"}
            return 200, {"experiment": self._experiment(name)}
        if path == "/api/2.0/mlflow/experiments/create":
            self.experiments.setdefault(args["name"], str(len(self.experiments) + 1))
            return 200, {"experiment_id": self.experiments[args["name"]]}
        if path == "/api/2.0/mlflow/registered-models/create":
            if args["name"] in self.models:
                return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"{args['name']} exists"}
            self.models[args["name"]] = {}
            return 200, {"registered_model": self._model(args["name"], now)}
        if path == "/api/2.0/mlflow/registered-models/get":
            if args["name"] not in self.models:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no model {args['name']}"}
            return 200, {"registered_model": self._model(args["name"], now)}
        if path == "/api/2.0/mlflow/registered-models/set-tag":
            self.models[args["name"]][args["key"]] = args["value"]
            return 200, {}
        if path == "/api/2.0/mlflow/model-versions/search":
            return 200, {"model_versions": []}
        return self._unexpected(seen)

    def _experiment(self, name: str) -> dict[str, Any]:
        return {"experiment_id": self.experiments[name], "name": name, "lifecycle_stage": "active"}

    def _model(self, name: str, now: int) -> dict[str, Any]:
        tags = [{"key": k, "value": v} for k, v in self.models[name].items()]
        return {"name": name, "creation_timestamp": now, "last_updated_timestamp": now, "tags": tags}


class TokenSource:
    """A ``TokenCredential`` handing out ``TOKENS`` in turn, each valid for ``lifetime`` seconds."""

    def __init__(self, lifetime: float = 3600) -> None:
        self.lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(TOKENS[len(self.scopes) - 1], int(mlflow_auth._now() + self.lifetime))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def fake(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWorkspaceMlflow]:
    """The fake, with both host names resolving to it and its certificate trusted (this process only)."""
    server = FakeWorkspaceMlflow(*certificate)
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host in (AZURE_HOST, OTHER_HOST) else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no request leaves the machine
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a 401 must show at once
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME"):
        # Set, then deleted: monkeypatch restores the variable's absence after enable() has set it.
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", f"{AZURE_HOST},{OTHER_HOST},127.0.0.1")
    monkeypatch.setattr(mlflow_auth, "_AUTH", mlflow_auth.EntraBearerAuth())  # a fresh token cache
    try:
        yield server
    finally:
        server.close()
    assert server.unexpected == [], f"MLflow sent requests the fake does not know: {server.unexpected}"


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    captured = capsys.readouterr()
    logged = "\n".join(r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase))
    for token in TOKENS:
        assert token not in logged, "a token was logged"
        assert token not in captured.out + captured.err, "a token was printed"


def workspace_uri(fake: FakeWorkspaceMlflow, credential: TokenSource) -> str:
    """What bootstrap gets from ``workspace_tracking_uri`` for a workspace reporting the fake's address."""

    class Workspace:
        mlflow_tracking_uri = f"azureml://{AZURE_HOST}:{fake.port}/mlflow/v1.0{WS_PATH}"

    class Workspaces:
        def get(self, name: str) -> Workspace:
            return Workspace()

    class Client:
        workspaces = Workspaces()

    # The workspace lookup itself (azure-ai-ml against a fake ARM) is proven in test_azureml.py.
    return workspace_tracking_uri(SUB, "rg-signalbox", "mlw-signalbox", credential=credential, client=Client())  # type: ignore[arg-type]


def azure_requests(fake: FakeWorkspaceMlflow) -> list[Seen]:
    return [s for s in fake.seen if s.host.split(":")[0] == AZURE_HOST]


def test_the_https_uri_and_the_auth_provider_come_from_the_workspace_uri(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = workspace_uri(fake, TokenSource())

    assert uri == f"https://{AZURE_HOST}:{fake.port}/mlflow/v2.0{WS_PATH}"
    import os

    assert os.environ["MLFLOW_TRACKING_AUTH"] == "signalbox-azureml"
    # MLflow finds the provider through the installed entry point, as in the deployed app.
    from mlflow.tracking.request_auth.registry import fetch_auth

    assert isinstance(fetch_auth("signalbox-azureml"), mlflow_auth.EntraBearerAuth)


def test_the_provider_is_registered_also_without_the_entry_point(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.tracking.request_auth import registry

    # As in the deployed function app: files plus requirements.txt, no package metadata to load it from.
    providers = registry._request_auth_provider_registry
    monkeypatch.setattr(providers, "_registry", [p for p in providers if p.get_name() != "signalbox-azureml"])

    client = MlflowClient(tracking_uri=workspace_uri(fake, TokenSource()))
    client.create_experiment("iris")

    assert [s.authorization for s in azure_requests(fake)] == [f"Bearer {TOKENS[0]}"]


def test_mlflow_client_tracks_and_registers_with_a_bearer_token_on_every_request(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    credential = TokenSource()
    uri = workspace_uri(fake, credential)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    experiment = client.create_experiment("iris")
    assert client.get_experiment_by_name("iris").experiment_id == experiment
    client.create_registered_model("iris")
    client.set_registered_model_tag("iris", "signalbox.latest_data", "https://st/landing/iris.csv")
    assert client.get_registered_model("iris").tags == {"signalbox.latest_data": "https://st/landing/iris.csv"}
    assert client.search_model_versions("name='iris'") == []

    seen = azure_requests(fake)
    endpoints = {s.path.removeprefix(BASE_PATH + "/api/2.0/mlflow/") for s in seen}
    assert endpoints == {
        "experiments/create",
        "experiments/get-by-name",
        "registered-models/create",
        "registered-models/get",
        "registered-models/set-tag",
        "model-versions/search",
    }
    assert all(s.authorization == f"Bearer {TOKENS[0]}" for s in seen)
    assert credential.scopes == [(ARM_SCOPE,)]  # one token, cached across requests


def test_a_token_near_expiry_is_renewed_before_the_next_request(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    clock = [1_900_000_000.0]
    monkeypatch.setattr(mlflow_auth, "_now", lambda: clock[0])
    credential = TokenSource(lifetime=3600)
    client = MlflowClient(tracking_uri=workspace_uri(fake, credential))
    client.create_experiment("iris")

    clock[0] += 3600 - mlflow_auth.REFRESH_MARGIN + 1  # within the margin: the service would soon refuse it
    fake.valid = TOKENS[1]
    assert client.get_experiment_by_name("iris") is not None

    assert [s.authorization for s in azure_requests(fake)] == [f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}"]
    assert len(credential.scopes) == 2


def test_a_refused_token_is_dropped_so_the_next_request_gets_a_new_one(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    credential = TokenSource()
    client = MlflowClient(tracking_uri=workspace_uri(fake, credential))
    client.create_experiment("iris")
    fake.valid = TOKENS[1]  # e.g. the identity's role assignment changed: the first token is revoked

    with pytest.raises(MlflowException) as refused:
        client.get_experiment_by_name("iris")
    assert TOKENS[0] not in str(refused.value)
    assert client.get_experiment_by_name("iris") is not None

    assert [s.authorization for s in azure_requests(fake)][-1] == f"Bearer {TOKENS[1]}"


@pytest.mark.parametrize("scheme", ["https", "http-to-azure"])
def test_no_token_goes_to_other_hosts_or_over_plain_http(
    fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    credential = TokenSource()
    workspace_uri(fake, credential)  # the provider is on, process-wide
    if scheme == "https":
        client = MlflowClient(tracking_uri=f"https://{OTHER_HOST}:{fake.port}")
        client.create_experiment("iris")
        assert client.get_experiment_by_name("iris") is not None
        assert [s.authorization for s in fake.seen] == [None, None]
    else:
        # Plain http to an Azure ML host name: the token would cross the wire in clear; none is sent.
        with pytest.raises(MlflowException):
            MlflowClient(tracking_uri=f"http://{AZURE_HOST}:{fake.port}{BASE_PATH}").get_experiment_by_name("iris")
    assert credential.scopes == []


def test_why_not_a_request_header_provider(fake: FakeWorkspaceMlflow, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow asks header providers for headers without saying where the request goes: they reach every host."""
    from mlflow import MlflowClient
    from mlflow.tracking.request_header import registry
    from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

    class Probe(RequestHeaderProvider):
        def in_context(self) -> bool:
            return True

        def request_headers(self) -> dict[str, str]:  # no request, no URL: nothing to decide with
            return {"X-Probe": "would-be-a-token"}

    providers = registry._request_header_provider_registry
    monkeypatch.setattr(providers, "_registry", [*providers, Probe()])

    MlflowClient(tracking_uri=f"https://{OTHER_HOST}:{fake.port}").create_experiment("iris")

    assert [s.probe for s in fake.seen] == ["would-be-a-token"]


def test_an_explicit_azureml_tracking_uri_is_served_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from shared.adapters import azureml

    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    local = SimpleNamespace(
        tracking_uri="http://127.0.0.1:5000", mlflow_tracking_uri="http://127.0.0.1:5000", registry_uri=""
    )
    assert azureml.mlflow_uris(local) == ("http://127.0.0.1:5000", None)  # type: ignore[arg-type]
    import os

    assert "MLFLOW_TRACKING_AUTH" not in os.environ  # nothing to sign

    printed = f"azureml://{AZURE_HOST}/mlflow/v1.0{WS_PATH}"  # what `az ml workspace show` prints
    explicit = SimpleNamespace(tracking_uri=printed, mlflow_tracking_uri=printed, registry_uri="")
    https = f"https://{AZURE_HOST}/mlflow/v2.0{WS_PATH}"
    assert azureml.mlflow_uris(explicit) == (https, None)  # type: ignore[arg-type]
    assert os.environ["MLFLOW_TRACKING_AUTH"] == "signalbox-azureml"


def test_token_scope_is_only_for_azure_ml_hosts() -> None:
    assert mlflow_auth.token_scope("westeurope.api.azureml.ms") == ARM_SCOPE
    assert mlflow_auth.token_scope("6f9a.workspace.westeurope.api.azureml.ms") == ARM_SCOPE  # private link
    assert mlflow_auth.token_scope("usgovvirginia.api.ml.azure.us") == "https://management.usgovcloudapi.net/.default"
    for host in ("api.azureml.ms", "westeurope.api.azureml.ms.example.test", "evilapi.azureml.ms", "", None):
        assert mlflow_auth.token_scope(host) is None


def test_a_tracking_uri_that_is_not_azure_mls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Workspace:
        mlflow_tracking_uri = f"azureml://mlflow.example.test/mlflow/v1.0{WS_PATH}"

    class Client:
        class workspaces:
            @staticmethod
            def get(name: str) -> Workspace:
                return Workspace()

    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    with pytest.raises(PermanentError, match="not an Azure ML workspace tracking URI"):
        workspace_tracking_uri(SUB, "rg", "mlw", credential=TokenSource(), client=Client())  # type: ignore[arg-type]
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "kubernetes")
    Workspace.mlflow_tracking_uri = f"azureml://{AZURE_HOST}/mlflow/v1.0{WS_PATH}"
    with pytest.raises(PermanentError, match="MLFLOW_TRACKING_AUTH"):
        workspace_tracking_uri(SUB, "rg", "mlw", credential=TokenSource(), client=Client())  # type: ignore[arg-type]
