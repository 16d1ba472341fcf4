"""``signalbox send`` fires well-formed events at a running host; each cause queues one command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters.local_queues import LocalQueues
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
    env = {"SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"), "SIGNALBOX_GITHUB_WEBHOOK_SECRET": "gh-secret"}
    host = start_host(
        state,
        env=env,
        extra_args=("--functions", "landing_events", "alert_events", "workspace_events", "github_webhook"),
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
