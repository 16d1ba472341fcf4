"""``signalbox demo``: the whole lifecycle on this machine, live, from an empty state dir.

It starts the embedded default (MLflow server with registry webhooks, the local host,
the watched landing zone) and only acts from outside, as the cloud would: it drops
files into the landing zone and waits for what the function app does with them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
MODEL = "iris-classifier"
STEP_TIMEOUT = 120.0

LABELS = {
    "DataLanded": "event",
    "DriftDetected": "drift",
    "TrainingStarted": "training",
    "TrainingSucceeded": "registered",
    "TrainingFailed": "FAILED",
    "VersionEvaluated": "evaluated",
    "ChallengerLost": "lost",
    "VersionStaged": "staged",
    "ApprovalRequested": "approval?",
    "VersionApproved": "approved",
    "VersionDeployed": "production",
    "DeploymentRolledBack": "ROLLED BACK",
    "DataRefused": "refused",
}


class DemoFailed(RuntimeError):
    """The chain did not complete as it should."""


class Progress:
    """Prints each lifecycle event as the function app publishes it."""

    def __init__(self, events_file: Path, started: float) -> None:
        self.events_file = events_file
        self.started = started
        self.offset = 0
        self.seen: list[dict[str, Any]] = []

    def say(self, label: str, text: str) -> None:
        """One progress line."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {label:<11} {text}", flush=True)

    def pump(self) -> None:
        """Print events published since the last look."""
        if not self.events_file.exists():
            return
        with self.events_file.open(encoding="utf-8") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        for line in chunk.splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            self.seen.append(event)
            kind = event["type"].removeprefix("io.signalbox.")
            self.say(LABELS.get(kind, kind), _describe(kind, event.get("data") or {}))

    def wait(self, what: str, done: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Print events until ``done`` holds, or fail after the step timeout."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            self.pump()
            if done(self.seen):
                return
            if any(e["type"] in ("io.signalbox.TrainingFailed",) for e in self.seen):
                raise DemoFailed(f"a training failed while waiting for {what}")
            time.sleep(0.2)
        raise DemoFailed(f"timed out after {STEP_TIMEOUT:.0f}s waiting for {what}")


def _describe(kind: str, data: dict[str, Any]) -> str:
    version = f"v{data['version']}" if "version" in data else ""
    if kind == "DataLanded":
        return f"BlobCreated {data['data_uri'].rsplit('/landing/', 1)[-1]} ({data['bytes']} bytes) -> train"
    if kind == "TrainingStarted":
        return f"{data['purpose']} job {data['run_id'][:12]} on {data['backend']} ({data['reason']})"
    if kind == "TrainingSucceeded":
        return f"job {data['run_id'][:12]} registered " + ", ".join(f"v{v}" for v in data["versions"])
    if kind == "VersionEvaluated":
        return f"{version} {'WON' if data['won'] else 'lost'}: {data['reason']}"
    if kind == "VersionApproved":
        return f"{version} by {data.get('by')}"
    if kind == "VersionDeployed":
        return f"{version} deployed to {data.get('url') or data.get('endpoint')} (slot {data.get('slot')})"
    if kind == "DeploymentRolledBack":
        return f"{version}: {data.get('reason')}"
    return version if version else " ".join(f"{k}={v}" for k, v in data.items())


def _event(seen: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any] | None:
    for event in seen:
        data = event.get("data") or {}
        if event["type"] == f"io.signalbox.{kind}" and all(str(data.get(k)) == str(v) for k, v in match.items()):
            return event
    return None


def _score(url: str, evaluation: Path) -> list[Any]:
    from shared.handlers import smoke_frame

    payload: dict[str, Any] = smoke_frame(evaluation, rows=3).dataframe_split()
    response = requests.post(url, json=payload, timeout=30)
    response.raise_for_status()
    body = response.json()
    return list(body.get("predictions", body) if isinstance(body, dict) else body)


def run_demo(state_dir: Path | None = None, port: int = 0, keep: bool = False) -> int:
    """Run the demo; 0 only if the chain really completed."""
    from signalbox.client import format_lifecycle
    from signalbox.embedded import start_embedded
    from signalbox.examples.iris.data import write_batch
    from signalbox.localhost.server import HostSettings, configure_logging

    started = time.monotonic()
    state = state_dir or Path(tempfile.mkdtemp(prefix="signalbox-demo-"))
    if state.exists() and any(state.iterdir()):
        print(f"error: {state} is not empty; the demo starts from an empty state dir", file=sys.stderr)
        return 2
    (state / "logs").mkdir(parents=True, exist_ok=True)
    configure_logging(filename=state / "logs" / "host.log")
    progress = Progress(state / "events.jsonl", started)
    print(f"Signalbox demo — state dir {state}")
    progress.say("start", "MLflow server (SQL store, registry webhooks on) and the local Functions host")
    embedded = start_embedded(HostSettings(script_root=REPO, state_dir=state, port=port))
    host_url = embedded.host.base_url
    progress.say("ready", f"host {host_url}, MLflow {embedded.mlflow.url}")
    evaluation = REPO / "signalbox" / "examples" / "iris" / "evaluation.csv"
    endpoint_url = f"{host_url}/endpoints/iris/invocations"
    try:
        landing = embedded.landing_dir / "landing" / "iris"
        progress.say("land", "a first, small dataset: iris/batch-001.csv")
        write_batch(landing / "batch-001.csv", "small", seed=1)
        progress.wait("v1 in production", lambda s: _event(s, "VersionDeployed", version=1) is not None)
        progress.say("scored", f"{_score(endpoint_url, evaluation)} from v1 through {endpoint_url}")

        progress.say("land", "a second, full dataset: iris/batch-002.csv (the challenger)")
        write_batch(landing / "batch-002.csv", "full", seed=2)
        progress.wait("v2 to be judged", lambda s: _event(s, "VersionEvaluated", version=2) is not None)
        won = bool(_event(progress.seen, "VersionEvaluated", version=2)["data"]["won"])  # type: ignore[index]
        if won:
            progress.wait("v2 in production", lambda s: _event(s, "VersionDeployed", version=2) is not None)
        progress.say("scored", f"{_score(endpoint_url, evaluation)} through the same URL")

        progress.say("land", "a third dataset with mostly wrong labels: iris/batch-003.csv")
        write_batch(landing / "batch-003.csv", "noisy", seed=3)
        progress.wait("v3 to be judged", lambda s: _event(s, "VersionEvaluated", version=3) is not None)
        progress.pump()

        from shared.bootstrap import bootstrap
        from shared.lifecycle import lifecycle

        services = bootstrap()
        data = lifecycle(MODEL, services)
        production = [v["version"] for v in data["versions"] if v["stage"] == "production"]
        expected = "2" if won else "1"
        if production != [expected] or data["champion"] != expected:
            raise DemoFailed(f"expected v{expected} alone in production, registry says {production}")
        print()
        print(format_lifecycle(json.loads(json.dumps(data, default=str))))
        print()
        print(
            f"Endpoint: {endpoint_url}"
            + ("" if keep else "  (stops with the demo; `signalbox demo --keep` keeps it up)")
        )
        print(f"  curl -s -X POST {endpoint_url} -H 'Content-Type: application/json' \\")
        print(
            '    -d \'{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length",'
            ' "petal_width"], "data": [[5.1, 3.5, 1.4, 0.2]]}}\''
        )
        print(f"MLflow UI: {embedded.mlflow.url}/#/models/{MODEL}")
        # The page takes the admin key as ?code=; keys are never printed, only where they are.
        keys = state / "host-keys.json"
        print(f"Ops page:  {host_url}/api/ops?code=$KEY  (the admin key: masterKey in {keys})")
        print(f"  KEY=$(python3 -c \"import json;print(json.load(open('{keys}'))['masterKey'])\")")
        target = f"--state-dir {state} --host-url {host_url}"
        print(f"Roll back: signalbox rollback {MODEL} --by you --reason 'why' {target}")
        print(f"History:   signalbox history {MODEL} {target}")
        print(f"Host log:  {state / 'logs' / 'host.log'}")
        print(f"\nThe chain completed in {time.monotonic() - started:.1f}s wall time.")
        if keep:
            print("Still running (--keep); Ctrl-C stops everything.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    except DemoFailed as exc:
        progress.pump()
        print(f"\nDEMO FAILED: {exc}. See {state / 'logs' / 'host.log'}", file=sys.stderr)
        return 1
    finally:
        embedded.stop()
