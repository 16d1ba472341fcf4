"""The chaos run's fake workspace, driven by the real Databricks adapters and MLflow clients.

``signalbox.chaos.workspace`` stands in for Databricks Jobs and Model Serving and proxies a real
``mlflow server``; these tests check that the real adapters (through databricks-sdk) see the
API they expect, that a run trains and registers exactly one version, that idempotency tokens
hold when answers are lost, and that each injected fault reaches the adapters as a
``TransientError``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.adapters.databricks.compute import DatabricksCompute, retry_key
from shared.adapters.databricks.serving import DatabricksServing
from shared.adapters.local.net import free_port
from shared.adapters.mlflow.evaluator import MlflowEvaluator
from shared.errors import PermanentError, TransientError
from shared.ports import Deployment, JobRequest, RunStatus, ScoringFrame
from signalbox.chaos.synthetic import coefficient
from signalbox.chaos.workspace import Workspace, quality_of
from signalbox.mlflow_server import MlflowServer

TOKEN = "dapi-chaos-contract-0123456789"
MODEL = "chaos-contract"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient Databricks, MLflow or proxy configuration reaches the clients."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "MLFLOW_")) or name.lower() in ("http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        with MlflowServer(tmp_path_factory.mktemp("chaos-mlflow")) as running:
            yield running


def make_workspace(server: MlflowServer, **options: Any) -> Workspace:
    settings: dict[str, Any] = {
        "job_seconds": 0.3,
        "update_seconds": 0.2,
        "stall_seconds": 0.6,
        "seed": 5,
        "token": TOKEN,
    }
    settings.update(options)
    return Workspace(server.url, **settings)


@pytest.fixture
def workspace(mlflow_server: MlflowServer) -> Iterator[Workspace]:
    with make_workspace(mlflow_server) as running:
        yield running


def compute_for(workspace: Workspace) -> DatabricksCompute:
    # A short retry budget and call timeout: an injected failure surfaces within seconds.
    return DatabricksCompute(host=workspace.url, token=TOKEN, retry_timeout_seconds=1, http_timeout_seconds=0.3)


def serving_for(workspace: Workspace) -> DatabricksServing:
    return DatabricksServing(host=workspace.url, token=TOKEN, retry_timeout_seconds=1, http_timeout_seconds=0.3)


def job(key: str, *, quality: int | None = 57, model: str = MODEL, reference: str = "chaos-train") -> JobRequest:
    return JobRequest(
        model_name=model,
        purpose="train",
        job_reference=reference,
        data_uri=f"file:///landing/{model}/lc-{key}-q{quality:03d}.csv" if quality is not None else None,
        parameters={"alpha": "0.5"},
        tags={"signalbox.correlation_id": f"corr-{key}", "signalbox.environment": "dev", "signalbox.reason": "landing"},
        idempotency_key=f"msg-{key}",
    )


def until_finished(compute: DatabricksCompute, run_id: str, timeout: float = 30) -> RunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = compute.status(run_id)
        if status.finished:
            return status
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


def trained_version(workspace: Workspace, key: str, quality: int, model: str = MODEL) -> str:
    compute = compute_for(workspace)
    status = until_finished(compute, compute.launch(job(key, quality=quality, model=model)))
    assert status.state == "succeeded", status
    return status.outputs["model_version"]


# -- jobs ------------------------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_launches_one_run(workspace: Workspace):
    compute = compute_for(workspace)

    first = compute.launch(job("0001"))
    again = compute.launch(job("0001"))
    other = compute.launch(job("0002"))

    assert first == again != other
    runs = workspace.runs()
    assert [r["idempotency_token"] for r in runs] == ["msg-0001", "msg-0002"]
    assert runs[0]["parameters"] == {
        "alpha": "0.5",
        "model_name": MODEL,
        "data_uri": f"file:///landing/{MODEL}/lc-0001-q057.csv",
        "signalbox.correlation_id": "corr-0001",
        "signalbox.environment": "dev",
        "signalbox.reason": "landing",
    }
    assert runs[0]["tags"] == {
        "signalbox.correlation_id": "corr-0001",
        "signalbox.environment": "dev",
        "signalbox.reason": "landing",
    }
    assert workspace.run_now_calls() == {"count": 3, "received": 3, "launched": 2}
    assert compute.status(first).state in ("pending", "running")


def test_a_wrong_token_is_refused(workspace: Workspace):
    stranger = DatabricksCompute(host=workspace.url, token="dapi-someone-else", retry_timeout_seconds=1)
    with pytest.raises(PermanentError, match="rejected the credentials"):
        stranger.launch(job("0001"))
    assert workspace.runs() == []


def test_a_run_trains_and_registers_exactly_one_version_with_the_jobs_tags(
    workspace: Workspace, mlflow_server: MlflowServer, tmp_path: Path
):
    from mlflow import MlflowClient

    compute = compute_for(workspace)
    run_id = compute.launch(job("0003", quality=80))
    assert compute.status(run_id).state == "pending"
    time.sleep(0.35)  # past the job's 0.3 s: the next reads start the training
    statuses: list[RunStatus] = []
    readers = [threading.Thread(target=lambda: statuses.append(until_finished(compute, run_id))) for _ in range(6)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()

    assert {s.state for s in statuses} == {"succeeded"}
    outputs = statuses[0].outputs
    assert set(outputs) == {"mlflow_run_id", "model_version", "databricks_run_id"}
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    mine = [v for v in versions if v.run_id == outputs["mlflow_run_id"]]
    assert [v.version for v in mine] == [outputs["model_version"]]  # once, though six readers raced
    assert mine[0].tags == {
        "signalbox.correlation_id": "corr-0003",
        "signalbox.environment": "dev",
        "signalbox.reason": "landing",
    }
    run = client.get_run(outputs["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "chaos"
    assert run.data.params["quality"] == "80" and run.data.params["alpha"] == "0.5"
    assert run.data.tags["signalbox.correlation_id"] == "corr-0003"
    (record,) = [r for r in workspace.runs() if str(r["run_id"]) == run_id]
    assert (record["state"], record["model_version"], record["quality"]) == ("SUCCESS", outputs["model_version"], 80)

    # The host's evaluator scores it through the proxy: rmse of (coef - 2) * x on x = 1..4.
    dataset = tmp_path / "evaluation.csv"
    dataset.write_text("x,target\n1,2\n2,4\n3,6\n4,8\n", encoding="utf-8")
    scores = MlflowEvaluator(workspace.url).score(MODEL, outputs["model_version"], str(dataset), ["rmse"])
    expected = (coefficient(80) - 2) * (sum(x * x for x in range(1, 5)) / 4) ** 0.5
    assert scores["rmse"] == pytest.approx(expected)


def test_the_registered_model_loads_in_another_process(workspace: Workspace, tmp_path: Path):
    version = trained_version(workspace, "0004", quality=0)
    script = (
        "import mlflow.pyfunc, pandas as pd, sys\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}/{version}')\n"
        "print(list(model.predict(pd.DataFrame({'x': [1, 2.5]}))))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": workspace.url}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[3.0, 7.5]"  # quality 0: coef 3


def test_a_run_without_a_quality_in_its_data_draws_one_and_cancel_stops_a_run(workspace: Workspace):
    compute = compute_for(workspace)
    drawn = compute.launch(job("0005", quality=None))
    cancelled = compute.launch(job("0006"))

    compute.cancel(cancelled)

    assert until_finished(compute, cancelled).state == "cancelled"
    assert until_finished(compute, drawn).state == "succeeded"
    by_id = {str(r["run_id"]): r for r in workspace.runs()}
    assert by_id[cancelled]["state"] == "CANCELED" and by_id[cancelled]["model_version"] is None
    assert 0 <= by_id[drawn]["quality"] <= 100
    assert quality_of("abfss://landing@a.dfs.core.windows.net/m03/lc-0042-q57.csv", lambda: -1) == 57
    assert quality_of("file:///squad/eq/data.csv", lambda: 42) == 42


# -- serving -----------------------------------------------------------------------------------------------


def test_blue_green_over_the_serving_api(workspace: Workspace):
    serving = serving_for(workspace)
    blue = trained_version(workspace, "0007", quality=90, model="chaos-serve")
    green = trained_version(workspace, "0008", quality=100, model="chaos-serve")
    payload = ScoringFrame(("x",), ((1.0,), (2.0,), (3.0,)))

    first = serving.start("chaos-serve", "chaos-serve", blue)
    assert serving.readiness(first).state == "pending"
    assert wait_ready(serving, first)
    assert serving.invoke(first, payload) == {"predictions": pytest.approx([2.1, 4.2, 6.3])}
    assert serving.current("chaos-serve") == Deployment(
        "chaos-serve", "chaos-serve", blue, f"chaos-serve-{blue}", serving.endpoint_url("chaos-serve")
    )

    second = serving.start("chaos-serve", "chaos-serve", green)
    assert serving.start("chaos-serve", "chaos-serve", green) == second  # a redelivery: already on its way
    with pytest.raises(TransientError, match="another config update"):
        serving.start("chaos-serve", "chaos-serve", "99")
    assert wait_ready(serving, second)
    assert workspace.endpoints()["chaos-serve"]["routes"] == {f"chaos-serve-{blue}": 100, f"chaos-serve-{green}": 0}
    assert serving.invoke(second, payload) == {"predictions": [2.0, 4.0, 6.0]}

    serving.route("chaos-serve", second)
    settle(workspace, "chaos-serve")
    serving.stop(first)
    settle(workspace, "chaos-serve")

    state = workspace.endpoints()["chaos-serve"]
    assert state["routes"] == {f"chaos-serve-{green}": 100}
    assert state["serving_version"] == green
    assert state["entities"][f"chaos-serve-{green}"]["invocations"] == 1
    stable = requests.post(
        serving.endpoint_url("chaos-serve"),
        json=payload.dataframe_split(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert stable.json() == {"predictions": [2.0, 4.0, 6.0]}

    serving.stop(second)  # its only entity: the endpoint goes
    assert "chaos-serve" not in workspace.endpoints()
    assert serving.current("chaos-serve") is None


def wait_ready(serving: DatabricksServing, deployment: Deployment, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving.readiness(deployment).state == "ready":
            return True
        time.sleep(0.05)
    return False


def settle(workspace: Workspace, endpoint: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while workspace.endpoints()[endpoint]["config_update"] == "IN_PROGRESS":
        assert time.monotonic() < deadline, "the config update never applied"
        time.sleep(0.05)


# -- faults -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "says"), [("429", "throttled"), ("500", None), ("502", None), ("503", None)])
def test_every_injected_error_reaches_the_adapters_as_transient(
    mlflow_server: MlflowServer, kind: str, says: str | None
):
    with make_workspace(mlflow_server, fault_rate=1.0, fault_kinds=[kind]) as workspace:
        compute, serving = compute_for(workspace), serving_for(workspace)
        began = time.monotonic()
        with pytest.raises(TransientError, match=says):
            compute.launch(job("0009"))
        with pytest.raises(TransientError):
            serving.current("chaos-serve")
        assert time.monotonic() - began < 10
        faults = workspace.faults()
        assert faults["by_target"]["databricks"]["by_kind"][kind] == faults["total"] >= 2
        assert workspace.run_now_calls()["launched"] == 0


def test_a_lost_request_launches_nothing_and_a_lost_answer_keeps_its_one_run(mlflow_server: MlflowServer):
    with make_workspace(mlflow_server, fault_rate=1.0, fault_kinds=["stall_before"]) as workspace:
        with pytest.raises(TransientError):
            compute_for(workspace).launch(job("0010", reference="1"))
        assert workspace.run_now_calls()["launched"] == 0
        assert workspace.faults()["by_kind"]["stall_before"] >= 1

    with make_workspace(mlflow_server, fault_rate=1.0, fault_kinds=["stall_after"]) as workspace:
        compute = compute_for(workspace)
        with pytest.raises(TransientError):
            compute.launch(job("0011", reference="1"))  # the SDK retried with the same token: still one run
        calls = workspace.run_now_calls()
        assert calls["launched"] == 1 and calls["count"] >= 1
        workspace.set_fault_rate(0.0)
        again = compute.launch(job("0011", reference="1"))  # the redelivered command
        assert [str(r["run_id"]) for r in workspace.runs()] == [again]


# -- degrades: capacity failures and slow config updates -----------------------------------------------


def test_capacity_failures_are_retryable_and_a_relaunch_with_a_new_key_is_a_new_run(mlflow_server: MlflowServer):
    with make_workspace(
        mlflow_server, capacity_failure_rate=1.0, capacity_codes=["MAX_CONCURRENT_RUNS_EXCEEDED"]
    ) as workspace:
        compute = compute_for(workspace)
        request = job("0030", quality=80, model="chaos-capacity")
        first = compute.launch(request)
        status = until_finished(compute, first)
        assert status.state == "failed" and status.retryable
        assert status.message is not None and status.message.startswith("MAX_CONCURRENT_RUNS_EXCEEDED: Skipping")
        assert compute.launch(request) == first  # the same key names the failed run: nothing new

        second = compute.launch(replace(request, idempotency_key=retry_key(request.idempotency_key or "", 1)))
        assert second != first and until_finished(compute, second).retryable  # still no capacity

        workspace.set_degrades(capacity_failure_rate=0.0)  # capacity comes back
        third = compute.launch(replace(request, idempotency_key=retry_key(request.idempotency_key or "", 2)))
        done = until_finished(compute, third)
        assert done.state == "succeeded" and not done.retryable and done.outputs["model_version"] == "1"

        runs = {str(r["run_id"]): r for r in workspace.runs()}
        assert [runs[r]["termination_code"] for r in (first, second, third)] == [
            "MAX_CONCURRENT_RUNS_EXCEEDED",
            "MAX_CONCURRENT_RUNS_EXCEEDED",
            None,
        ]
        assert runs[first]["model_version"] is None  # nothing trained, nothing registered
        assert workspace.degrades()["capacity_failures"] == {"MAX_CONCURRENT_RUNS_EXCEEDED": 2}
        raw = requests.get(
            f"{workspace.url}/api/2.1/jobs/runs/get",
            params={"run_id": first},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        ).json()
        assert raw["state"]["life_cycle_state"] == "SKIPPED"  # the deprecated shape agrees
        assert raw["status"]["termination_details"]["type"] == "CLIENT_ERROR"


def test_a_cloud_failure_reads_as_one_through_both_run_shapes(mlflow_server: MlflowServer):
    with make_workspace(mlflow_server, capacity_failure_rate=1.0, capacity_codes=["CLOUD_FAILURE"]) as workspace:
        compute = compute_for(workspace)
        run_id = compute.launch(job("0031", model="chaos-capacity"))
        status = until_finished(compute, run_id)
        assert status.state == "failed" and status.retryable
        assert status.message is not None and status.message.startswith("CLOUD_FAILURE:")
        raw = requests.get(
            f"{workspace.url}/api/2.2/jobs/runs/get",
            params={"run_id": run_id},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        ).json()
        assert raw["status"]["termination_details"]["type"] == "CLOUD_FAILURE"
        assert (raw["state"]["life_cycle_state"], raw["state"]["result_state"]) == ("INTERNAL_ERROR", "FAILED")


def test_without_degrades_no_run_fails_for_capacity_and_updates_are_quick(workspace: Workspace):
    compute = compute_for(workspace)
    assert until_finished(compute, compute.launch(job("0032", model="chaos-capacity"))).state == "succeeded"
    degrades = workspace.degrades()
    assert degrades["capacity_failure_rate"] == 0.0 and sum(degrades["capacity_failures"].values()) == 0
    assert degrades["slow_updates"] == 0


def test_a_slow_update_keeps_the_old_entity_serving_refuses_changes_with_409_and_stop_waits(
    mlflow_server: MlflowServer,
):
    with make_workspace(mlflow_server, update_seconds=0.05, slow_update_rate=1.0, slow_update_seconds=1.5) as workspace:
        serving = serving_for(workspace)
        blue = trained_version(workspace, "0033", quality=90, model="chaos-slow")
        green = trained_version(workspace, "0034", quality=100, model="chaos-slow")
        first = serving.start("chaos-slow", "chaos-slow", blue)
        assert wait_ready(serving, first, timeout=5)
        second = serving.start("chaos-slow", "chaos-slow", green)
        assert wait_ready(serving, second, timeout=5)

        serving.route("chaos-slow", second)
        began = time.monotonic()
        # The routing update is slow: the old entity still takes all traffic, and may not go yet.
        with pytest.raises(TransientError, match="config update in progress and it routes traffic to"):
            serving.stop(second)
        with pytest.raises(TransientError, match=f"config update in progress; chaos-slow-{blue} is removed once"):
            serving.stop(first)
        state = workspace.endpoints()["chaos-slow"]
        assert state["config_update"] == "IN_PROGRESS" and state["serving_version"] == blue
        conflict = requests.put(
            f"{workspace.url}/api/2.0/serving-endpoints/chaos-slow/config",
            json={
                "served_entities": [
                    {"name": f"chaos-slow-{green}", "entity_name": "chaos-slow", "entity_version": green}
                ]
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert conflict.status_code == 409 and conflict.json()["error_code"] == "RESOURCE_CONFLICT"
        assert time.monotonic() - began < 1.5, "the checks above must run while the update is in progress"

        settle(workspace, "chaos-slow")
        serving.stop(first)  # a later check: now it goes
        settle(workspace, "chaos-slow")
        state = workspace.endpoints()["chaos-slow"]
        assert state["routes"] == {f"chaos-slow-{green}": 100} and list(state["entities"]) == [f"chaos-slow-{green}"]
        degrades = workspace.degrades()
        assert degrades["slow_updates"] == degrades["updates"] == 4  # create, add, route, remove


def test_degrade_options_are_checked_and_settable_over_http(mlflow_server: MlflowServer):
    with pytest.raises(ValueError, match="capacity codes must be some of"):
        make_workspace(mlflow_server, capacity_codes=["OUT_OF_CHEESE"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_workspace(mlflow_server, slow_update_rate=1.5)
    with make_workspace(mlflow_server) as workspace:
        answer = requests.post(
            f"{workspace.url}/chaos/degrades", json={"capacity_failure_rate": 0.5, "slow_update_rate": 0.25}, timeout=5
        )
        assert answer.status_code == 200
        assert (answer.json()["capacity_failure_rate"], answer.json()["slow_update_rate"]) == (0.5, 0.25)
        refused = requests.post(f"{workspace.url}/chaos/degrades", json={"slow_update_rate": 7}, timeout=5)
        assert refused.status_code == 400 and workspace.degrades()["slow_update_rate"] == 0.25


def test_the_mlflow_proxy_forwards_intact_and_fails_as_told(mlflow_server: MlflowServer, tmp_path: Path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with make_workspace(mlflow_server, fault_kinds=["503"]) as workspace:
        client = MlflowClient(tracking_uri=workspace.url, registry_uri=workspace.url)
        experiment = client.create_experiment("chaos-proxy")
        run = client.create_run(experiment, tags={"k": "v"})
        blob = tmp_path / "blob.bin"
        blob.write_bytes(bytes(range(256)) * 64)
        client.log_artifact(run.info.run_id, str(blob))
        copy = client.download_artifacts(run.info.run_id, "blob.bin", str(tmp_path / "down"))
        assert Path(copy).read_bytes() == blob.read_bytes()
        assert client.get_run(run.info.run_id).data.tags["k"] == "v"
        served = workspace.faults()["by_target"]["mlflow"]["requests"]
        assert served >= 5

        workspace.set_fault_rate(1.0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            with pytest.raises(MlflowException):
                client.get_run(run.info.run_id)
        assert workspace.faults()["by_target"]["mlflow"]["by_kind"]["503"] >= 1


def test_introspection_is_never_faulted_and_the_rate_changes_while_running(workspace: Workspace):
    workspace.set_fault_rate(1.0)
    for _ in range(5):
        assert requests.get(f"{workspace.url}/chaos/faults", timeout=5).status_code == 200
    with pytest.raises(TransientError):
        compute_for(workspace).launch(job("0012"))

    off = requests.post(f"{workspace.url}/chaos/faults", json={"rate": 0.0}, timeout=5)
    refused = requests.post(f"{workspace.url}/chaos/faults", json={"rate": 2}, timeout=5)

    assert off.status_code == 200 and off.json()["rate"] == 0.0
    assert refused.status_code == 400
    assert compute_for(workspace).launch(job("0012"))
    documents = {what: requests.get(f"{workspace.url}/chaos/{what}", timeout=5).json() for what in ("runs", "faults")}
    assert len(documents["runs"]) == 1
    assert documents["faults"]["total"] == sum(documents["faults"]["by_kind"].values()) >= 1
    assert documents["faults"]["requests"] > documents["faults"]["total"]


def test_the_command_line_serves_until_terminated():
    port = free_port()  # nothing listens there
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "signalbox.chaos.workspace", "--port", str(port)),
            *("--mlflow-url", "http://127.0.0.1:9", "--fault-rate", "0.25", "--seed", "3"),
            *("--job", "train-a", "--job", "train-b"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/chaos/faults", timeout=5).json()["rate"] == 0.25
        requests.post(f"{url}/chaos/faults", json={"rate": 0}, timeout=5).raise_for_status()
        compute = DatabricksCompute(host=url, token=TOKEN, retry_timeout_seconds=1)
        assert [compute._job_id(name) for name in ("train-a", "TRAIN-B")] == [1, 2]  # by exact name, any case
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


# -- the run's loss faults: the webhook relay and Event Grid's dead letters --------------------------


class _Host:
    """A stand-in for the host the relay forwards to: records what reaches it, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[str, dict[str, str], bytes]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host.received.append((self.path, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _webhook(version: str) -> bytes:
    import json

    body = {"entity": "model_version", "action": "created", "timestamp": "2026-12-06T05:00:00Z"}
    return json.dumps({**body, "data": {"name": MODEL, "version": version}}).encode()


def test_the_relay_forwards_a_webhook_unchanged_or_drops_it_for_good() -> None:
    from signalbox.chaos.run import WebhookRelay

    host = _Host(status=200)
    signed = {"X-MLflow-Signature": "v1,abc", "X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": "1765000000"}
    keep, lose = WebhookRelay(host, 0.0, seed=1), WebhookRelay(host, 1.0, seed=1)  # type: ignore[arg-type]
    for relay in (keep, lose):
        relay.start()
    try:
        answer = requests.post(keep.url, data=_webhook("3"), headers=signed, timeout=10)
        assert answer.status_code == 200
        [(path, headers, body)] = host.received
        assert path == "/api/webhooks/mlflow" and body == _webhook("3")  # the signed bytes, as MLflow sent them
        assert {k: headers[k] for k in signed} == signed
        assert keep.forwarded == {(MODEL, "3")} and not keep.dropped

        # Dropped: answered 200, so MLflow does not retry; nothing reaches the host, every time.
        for _ in range(2):
            assert requests.post(lose.url, data=_webhook("4"), headers=signed, timeout=10).status_code == 200
        assert len(host.received) == 1
        assert lose.dropped == {(MODEL, "4")} and not lose.forwarded
    finally:
        for relay in (keep, lose):
            relay.stop()
        host.close()
    # The host is gone: the relay answers 502, so MLflow retries as it would against a dead host.
    down = WebhookRelay(host, 0.0, seed=1)  # type: ignore[arg-type]
    down.start()
    try:
        assert requests.post(down.url, data=_webhook("5"), headers=signed, timeout=30).status_code == 502
        assert not down.forwarded
    finally:
        down.stop()


def test_a_lifecycle_dead_lettered_by_event_grid_is_what_signalbox_dlq_reads(tmp_path: Path) -> None:
    from shared.adapters.local.eventgrid_deadletters import local_eventgrid_dead_letters
    from shared.deadletters.eventgrid import parse_blob
    from signalbox.chaos.run import DEAD_LETTERED, LOST, EventGrid, Lifecycle

    grid = EventGrid(None, tmp_path)  # type: ignore[arg-type]
    landing = tmp_path / "landing" / "landing"
    dead = Lifecycle(0, MODEL, 50, landing / MODEL / "a.csv", f"{MODEL}/a.csv", fate=DEAD_LETTERED)
    lost = Lifecycle(1, MODEL, 50, landing / MODEL / "b.csv", f"{MODEL}/b.csv", fate=LOST)
    for lifecycle in (dead, lost):
        grid.lose(lifecycle, time.monotonic())
        assert lifecycle.path.exists() and lifecycle.landed_at is not None  # the file landed either way
    store = local_eventgrid_dead_letters(tmp_path)
    [blob] = list(store.blobs())
    data = store.read(blob.name)
    assert data is not None
    [letter] = parse_blob(blob.name, data)
    assert letter.function == "landing_events" and letter.reason == "MaxDeliveryAttemptsExceeded"
    assert letter.event == dead.event and letter.event_type == "Microsoft.Storage.BlobCreated"
    assert grid.dead_lettered == 1
    grid.pool.shutdown()
