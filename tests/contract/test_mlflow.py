"""The MLflow adapters against a real ``mlflow server`` (SQL store) and real webhook deliveries."""

from __future__ import annotations

import os
import queue
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.net import free_port
from shared.adapters.mlflow.registry import MlflowRegistry
from shared.errors import TransientError, UnknownVersion
from shared.webhooks import WebhookRejected, parse_mlflow, verify_mlflow
from signalbox.mlflow_server import (
    MlflowServer,
    MlflowServerError,
    ensure_model_version_webhook,
    webhook_encryption_key,
)

REPO = Path(__file__).resolve().parents[2]

MODEL = "churn"
SECRET = "contract-webhook-secret"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        began = time.monotonic()
        with MlflowServer(tmp_path_factory.mktemp("mlflow-state")) as running:
            print(f"\nmlflow server started in {time.monotonic() - began:.1f} s", file=sys.stderr)
            yield running


@pytest.fixture(scope="session")
def client(server: MlflowServer) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


@pytest.fixture(scope="session")
def trained(server: MlflowServer, client: Any) -> tuple[str, str]:
    """A tiny scikit-learn model logged and registered as version 1 of MODEL: (run id, version)."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 3))
    labels = (features[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(features, labels)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    try:
        experiment_id = client.create_experiment("contract")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=MODEL, pip_requirements=["scikit-learn"]
            )
    finally:
        mlflow.set_tracking_uri(previous)
    return run.info.run_id, str(info.registered_model_version)


@pytest.fixture(scope="session")
def registry(server: MlflowServer) -> MlflowRegistry:
    return MlflowRegistry(server.url)


# -- the server --------------------------------------------------------------------------------


def test_server_answers_and_exposes_its_process(server: MlflowServer) -> None:
    import urllib.request

    assert server.running and isinstance(server.pid, int)
    assert server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
        assert response.status == 200
    server.start()  # already running: nothing happens
    assert server.log_path.is_file()
    assert (server.state_dir / "mlflow.db").is_file()


def test_encryption_key_is_created_once_private(tmp_path: Path) -> None:
    key = webhook_encryption_key(tmp_path)
    assert webhook_encryption_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "mlflow-webhook.key").stat().st_mode) == 0o600
    (tmp_path / "mlflow-webhook.key").write_text("not a key")
    with pytest.raises(MlflowServerError, match="Fernet"):
        webhook_encryption_key(tmp_path)


def test_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doomed = MlflowServer(tmp_path, port=port)
        with pytest.raises(MlflowServerError) as error:
            doomed.start(timeout=60)
    assert "exited with code" in str(error.value)
    assert "address already in use" in str(error.value).lower()
    assert not doomed.running and doomed.pid is None


# -- the registry adapter ------------------------------------------------------------------------


def test_get_version(registry: MlflowRegistry, trained: tuple[str, str]) -> None:
    run_id, version = trained
    found = registry.get_version(MODEL, version)
    assert (found.model_name, found.version, found.run_id, found.status) == (MODEL, version, run_id, "READY")
    assert found.source
    assert found.tags == {} and found.aliases == ()
    assert found.created_at is not None and found.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - found.created_at) < timedelta(minutes=5)


@pytest.mark.parametrize(("name", "version"), [(MODEL, "999"), ("no-such-model", "1"), (MODEL, "latest")])
def test_get_missing_version_raises_lookup_error(
    registry: MlflowRegistry, trained: tuple[str, str], name: str, version: str
) -> None:
    with pytest.raises(UnknownVersion, match=f"model {name} version {version} is not registered") as raised:
        registry.get_version(name, version)
    assert isinstance(raised.value, LookupError)  # callers catching LookupError keep working


def test_an_unreachable_server_is_transient_within_the_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.databricks_rest import isolate_mlflow_http_env

    isolate_mlflow_http_env(monkeypatch)  # the adapter's bounded defaults, not another test's values
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TransientError, match="MLflow registry get_version"):
        MlflowRegistry(f"http://127.0.0.1:{port}").get_version(MODEL, "1")
    # MLflow's defaults (7 retries, backoff factor 2) would wait minutes; the bounded ones seconds.
    assert time.monotonic() - started < 10


def test_list_versions_oldest_first_in_numeric_order(
    registry: MlflowRegistry, client: Any, trained: tuple[str, str]
) -> None:
    run_id, _ = trained
    name = "many-versions"
    client.create_registered_model(name)
    for _ in range(11):
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    versions = registry.list_versions(name)
    assert [v.version for v in versions] == [str(n) for n in range(1, 12)]
    assert registry.list_versions("no-such-model") == []
    for odd in ("it's", 'say "hi"', 'it\'s "both"'):
        assert registry.list_versions(odd) == []
    # No filter can quote a name holding both quotes; the adapter still finds its versions.
    client.create_registered_model('it\'s "both"')
    client.create_model_version('it\'s "both"', source=f"runs:/{run_id}/model", run_id=run_id)
    assert [v.version for v in registry.list_versions('it\'s "both"')] == ["1"]


def test_versions_with_tag_is_a_tag_filtered_search(
    registry: MlflowRegistry, client: Any, trained: tuple[str, str]
) -> None:
    run_id, _ = trained
    name = "stage-search"
    client.create_registered_model(name)
    for number in range(1, 5):
        tags = {"stage": "staged" if number in (2, 4) else "surpassed", "signalbox.note": 'it\'s "x"'}
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    registry.set_alias(name, "challenger", "4")
    found = registry.versions_with_tag(name, "stage", "staged")
    assert [(v.version, v.aliases) for v in found] == [("2", ()), ("4", ("challenger",))]
    assert found[1].tags["stage"] == "staged"
    assert registry.versions_with_tag(name, "stage", "production") == []
    # A value no filter can quote is matched by listing instead.
    assert [v.version for v in registry.versions_with_tag(name, "signalbox.note", 'it\'s "x"')] == ["1", "2", "3", "4"]
    assert registry.versions_with_tag("no-such-model", "stage", "staged") == []


def test_versions_of_run(registry: MlflowRegistry, trained: tuple[str, str]) -> None:
    run_id, version = trained
    assert [(v.model_name, v.version) for v in registry.versions_of_run(run_id) if v.model_name == MODEL] == [
        (MODEL, version)
    ]
    assert registry.versions_of_run("0" * 32) == []
    with pytest.raises(ValueError, match="not a run id"):
        registry.versions_of_run("x' OR name='churn")


def test_version_tags(registry: MlflowRegistry, trained: tuple[str, str]) -> None:
    _, version = trained
    registry.set_version_tags(MODEL, version, {"stage": "staged", "commit": "abc"})
    registry.set_version_tags(MODEL, version, {"stage": "production"})
    assert registry.get_version(MODEL, version).tags == {"stage": "production", "commit": "abc"}
    registry.delete_version_tag(MODEL, version, "commit")
    registry.delete_version_tag(MODEL, version, "commit")  # absent: no error
    assert registry.get_version(MODEL, version).tags == {"stage": "production"}
    with pytest.raises(LookupError):
        registry.delete_version_tag(MODEL, "999", "stage")
    with pytest.raises(LookupError, match="model no-such-model version 1 is not registered"):
        registry.set_version_tags("no-such-model", "1", {"stage": "staged"})


def test_aliases(registry: MlflowRegistry, trained: tuple[str, str]) -> None:
    _, version = trained
    assert registry.alias_version(MODEL, "champion") is None
    registry.set_alias(MODEL, "champion", version)
    assert registry.alias_version(MODEL, "champion") == version
    assert "champion" in registry.get_version(MODEL, version).aliases
    assert "champion" in next(v for v in registry.list_versions(MODEL) if v.version == version).aliases
    registry.delete_alias(MODEL, "champion")
    registry.delete_alias(MODEL, "champion")  # absent: no error
    assert registry.alias_version(MODEL, "champion") is None
    assert registry.alias_version("no-such-model", "champion") is None
    registry.delete_alias("no-such-model", "champion")
    with pytest.raises(LookupError):
        registry.set_alias(MODEL, "champion", "999")


def test_model_tags(registry: MlflowRegistry) -> None:
    assert registry.model_tags("tagged-model") == {}
    registry.set_model_tag("tagged-model", "owner", "ml-team")  # creates the model
    registry.set_model_tag("tagged-model", "tier", "gold")
    assert registry.model_tags("tagged-model") == {"owner": "ml-team", "tier": "gold"}
    registry.ensure_model("tagged-model")  # exists: nothing changes
    registry.ensure_model("fresh-model")
    assert registry.list_versions("fresh-model") == [] and registry.model_tags("fresh-model") == {}


# -- webhooks ------------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    deliveries: queue.Queue[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.deliveries.put((dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[dict[str, str], bytes]]]]:
    deliveries: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
    handler = type("Recorder", (_Recorder,), {"deliveries": deliveries})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hooks/mlflow", deliveries
    finally:
        httpd.shutdown()
        httpd.server_close()


def _await_delivery(
    deliveries: queue.Queue[tuple[dict[str, str], bytes]], model: str, version: str, timeout: float
) -> tuple[dict[str, str], bytes] | None:
    """The delivery announcing that version, if it comes within the timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            headers, body = deliveries.get(timeout=left)
        except queue.Empty:
            return None
        event = parse_mlflow(body, "probe")
        if (event.model_name, event.version) == (model, version):
            return headers, body
    return None


def test_model_version_created_webhook_is_delivered_and_verifies(
    server: MlflowServer, client: Any, trained: tuple[str, str], receiver: tuple[str, Any]
) -> None:
    run_id, _ = trained
    url, deliveries = receiver
    hook_id = ensure_model_version_webhook(server.url, "signalbox-contract", url + "?old=1", "old-secret")
    assert ensure_model_version_webhook(server.url, "signalbox-contract", url, SECRET) == hook_id
    hooks = [h for h in client.list_webhooks() if h.name == "signalbox-contract"]
    assert [(h.webhook_id, h.url, [str(e) for e in h.events]) for h in hooks] == [
        (hook_id, url, ["model_version.created"])
    ]

    name = "webhooked"
    client.create_registered_model(name)
    try:
        # The server caches its webhook list for a second, so a version created right after the
        # hook may go unannounced: register again until one is delivered.
        delivered = None
        deadline = time.monotonic() + 30
        while delivered is None and time.monotonic() < deadline:
            version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id).version
            delivered = _await_delivery(deliveries, name, str(version), timeout=2.5)
        assert delivered is not None, "MLflow delivered no model_version.created webhook within 30 s"
        headers, body = delivered

        delivery_id = verify_mlflow(headers, body, SECRET, now=time.time())
        assert delivery_id == headers["X-MLflow-Delivery-Id"]
        event = parse_mlflow(body, delivery_id)
        assert (event.entity, event.action, event.model_name, event.version, event.run_id) == (
            "model_version",
            "created",
            name,
            str(version),
            run_id,
        )
        with pytest.raises(WebhookRejected) as rejected:
            verify_mlflow(headers, body, "wrong-secret", now=time.time())
        assert rejected.value.status == 401
        with pytest.raises(WebhookRejected):
            verify_mlflow(headers, body, SECRET, now=time.time() + 3600)

        # A version registered from a logged model, outside any run, announces run_id null.
        logged = client.create_logged_model(client.create_experiment("runless"))
        runless = client.create_model_version(
            name, source=f"models:/{logged.model_id}", run_id=None, model_id=logged.model_id
        ).version
        delivered = _await_delivery(deliveries, name, str(runless), timeout=15)
        assert delivered is not None
        headers, body = delivered
        event = parse_mlflow(body, verify_mlflow(headers, body, SECRET, now=time.time()))
        assert event.version == str(runless) and event.run_id is None
    finally:
        client.delete_webhook(hook_id)


def test_environment_is_not_leaked_into_this_process() -> None:
    # The server gets its webhook settings through its own environment only.
    assert "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY" not in os.environ


def test_restart_keeps_url_and_can_still_use_stored_webhook_secrets(
    server: MlflowServer, client: Any, receiver: tuple[str, Any]
) -> None:
    url, deliveries = receiver
    hook_id = ensure_model_version_webhook(server.url, "survives-restart", url, SECRET)
    before, old_pid = server.url, server.pid
    server.stop()
    assert not server.running and server.pid is None
    server.start()
    assert server.url == before and server.pid != old_pid
    try:
        # Sending a test event decrypts the stored secret: only the persisted key can do that.
        result = client.test_webhook(hook_id)
        assert result.success, result.error_message
        headers, body = deliveries.get(timeout=10)
        event = parse_mlflow(body, verify_mlflow(headers, body, SECRET, now=time.time()))
        assert (event.entity, event.action) == ("model_version", "created")
    finally:
        client.delete_webhook(hook_id)


def test_model_tags_on_the_sql_store_do_not_read_the_versions(tmp_path: Path) -> None:
    registry = MlflowRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert registry.model_tags("unknown") == {}
    registry.set_model_tag("sql-model", "signalbox.hold", "on")
    registry.set_model_tag("sql-model", "owner", "ml-team")
    assert registry.model_tags("sql-model") == {"signalbox.hold": "on", "owner": "ml-team"}
    # The same answer as MLflow's own read, which builds every version too.
    assert registry.model_tags("sql-model") == dict(registry._client.get_registered_model("sql-model").tags)
