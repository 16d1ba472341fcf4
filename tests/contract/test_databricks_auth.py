"""Signing in to Databricks with the Azure managed identity, through databricks-sdk's and MLflow's own code.

The Databricks side is a local fake of the REST API (``FakeDatabricks`` of ``test_databricks``);
tokens come from a stub azure-identity ``TokenCredential`` or, in one test, from azure-identity's
own ``ManagedIdentityCredential`` talking to a local App Service identity endpoint (the documented
``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` protocol, API version 2019-08-01).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.identity import CredentialUnavailableError

from shared.adapters.databricks.auth import DATABRICKS_SCOPE, ManagedIdentityStrategy
from shared.adapters.databricks.compute import DatabricksCompute
from shared.adapters.databricks.mlflow_auth import install_if_wanted, install_managed_identity
from shared.adapters.databricks.serving import DatabricksServing
from shared.errors import PermanentError, TransientError
from tests.contract.test_databricks import (
    ENDPOINT,
    GET_ENDPOINT,
    RUN,
    RUN_NOW,
    RUNS_GET,
    FakeDatabricks,
    endpoint,
    entity,
    error,
    job_request,
    run,
)
from tests.databricks_rest import DatabricksRest

AZURE_DATABRICKS_APP = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"  # the AzureDatabricks first-party application
CLIENT_ID = "6c3b8a2e-0d4f-4e9a-9b1c-5f7e2d8a4c10"


@pytest.fixture(autouse=True)
def _isolated_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient Databricks, Azure identity or proxy configuration reaches the SDK."""
    ambient = ("AZURE_CLIENT_ID", "IMDS_ENDPOINT", "http_proxy", "https_proxy", "all_proxy")
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "IDENTITY_", "MSI_")) or name.lower() in map(str.lower, ambient):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks()
    yield server
    server.close()


class Clock:
    """A settable now, shared by the stub credential and the SDK's token cache."""

    def __init__(self) -> None:
        self.now = datetime.now(tz=UTC)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class StubCredential:
    """An azure-identity ``TokenCredential``: a new random token per call, valid ``lifetime`` seconds."""

    def __init__(self, clock: Clock | None = None, lifetime: int = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []
        self.issued: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        token = f"eyJ0eXAi.mi-{len(self.issued) + 1}-{secrets.token_hex(12)}"
        self.issued.append(token)
        now = self.clock.now if self.clock else datetime.now(tz=UTC)
        return AccessToken(token, int(now.timestamp()) + self.lifetime)


class UnavailableCredential:
    """What ``ManagedIdentityCredential`` raises where no identity is assigned."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise CredentialUnavailableError(message="ManagedIdentityCredential authentication unavailable, no response")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The SDK's token cache (``databricks.sdk.oauth``) reads this clock instead of the wall clock."""
    from databricks.sdk import oauth

    now = Clock()

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return now.now if tz is not None else now.now.replace(tzinfo=None)

    monkeypatch.setattr(oauth, "datetime", FrozenDatetime)
    return now


def bearer(call: Any) -> str:
    return str(call.headers.get("Authorization", ""))


# -- databricks-sdk ------------------------------------------------------------------------------------


def test_the_scope_is_the_azure_databricks_application():
    assert f"{AZURE_DATABRICKS_APP}/.default" == DATABRICKS_SCOPE


def test_the_sdks_own_client_sends_the_managed_identity_token(fake: FakeDatabricks):
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    credential = StubCredential()
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    client = WorkspaceClient(config=Config(host=fake.url, credentials_strategy=ManagedIdentityStrategy(credential)))

    assert client.jobs.get_run(RUN).run_id == RUN
    assert client.config.auth_type == "azure-msi"
    (call,) = fake.sent("GET", RUNS_GET)
    assert bearer(call) == f"Bearer {credential.issued[0]}"
    assert credential.scopes == [(f"{AZURE_DATABRICKS_APP}/.default",)]  # one token, cached


def test_without_a_token_the_adapters_sign_in_with_the_managed_identity(fake: FakeDatabricks):
    credential = StubCredential()
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN, "number_in_job": RUN}))
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {"iris-classifier-1": 100})))

    compute = DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)
    assert compute.launch(job_request()) == str(RUN)
    serving = DatabricksServing(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)
    current = serving.current(ENDPOINT)

    assert current is not None and current.version == "1"
    sent = [bearer(c) for c in fake.calls if c.path.startswith("/api/")]
    assert sent == [f"Bearer {credential.issued[0]}", f"Bearer {credential.issued[1]}"]  # one identity per client


def test_the_token_is_cached_then_refreshed_before_it_expires(fake: FakeDatabricks, clock: Clock):
    credential = StubCredential(clock, lifetime=3600)
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    compute = DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)

    compute.status(str(RUN))
    compute.status(str(RUN))
    clock.advance(3600 - 30)  # within the 40 s Databricks refuses: the SDK must renew
    compute.status(str(RUN))
    compute.status(str(RUN))

    sent = [bearer(c) for c in fake.sent("GET", RUNS_GET)]
    first, second = credential.issued
    assert sent == [f"Bearer {first}", f"Bearer {first}", f"Bearer {second}", f"Bearer {second}"]


def test_a_token_in_the_environment_wins_over_the_managed_identity(
    fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-from-the-app-settings-0123")
    credential = StubCredential()
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1).status(str(RUN))
    assert bearer(fake.sent("GET", RUNS_GET)[0]) == "Bearer dapi-from-the-app-settings-0123"
    assert credential.scopes == []


def test_auth_type_azure_msi_skips_the_sdks_chain(fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABRICKS_AUTH_TYPE", "azure-msi")
    credential = StubCredential()
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1).status(str(RUN))
    assert bearer(fake.sent("GET", RUNS_GET)[0]) == f"Bearer {credential.issued[0]}"


def test_the_workspace_resource_id_adds_the_management_token(fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch):
    resource = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Databricks/workspaces/ws"
    monkeypatch.setenv("DATABRICKS_AZURE_RESOURCE_ID", resource)
    credential = StubCredential()
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1).status(str(RUN))
    (call,) = fake.sent("GET", RUNS_GET)
    assert call.headers["X-Databricks-Azure-Workspace-Resource-Id"] == resource
    assert call.headers["X-Databricks-Azure-SP-Management-Token"] in credential.issued
    assert {s for (s,) in credential.scopes} == {DATABRICKS_SCOPE, "https://management.core.windows.net/.default"}


def test_no_managed_identity_is_a_permanent_error_saying_what_to_set(fake: FakeDatabricks):
    compute = DatabricksCompute(host=fake.url, azure_credential=UnavailableCredential(), retry_timeout_seconds=1)
    with pytest.raises(PermanentError, match="no Azure managed identity token") as raised:
        compute.status(str(RUN))
    assert "DATABRICKS_TOKEN" in str(raised.value) and "AZURE_CLIENT_ID" in str(raised.value)
    assert fake.sent("GET", RUNS_GET) == []


def test_the_token_never_reaches_logs_or_error_texts(fake: FakeDatabricks, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)  # the SDK's request logs included
    credential = StubCredential()
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN, "number_in_job": RUN}))
    fake.reply("GET", RUNS_GET, error(403, "PERMISSION_DENIED", "no access to run 456"))
    compute = DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)

    compute.launch(job_request())
    with pytest.raises(PermanentError) as raised:
        compute.status(str(RUN))

    (token,) = credential.issued
    assert bearer(fake.sent("POST", RUN_NOW)[0]) == f"Bearer {token}"  # it was used
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert token not in logged and token[-12:] not in logged
    assert token not in str(raised.value) and token not in str(raised.value.__cause__)


def test_a_token_echoed_by_the_server_is_scrubbed_from_the_error(fake: FakeDatabricks):
    credential = StubCredential()

    def echo(call: Any) -> Any:
        # A proxy that echoes the request's credentials into its error.
        return 403, {"error_code": "PERMISSION_DENIED", "message": f"denied for {bearer(call)}"}

    fake.reply("GET", RUNS_GET, echo)
    compute = DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)
    with pytest.raises(PermanentError) as raised:
        compute.status(str(RUN))
    (token,) = credential.issued
    assert token not in str(raised.value) and "denied for Bearer ***" in str(raised.value)


# -- azure-identity's own ManagedIdentityCredential --------------------------------------------------


class AppServiceIdentity:
    """The App Service / Functions identity endpoint: GET ?api-version=2019-08-01&resource=…&client_id=…"""

    def __init__(self) -> None:
        self.header = secrets.token_hex(16)
        self.requests: list[dict[str, str]] = []
        self.tokens: list[str] = []
        identity = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                identity.requests.append({**query, "header": self.headers.get("X-IDENTITY-HEADER", "")})
                if self.headers.get("X-IDENTITY-HEADER") != identity.header:
                    status, body = 401, {"error": "invalid header"}
                else:
                    token = f"eyJ0eXAi.app-service-{secrets.token_hex(12)}"
                    identity.tokens.append(token)
                    status, body = (
                        200,
                        {
                            "access_token": token,
                            "expires_on": str(int(time.time()) + 3600),
                            "resource": query.get("resource", ""),
                            "token_type": "Bearer",
                            "client_id": query.get("client_id", ""),
                        },
                    )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_service_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppServiceIdentity]:
    identity = AppServiceIdentity()
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url)
    monkeypatch.setenv("IDENTITY_HEADER", identity.header)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    yield identity
    identity.close()


def test_on_functions_the_user_assigned_identity_signs_in(
    fake: FakeDatabricks, app_service_identity: AppServiceIdentity
):
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {"iris-classifier-1": 100})))

    serving = DatabricksServing(host=fake.url, retry_timeout_seconds=1)  # no token, no credential given
    assert serving.current(ENDPOINT) is not None

    (asked,) = app_service_identity.requests
    assert asked["resource"] == AZURE_DATABRICKS_APP and asked["client_id"] == CLIENT_ID
    assert asked["api-version"] == "2019-08-01"
    (call,) = fake.sent("GET", GET_ENDPOINT)
    assert bearer(call) == f"Bearer {app_service_identity.tokens[0]}"


# -- MLflow --------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's dynamic token provider slot and MLFLOW_ENABLE_DB_SDK come back as they were."""
    from mlflow.utils import databricks_utils

    monkeypatch.setattr(databricks_utils, "_dynamic_token_config_provider", None)
    monkeypatch.delenv("MLFLOW_ENABLE_DB_SDK", raising=False)  # install sets it; this puts it back


@pytest.fixture
def uc_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[DatabricksRest]:
    for name in ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    with DatabricksRest("not-yet", unity_catalog=True).running() as server:
        monkeypatch.setenv("DATABRICKS_HOST", server.url)
        yield server


def test_mlflow_databricks_uris_sign_in_with_the_managed_identity(
    uc_server: DatabricksRest, mlflow_slot: None, clock: Clock
):
    from mlflow import MlflowClient
    from mlflow.utils.databricks_utils import get_databricks_host_creds

    credential = StubCredential(clock)
    uc_server.add_version("main.ml.iris", {"signalbox.stage": "production"})
    install_managed_identity(credential=credential)

    creds = get_databricks_host_creds("databricks-uc")  # MLflow's own resolution
    assert creds.host == uc_server.url and creds.token == credential.issued[0]
    uc_server.token = credential.issued[0]  # the workspace accepts this identity's token

    client = MlflowClient(tracking_uri="databricks", registry_uri="databricks-uc")
    version = client.get_model_version("main.ml.iris", "1")
    assert version.tags == {"signalbox.stage": "production"}

    clock.advance(3600 - 30)  # the token nears its end: the next request carries a new one
    uc_server.token = "not-yet"
    with pytest.raises(Exception, match="Invalid access token"):
        client.get_model_version("main.ml.iris", "1")
    assert len(credential.issued) == 2
    uc_server.token = credential.issued[1]
    assert client.get_model_version("main.ml.iris", "1").version == "1"

    sent = [c.authorization for c in uc_server.api_calls()]
    assert sent == [
        f"Bearer {credential.issued[0]}",
        f"Bearer {credential.issued[1]}",
        f"Bearer {credential.issued[1]}",
    ]
    assert {s for (s,) in credential.scopes} == {DATABRICKS_SCOPE}


def test_mlflow_without_a_managed_identity_says_what_to_set(uc_server: DatabricksRest, mlflow_slot: None):
    from mlflow.utils.databricks_utils import get_databricks_host_creds

    install_managed_identity(credential=UnavailableCredential())
    with pytest.raises(PermanentError, match="set DATABRICKS_TOKEN"):
        get_databricks_host_creds("databricks-uc")
    assert uc_server.api_calls() == []


def test_mlflow_needs_the_workspace_host(monkeypatch: pytest.MonkeyPatch, mlflow_slot: None):
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    with pytest.raises(PermanentError, match="DATABRICKS_HOST"):
        install_managed_identity(credential=StubCredential())


def test_mlflow_installs_the_identity_only_where_one_is_there_and_no_credential_is_set(
    uc_server: DatabricksRest, mlflow_slot: None, monkeypatch: pytest.MonkeyPatch
):
    from mlflow.utils import databricks_utils

    assert not install_if_wanted("sqlite:///mlflow.db", None)  # not Databricks
    assert not install_if_wanted("databricks", "databricks-uc")  # a developer's machine: MLflow's own way
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token")
    assert not install_if_wanted("databricks", token="dapi-configured")
    # A token needs no SDK: MLflow's requests path, which honours MLFLOW_HTTP_REQUEST_TIMEOUT.
    assert os.environ.pop("MLFLOW_ENABLE_DB_SDK") == "false"
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-in-the-environment")
    assert not install_if_wanted("databricks-uc")
    assert os.environ.pop("MLFLOW_ENABLE_DB_SDK") == "false"
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "oauth-m2m-secret")  # OAuth M2M: the SDK's to sign in
    assert not install_if_wanted("databricks-uc")
    assert "MLFLOW_ENABLE_DB_SDK" not in os.environ
    monkeypatch.delenv("DATABRICKS_CLIENT_SECRET")
    monkeypatch.delenv("DATABRICKS_TOKEN")
    assert databricks_utils._dynamic_token_config_provider is None

    assert install_if_wanted("file:///tmp/mlruns", "databricks-uc")
    assert databricks_utils._dynamic_token_config_provider is not None
    assert os.environ["MLFLOW_ENABLE_DB_SDK"] == "false"


def test_with_a_token_mlflow_requests_end_at_mlflows_http_timeout(
    uc_server: DatabricksRest, mlflow_slot: None, monkeypatch: pytest.MonkeyPatch
):
    """Not the Databricks SDK's 60 s: a slow answer is cut at MLFLOW_HTTP_REQUEST_TIMEOUT and is transient."""
    from shared.adapters.mlflow.registry import MlflowRegistry

    uc_server.token = "dapi-token-for-timeouts"
    monkeypatch.setenv("DATABRICKS_TOKEN", uc_server.token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert not install_if_wanted("databricks-uc")
    version = uc_server.add_version("main.signalbox.churn")
    registry = MlflowRegistry("databricks", "databricks-uc")
    assert registry.get_version("main.signalbox.churn", version).version == version
    # The same good answer, three seconds late: it must not be waited for.
    answer = {
        "model_version": uc_server._version_json(uc_server._version("main.signalbox.churn", version), with_tags=True)
    }
    uc_server.fail("/api/2.0/mlflow/unity-catalog/model-versions/get", 200, json.dumps(answer), delay=3)
    with pytest.raises(TransientError, match=r"(?i)timed? ?out"):
        registry.get_version("main.signalbox.churn", version)


def test_on_functions_mlflow_signs_in_with_the_user_assigned_identity(
    uc_server: DatabricksRest, mlflow_slot: None, app_service_identity: AppServiceIdentity
):
    from mlflow import MlflowClient

    uc_server.add_version("main.ml.iris", {"signalbox.stage": "staged"})
    assert install_if_wanted("databricks", "databricks-uc", host=uc_server.url)

    client = MlflowClient(tracking_uri="databricks", registry_uri="databricks-uc")
    with pytest.raises(Exception, match="Invalid access token"):
        client.get_model_version("main.ml.iris", "1")  # the workspace does not know this identity yet
    (token,) = app_service_identity.tokens
    uc_server.token = token  # the identity is added to the workspace
    assert client.get_model_version("main.ml.iris", "1").tags == {"signalbox.stage": "staged"}

    (asked,) = app_service_identity.requests  # one token, cached across both requests
    assert asked["resource"] == AZURE_DATABRICKS_APP and asked["client_id"] == CLIENT_ID
    assert [c.authorization for c in uc_server.api_calls()] == [f"Bearer {token}"] * 2


def test_a_failing_identity_endpoint_is_transient_and_the_next_call_signs_in(fake: FakeDatabricks):
    from azure.core.exceptions import ServiceRequestError

    class Flaky(StubCredential):
        failures = 1

        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            if self.failures:
                self.failures -= 1
                raise ServiceRequestError("Connection refused by the identity endpoint")
            return super().get_token(*scopes, **kwargs)

    credential = Flaky()
    fake.reply("GET", RUNS_GET, (200, run("RUNNING")))
    compute = DatabricksCompute(host=fake.url, azure_credential=credential, retry_timeout_seconds=1)
    with pytest.raises(TransientError, match="managed identity endpoint failed: ServiceRequestError"):
        compute.status(str(RUN))
    assert compute.status(str(RUN)).state == "running"
    assert bearer(fake.sent("GET", RUNS_GET)[0]) == f"Bearer {credential.issued[0]}"
