"""Ingress from outside: ``signalbox send``, signed webhooks and Event Grid events each queue one command per cause."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from shared.adapters.local.queues import LocalQueues
from tests.hosting import REPO, start_host


def cli(state: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalbox.cli", *args, "--state-dir", str(state), "--host-url", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    state = tmp_path_factory.mktemp("cli") / "state"
    state.mkdir()
    (state / "webhook-secrets.json").write_text(json.dumps({"SIGNALBOX_GITHUB_WEBHOOK_SECRET": "gh-secret"}))
    env = {
        "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"),
        "SIGNALBOX_GITHUB_WEBHOOK_SECRET": "gh-secret",
        "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET": "db-secret",
        "SIGNALBOX_MLFLOW_WEBHOOK_SECRET": "mf-secret",
    }
    host = start_host(
        state,
        env=env,
        extra_args=(
            "--functions",
            "landing_events",
            "alert_events",
            "workspace_events",
            "github_webhook",
            "databricks_webhook",
            "databricks_job_notification",
            "mlflow_webhook",
        ),
    )
    yield host, state, LocalQueues(state / "queues.sqlite3")
    host.stop()


def commands(queues: LocalQueues, queue: str) -> list[dict]:
    return [json.loads(m.body) for m in queues.peek(queue)]


def test_send_blob_lands_the_file_and_queues_one_training(ingress, tmp_path):
    host, state, queues = ingress
    data = tmp_path / "batch.csv"
    data.write_text("sepal_length,target\n1.0,setosa\n")
    done = cli(state, host.url, "send", "blob", str(data))
    assert done.returncode == 0, done.stderr
    assert (state / "landing" / "landing" / "iris" / "batch.csv").read_text() == data.read_text()
    (train,) = commands(queues, "train")
    assert train["command"]["reason"] == "landing" and train["command"]["data_uri"].endswith("/iris/batch.csv")


def test_send_drift_model_registered_and_github(ingress):
    host, state, queues = ingress
    before = len(commands(queues, "train"))
    assert cli(state, host.url, "send", "drift", "iris-classifier").returncode == 0
    assert cli(state, host.url, "send", "drift", "iris-classifier").returncode == 0  # the storm: still one
    assert [c["command"]["reason"] for c in commands(queues, "train")[before:]] == ["drift"]
    assert cli(state, host.url, "send", "model-registered", "iris-classifier", "7").returncode == 0
    (evaluate,) = commands(queues, "evaluate")
    assert evaluate["command"] == {
        **evaluate["command"],
        "model_name": "iris-classifier",
        "version": "7",
        "source": "azureml",
    }
    pushed = cli(state, host.url, "send", "github", "--branch", "main", "--paths", "src/train.py", "--sha", "abc")
    assert pushed.returncode == 0 and json.loads(pushed.stdout)["outcome"] == "train"
    push = [c for c in commands(queues, "train") if c["command"]["reason"] == "code_push"]
    assert len(push) == 1 and push[0]["environment"] == "staging" and push[0]["command"]["commit_sha"] == "abc"
    unmapped = cli(state, host.url, "send", "github", "--branch", "feature/x")
    assert unmapped.returncode == 0 and json.loads(unmapped.stdout)["outcome"] == "ignored"


def test_send_reports_a_missing_file_and_an_unreachable_host(ingress, tmp_path):
    host, state, _ = ingress
    missing = cli(state, host.url, "send", "blob", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    data = tmp_path / "x.csv"
    data.write_text("a\n1\n")
    down = cli(state, "http://127.0.0.1:9", "send", "blob", str(data))
    assert down.returncode == 1 and "cannot reach the host" in down.stderr and "Traceback" not in down.stderr


def test_databricks_registry_webhook_is_verified_and_queues_an_evaluation(ingress):
    host, _, queues = ingress
    body = json.dumps(
        {
            "event": "MODEL_VERSION_CREATED",
            "webhook_id": "w1",
            "event_timestamp": 1763888102000,
            "model_name": "iris-classifier",
            "version": "12",
            "status": "READY",
        }
    ).encode()
    url = f"{host.url}/api/webhooks/databricks"
    bad = requests.post(url, data=body, headers={"X-Databricks-Signature": "0" * 64}, timeout=10)
    assert bad.status_code == 401
    signature = hmac.new(b"db-secret", body, hashlib.sha256).hexdigest()
    for _ in range(2):
        ok = requests.post(url, data=body, headers={"X-Databricks-Signature": signature}, timeout=10)
        assert ok.status_code == 200 and ok.json()["outcome"] == "evaluate"
    assert [
        c["command"]["version"] for c in commands(queues, "evaluate") if c["command"]["source"] == "databricks"
    ] == ["12"]


def test_job_completion_callbacks_poll_the_run_now(ingress):
    host, _, queues = ingress
    event = json.loads((REPO / "tests" / "fixtures" / "events" / "run_completed.eventgrid.json").read_text())
    code = host.event_grid_key
    hook = f"{host.url}/runtime/webhooks/EventGrid"
    answer = requests.post(hook, params={"functionName": "workspace_events", "code": code}, json=event, timeout=10)
    assert answer.status_code == 200
    polls = [c["command"] for c in commands(queues, "poll-run")]
    assert {
        "backend": "azureml",
        "run_id": "iris-train_1763888102_a1b2c3d4",
        "model_name": "iris-classifier",
    }.items() <= polls[0].items()
    # A Databricks job notification names the job, not the model: no catalogue model runs job 42 here.
    notification = {"event_type": "jobs.on_success", "workspace_id": "1", "run": {"run_id": 77}, "job": {"job_id": 42}}
    url = f"{host.url}/api/webhooks/databricks-jobs"
    assert requests.post(url, json=notification, timeout=10).status_code == 401  # function key required
    ignored = requests.post(url, json=notification, params={"code": host.function_key}, timeout=10)
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"


def _mlflow_headers(body: bytes, *, secret: str = "mf-secret", delivery: str = "d-1", at: float | None = None):
    timestamp = str(int(at if at is not None else time.time()))
    digest = hmac.new(secret.encode(), f"{delivery}.{timestamp}.{body.decode()}".encode(), hashlib.sha256).digest()
    return {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }


def test_mlflow_webhook_checks_signature_and_timestamp_window(ingress):
    host, _, queues = ingress
    url = f"{host.url}/api/webhooks/mlflow"
    body = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "2026-11-23T10:00:00Z",
            "data": {
                "name": "iris-classifier",
                "version": "21",
                "source": "models:/m-1",
                "run_id": None,
                "tags": {},
                "description": None,
            },
        }
    ).encode()
    assert requests.post(url, data=body, timeout=10).status_code == 401
    assert requests.post(url, data=body, headers=_mlflow_headers(body, secret="wrong"), timeout=10).status_code == 401
    stale = _mlflow_headers(body, at=time.time() - 3600)
    assert requests.post(url, data=body, headers=stale, timeout=10).status_code == 401
    for delivery in ("d-1", "d-1", "d-2"):  # a replay, then a second delivery of the same version
        ok = requests.post(url, data=body, headers=_mlflow_headers(body, delivery=delivery), timeout=10)
        assert ok.status_code == 200 and ok.json()["outcome"] == "evaluate"
    assert [c["command"]["version"] for c in commands(queues, "evaluate") if c["command"]["source"] == "mlflow"] == [
        "21"
    ]
