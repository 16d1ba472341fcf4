"""The whole lifecycle on a running embedded default, driven only from outside, as Azure would.

One ``signalbox host --with-mlflow`` subprocess serves the whole module (the MLflow server
with registry webhooks, the local Functions host and the landing watcher). The tests land CSVs
in its landing folder, deliver Event Grid events with the Event Grid system key, signed
GitHub and MLflow webhooks and approvals with the function key, and then read the registry's
final state straight from MLflow (tags ``stage``, ``approval``, ``signalbox.decision``,
``signalbox.deployment``, aliases ``champion``/``challenger``) and from ``GET /api/status``.
``STATE/events.jsonl`` (the lifecycle CloudEvents the app appends) tells when a step happened
and the host's queue counts (``/admin/host/status``) when all work has settled.

Every scenario has its own catalogue model (tests/integration/catalogue.toml), so they cannot
act on each other; the models that need a baseline version get their first batch as soon as
the host is up, so those trainings and deployments run side by side with the first tests.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from signalbox.examples.iris.data import FEATURES, TARGET, BatchKind, training_frame, write_batch
from signalbox.localhost.process import HostProcess
from tests.hosting import REPO

pytestmark = pytest.mark.integration

CATALOGUE = "tests/integration/catalogue.toml"
EVALUATION = REPO / "signalbox" / "examples" / "iris" / "evaluation.csv"
STEP_TIMEOUT = 150.0  # one lifecycle step: a training (~5 s), an evaluation, a deployment (~5-8 s), on a busy box
BANNER = re.compile(r"MLflow server and UI: (http://\S+)")
QUEUES = ("train", "poll-run", "evaluate", "promote", "deploy")

# A batch between "small" and "full" (about 0.87 accuracy against 0.69 and 0.93).
MEDIUM_PER_CLASS = {"setosa": 6, "versicolor": 5, "virginica": 3}

# Models that need a version before their scenario starts: landed together as soon as the host
# is up, all with the same batch (so they train the same model), and evaluated before the first
# test starts; their deployments go on in the background meanwhile.
BASELINES = ("lc-race", "lc-manual", "lc-drift", "lc-push")


# -- the running embedded default ------------------------------------------------------------------


@dataclass
class Stack:
    """A running ``signalbox host --with-mlflow``, seen from outside."""

    process: subprocess.Popen[bytes]
    url: str
    state: Path
    log_path: Path
    mlflow_url: str = ""
    dead_letters: int = 0
    _incoming: int = field(default=0)

    # -- keys and secrets ----------------------------------------------------------------

    @cached_property
    def keys(self) -> dict[str, Any]:
        return json.loads((self.state / "host-keys.json").read_text())

    @property
    def function_key(self) -> str:
        return str(self.keys["functionKeys"]["default"])

    @property
    def master_key(self) -> str:
        return str(self.keys["masterKey"])

    @property
    def event_grid_key(self) -> str:
        return str(self.keys["systemKeys"]["eventgrid_extension"])

    @cached_property
    def secrets(self) -> dict[str, str]:
        return json.loads((self.state / "webhook-secrets.json").read_text())

    # -- diagnostics -----------------------------------------------------------------------

    def log(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def host_status(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.url}/admin/host/status", headers={"x-functions-key": self.master_key}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def wait(
        self, what: str, condition: Callable[[], Any], timeout: float = STEP_TIMEOUT, *, watch: bool = True
    ) -> Any:
        """Poll ``condition`` until it returns something truthy; fail with the host's story otherwise.

        ``watch``: also fail as soon as a message is dead-lettered (off while the host starts).
        """
        deadline = time.monotonic() + timeout
        looked = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the host exited ({self.process.returncode}) while waiting for {what}:\n{self.log()}"
                )
            value = condition()
            if value:
                return value
            if watch and time.monotonic() - looked > 2:
                looked = time.monotonic()
                self.check_dead_letters(f"while waiting for {what}")
            if time.monotonic() > deadline:
                recent = "\n".join(json.dumps(e)[:300] for e in self.events()[-15:])
                queues = self.host_status()["queues"] if watch else "-"
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}\n--- last lifecycle events:\n{recent}"
                    f"\n--- queues: {queues}\n--- host log:\n{self.log()}"
                )
            time.sleep(0.25)

    def settle(self, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until no queue holds work (available, scheduled or locked); fail on any new dead letter."""

        def idle() -> bool:
            queues = self.host_status()["queues"]
            return all(queues[q]["active"] + queues[q]["scheduled"] + queues[q]["locked"] == 0 for q in QUEUES)

        # Twice, a moment apart: a webhook or a watcher delivery may land between two looks.
        self.wait("every queue to be idle", lambda: idle() and (time.sleep(0.6) or idle()), timeout)
        self.check_dead_letters("by the time the queues were idle")

    def check_dead_letters(self, when: str) -> None:
        """Fail at once when a message was dead-lettered since the last look: a handler failed for good."""
        queues = self.host_status()["queues"]
        counts = {q: queues[q]["dead_letter"] for q in QUEUES}
        if sum(counts.values()) != self.dead_letters:
            self.dead_letters = sum(counts.values())
            raise AssertionError(f"messages were dead-lettered {when}: {counts}\n--- host log:\n{self.log()}")

    # -- lifecycle events (STATE/events.jsonl) --------------------------------------------

    def events(self, model: str | None = None, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            data = event.get("data") or {}
            if model is not None and event.get("subject") != model:
                continue
            if kind is not None and event.get("type") != f"io.signalbox.{kind}":
                continue
            if all(str(data.get(k)) == str(v) for k, v in match.items()):
                found.append(event)
        return found

    def wait_event(self, model: str, kind: str, timeout: float = STEP_TIMEOUT, **match: Any) -> dict[str, Any]:
        shown = ", ".join(f"{k}={v}" for k, v in match.items())
        return self.wait(
            f"{kind}({shown}) of {model}", lambda: next(iter(self.events(model, kind, **match)), None), timeout
        )

    # -- the registry, read straight from MLflow ------------------------------------------

    @cached_property
    def mlflow(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def versions(self, model: str) -> list[str]:
        found = self.mlflow.search_model_versions(filter_string=f"name='{model}'")
        return sorted((str(v.version) for v in found), key=int)

    def tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.mlflow.get_model_version(model, version).tags)

    def aliases(self, model: str) -> dict[str, str]:
        return {alias: str(v) for alias, v in self.mlflow.get_registered_model(model).aliases.items()}

    def record(self, model: str, version: str, tag: str) -> dict[str, Any]:
        text = self.tags(model, version).get(tag)
        return json.loads(text) if text else {}

    def stage_of(self, model: str, version: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.tags(model, version).get("stage")
        except MlflowException:
            return None  # not registered yet

    def in_production(self, model: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.stage_of(model, version) == "production" and self.aliases(model).get("champion") == version
        except MlflowException:
            return False

    def pending(self, model: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.tags(model, version)
        except MlflowException:
            return False
        return tags.get("stage") == "staged" and tags.get("approval") == "pending"

    def status(self, model: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.url}/api/status/{model}", headers={"x-functions-key": self.function_key}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()

    # -- what the cloud sends ----------------------------------------------------------------

    def land(self, prefix: str, name: str, kind: BatchKind, seed: int) -> Path:
        """Drop a batch into the watched landing folder, whole (written aside, then renamed in)."""
        self._incoming += 1
        aside = write_batch(self.state.parent / "incoming" / f"{self._incoming}-{name}", kind, seed)
        target = self.state / "landing" / "landing" / prefix / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(aside, target)
        return target

    def event_grid(self, function: str, events: list[dict[str, Any]]) -> requests.Response:
        return requests.post(
            f"{self.url}/runtime/webhooks/EventGrid",
            params={"functionName": function, "code": self.event_grid_key},
            json=events,
            headers={"aeg-event-type": "Notification"},
            timeout=60,
        )

    def cloud_event(self, function: str, event: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.url}/runtime/webhooks/EventGrid",
            params={"functionName": function, "code": self.event_grid_key},
            data=json.dumps(event),
            headers={"Content-Type": "application/cloudevents+json"},
            timeout=60,
        )

    def github(
        self, event: str, payload: dict[str, Any], delivery: str, *, secret: str | None = None
    ) -> requests.Response:
        body = json.dumps(payload).encode()
        key = self.secrets["SIGNALBOX_GITHUB_WEBHOOK_SECRET"] if secret is None else secret
        signature = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(
            f"{self.url}/api/webhooks/github",
            data=body,
            headers={
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
            timeout=60,
        )

    def mlflow_webhook(
        self, payload: dict[str, Any], delivery: str, *, timestamp: int | None = None, secret: str | None = None
    ) -> requests.Response:
        """A registry webhook delivery signed as MLflow signs it: v1,base64(HMAC(id.timestamp.body))."""
        body = json.dumps(payload).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        key = self.secrets["SIGNALBOX_MLFLOW_WEBHOOK_SECRET"] if secret is None else secret
        digest = hmac.new(key.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return requests.post(
            f"{self.url}/api/webhooks/mlflow",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode(),
                "X-MLflow-Delivery-Id": delivery,
                "X-MLflow-Timestamp": stamp,
            },
            timeout=60,
        )

    def decide(self, model: str, version: str, decision: str) -> requests.Response:
        return requests.post(
            f"{self.url}/api/approvals/{model}/{version}/{decision}",
            json={"by": "integration-test"},
            headers={"x-functions-key": self.function_key},
            timeout=60,
        )

    # -- the endpoints -------------------------------------------------------------------------

    def endpoint_url(self, endpoint: str) -> str:
        return f"{self.url}/endpoints/{endpoint}/invocations"

    def route(self, endpoint: str) -> dict[str, Any]:
        path = self.state / "endpoints" / endpoint / "route.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def score(self, endpoint: str) -> tuple[list[str], list[str]]:
        """The endpoint's predictions for the whole evaluation set, and the truth."""
        with EVALUATION.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        payload = {
            "dataframe_split": {"columns": list(FEATURES), "data": [[float(r[c]) for c in FEATURES] for r in rows]}
        }
        response = requests.post(self.endpoint_url(endpoint), json=payload, timeout=60)
        assert response.status_code == 200, f"{endpoint} answered {response.status_code}: {response.text[:500]}"
        body = response.json()
        predictions = body["predictions"] if isinstance(body, dict) else body
        return [str(p) for p in predictions], [r[TARGET] for r in rows]

    def true_accuracy(self, model: str, version: str) -> float:
        """The version's accuracy on the evaluation set, computed here from the registered model."""
        import mlflow.artifacts
        import mlflow.pyfunc
        import pandas as pd

        # Resolved through this client: a models:/ URI would go through mlflow's process-wide registry.
        source = self.mlflow.get_model_version_download_uri(model, version)
        if source.startswith("models:/"):  # an MLflow 3 logged model
            source = self.mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source,
            dst_path=str(self.state.parent / "downloads" / f"{model}-{version}"),
            tracking_uri=self.mlflow_url,
        )
        frame = pd.read_csv(EVALUATION)
        predicted = mlflow.pyfunc.load_model(local).predict(frame[list(FEATURES)])
        return float((pd.Series(list(predicted)).astype(str) == frame[TARGET].astype(str)).mean())

    def assert_serves(self, model: str, endpoint: str, version: str) -> None:
        """The stable URL is routed to ``version`` and scores exactly as its evaluation said it would."""
        assert self.route(endpoint).get("version") == version, self.route(endpoint)
        predictions, truth = self.score(endpoint)
        assert len(predictions) == len(truth)
        accuracy = sum(p == t for p, t in zip(predictions, truth, strict=True)) / len(truth)
        decision = self.record(model, version, "signalbox.decision")
        assert accuracy == pytest.approx(decision["challenger"]["accuracy"]), (
            f"{endpoint} scores {accuracy:.4f}, {model} v{version} was judged at {decision['challenger']}"
        )
        slots = sorted(p.stem for p in (self.state / "endpoints" / endpoint).glob("*.json") if p.name != "route.json")
        assert slots == [self.route(endpoint)["slot"]], f"{endpoint}: servers left in slots {slots}"


# -- starting and stopping ---------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """This process's environment without settings that would change the app under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNALBOX_", "MLFLOW_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "SIGNALBOX_CATALOGUE": CATALOGUE,
            "SIGNALBOX_ENVIRONMENT": "dev",
            "SIGNALBOX_POLL_INITIAL_SECONDS": "0.5",
            "SIGNALBOX_POLL_MAX_SECONDS": "2",
        }
    )
    return env


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def _ours(state: Path) -> dict[int, str]:
    """Live processes working for this state dir (by argv or working directory): scoring servers, jobs, MLflow."""
    found: dict[int, str] = {}
    marker = str(state)
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid() or _start_ticks(pid) is None:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if marker in argv or cwd == marker or cwd.startswith(marker + os.sep):
            found[pid] = argv[:200]
    return found


def _recorded_processes(state: Path) -> dict[int, int | None]:
    """Scoring servers (endpoints/<endpoint>/<slot>.json) and jobs (jobs/<run>/job.json) the app recorded."""
    recorded: dict[int, int | None] = {}
    for slot in (state / "endpoints").glob("*/*.json"):
        if slot.name != "route.json":
            raw = json.loads(slot.read_text())
            recorded[int(raw["pid"])] = raw.get("proc_start")
    for job in (state / "jobs").glob("*/job.json"):
        raw = json.loads(job.read_text())
        if raw.get("pid"):
            recorded[int(raw["pid"])] = raw.get("pid_started")
    return recorded


def _end(pid: int, ticks: int | None) -> None:
    """Stop a process group (a leader started with its own session), if it is still the recorded process."""
    current = _start_ticks(pid)
    if current is None or (ticks is not None and current != ticks):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _start_ticks(pid) is not None:
            time.sleep(0.1)
        if _start_ticks(pid) is None:
            return


def _stop(stack: Stack) -> tuple[list[str], list[str]]:
    """SIGTERM the host, then end what it leaves running (scoring servers outlive it by design).

    Returns what the host itself should have stopped (its MLflow server, its process) and what
    had to be ended here.
    """
    process, state = stack.process, stack.state
    not_stopped = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            not_stopped.append(f"host {process.pid} ignored SIGTERM for 60 s")
            _end(process.pid, None)
            process.wait(timeout=10)
    not_stopped += [f"{pid} {argv}" for pid, argv in _ours(state).items() if "mlflow.db" in argv]
    ended = []
    for pid, ticks in _recorded_processes(state).items():
        if _start_ticks(pid) is not None and (ticks is None or _start_ticks(pid) == ticks):
            ended.append(f"{pid} (recorded)")
            _end(pid, ticks)
    # Members of the groups just signalled (uvicorn under a scoring server) take a moment to exit.
    deadline = time.monotonic() + 10
    while _ours(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, argv in _ours(state).items():
        ended.append(f"{pid} {argv}")
        _end(pid, _start_ticks(pid))
    return not_stopped, ended


@contextlib.contextmanager
def running_stack(state: Path, app: str | None = None, catalogue: Path | None = None) -> Iterator[Stack]:
    """``signalbox host --with-mlflow`` in STATE, driven from outside; every process it started is gone after."""
    state.mkdir()
    app_args = ("--app", app) if app else ()
    host = HostProcess(
        state,
        args=("--with-mlflow", *app_args),
        env={**_clean_env(), **({"SIGNALBOX_CATALOGUE": str(catalogue)} if catalogue else {})},
        log_dir=state.parent,
        new_session=True,
    )
    process = host.launch()
    stack = Stack(process=process, url=host.url, state=state, log_path=host.log_path)
    try:

        def banner() -> str | None:
            found = BANNER.search(host.output())
            return found.group(1) if found else None

        stack.mlflow_url = host.wait_ready(timeout=120, until=banner)
        yield stack
    finally:
        not_stopped, ended = _stop(stack)
        print(f"\nteardown ended: {ended}", file=sys.stderr)
        left = _ours(state)
        assert not left, f"processes still running after the teardown: {left}"
        assert not not_stopped, f"the host did not stop these on SIGTERM: {not_stopped}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("lifecycle") / "state") as running:
        for model in BASELINES:
            running.land(model + "/", "batch-001.csv", "small", seed=11)
        for model in BASELINES:
            running.wait_event(model, "VersionEvaluated", version="1")
        yield running


# -- helpers ---------------------------------------------------------------------------------------


def _push(branch: str, paths: list[str], sha: str | None = None) -> dict[str, Any]:
    sha = sha or uuid.uuid4().hex + uuid.uuid4().hex[:8]
    commit = {"id": sha, "added": [], "removed": [], "modified": paths}
    return {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "deleted": False,
        "repository": {"full_name": "example/signalbox-models"},
        "head_commit": commit,
        "commits": [commit],
    }


def _model_version_created(model: str, version: str) -> dict[str, Any]:
    return {
        "entity": "model_version",
        "action": "created",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"name": model, "version": version, "source": f"models:/{model}/{version}", "run_id": "", "tags": {}},
    }


def _check_consistent(stack: Stack, model: str) -> dict[str, dict[str, str]]:
    """The lifecycle invariants of a model's final state; returns every version's tags."""
    versions = {v: stack.tags(model, v) for v in stack.versions(model)}
    aliases = stack.aliases(model)
    production = [v for v, t in versions.items() if t.get("stage") == "production"]
    staged = [v for v, t in versions.items() if t.get("stage") == "staged"]
    assert len(production) <= 1, f"{model}: several versions in production: {production}"
    assert len(staged) <= 1, f"{model}: several versions staged: {staged}"
    assert aliases.get("champion") == (production[0] if production else None), (aliases, production)
    for v, tags in versions.items():
        stage = tags.get("stage")
        assert stage in (None, "staged", "unstaged", "production", "surpassed"), (v, stage)
        if stage in ("production", "surpassed"):
            assert json.loads(tags["signalbox.deployment"])["status"] == "deployed", (v, tags)
        if stage == "surpassed":
            assert tags.get("signalbox.outcome", "").startswith("surpassed by v"), (v, tags)
        if stage == "unstaged":
            assert (
                tags.get("signalbox.outcome", "").startswith("replaced by v")
                or tags.get("signalbox.outcome") == "deployment rolled back"
                or tags.get("approval") == "rejected"
            ), (v, tags)
        if stage is None and "signalbox.decision" in tags:
            won = json.loads(tags["signalbox.decision"])["won"]
            assert not won or tags.get("signalbox.outcome", "").startswith("lost to staged v"), (v, tags)
    return versions


# -- 1-3: a first version, a better challenger, a worse challenger -----------------------------------


def test_first_version_goes_to_production_and_the_endpoint_scores(stack: Stack) -> None:
    model, endpoint = "lc-main", "lc-main"
    stack.land("lc-main/", "batch-001.csv", "small", seed=1)
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()

    tags = stack.tags(model, "1")
    assert tags["stage"] == "production"
    assert stack.aliases(model) == {"champion": "1"}
    assert tags["approval"] == "auto"
    decision = json.loads(tags["signalbox.decision"])
    assert decision["won"] is True
    assert decision["reason"].startswith("first version")
    assert decision["champion"] is None and decision["champion_version"] is None
    assert decision["primary_metric"] == "accuracy" and 0.0 < decision["challenger"]["accuracy"] <= 1.0
    deployment = json.loads(tags["signalbox.deployment"])
    assert deployment["status"] == "deployed"
    assert deployment["mode"] == "real_time" and deployment["endpoint"] == endpoint
    assert deployment["url"] == stack.endpoint_url(endpoint)
    assert tags.get("signalbox.commit_sha") and tags.get("signalbox.repository")
    assert tags.get("signalbox.data_uri", "").endswith("/landing/landing/lc-main/batch-001.csv")

    stack.assert_serves(model, endpoint, "1")
    status = stack.status(model)
    assert status["champion"] == "1" and status["endpoint"] == stack.endpoint_url(endpoint)
    assert [(v["version"], v["stage"], v["aliases"]) for v in status["versions"]] == [("1", "production", ["champion"])]
    assert len(stack.events(model, "TrainingStarted", reason="landing")) == 1


def test_a_better_challenger_replaces_the_champion(stack: Stack) -> None:
    model, endpoint = "lc-main", "lc-main"
    assert stack.aliases(model).get("champion") == "1", "needs the first scenario's champion"
    stack.land("lc-main/", "batch-002.csv", "full", seed=2)
    stack.wait(f"{model} v2 in production", lambda: stack.in_production(model, "2"))
    stack.settle()

    v1, v2 = stack.tags(model, "1"), stack.tags(model, "2")
    assert v2["stage"] == "production" and v2["approval"] == "auto"
    assert stack.aliases(model) == {"champion": "2"}
    decision = json.loads(v2["signalbox.decision"])
    assert decision["won"] is True and decision["champion_version"] == "1"
    assert decision["challenger"]["accuracy"] > decision["champion"]["accuracy"]
    assert json.loads(v2["signalbox.deployment"])["status"] == "deployed"
    assert v1["stage"] == "surpassed" and v1["signalbox.outcome"] == "surpassed by v2"

    stack.assert_serves(model, endpoint, "2")
    status = stack.status(model)
    assert status["champion"] == "2"
    assert {v["version"]: v["stage"] for v in status["versions"]} == {"1": "surpassed", "2": "production"}
    _check_consistent(stack, model)


def test_a_worse_challenger_is_recorded_and_changes_nothing(stack: Stack) -> None:
    model, endpoint = "lc-main", "lc-main"
    assert stack.aliases(model).get("champion") == "2", "needs the second scenario's champion"
    stack.land("lc-main/", "batch-003.csv", "noisy", seed=3)
    stack.wait_event(model, "VersionEvaluated", version="3")
    stack.settle()

    v3 = stack.tags(model, "3")
    decision = json.loads(v3["signalbox.decision"])
    assert decision["won"] is False
    assert decision["champion_version"] == "2"
    assert "stage" not in v3 and "approval" not in v3 and "signalbox.deployment" not in v3
    assert stack.aliases(model) == {"champion": "2"}
    assert stack.tags(model, "2")["stage"] == "production"
    assert stack.events(model, "ChallengerLost", version="3")
    assert not stack.events(model, "VersionStaged", version="3")
    stack.assert_serves(model, endpoint, "2")
    _check_consistent(stack, model)


# -- 4: two challengers at once --------------------------------------------------------------------


def test_two_challengers_at_once_end_with_one_production(stack: Stack) -> None:
    model, endpoint = "lc-race", "lc-race"
    stack.wait(f"{model} baseline v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()
    # Two challengers land at the same instant; both beat the champion (trained on a small
    # batch), the full batch by far: it must end in production, whatever the order of events.
    incoming = stack.state.parent / "incoming"
    full = write_batch(incoming / "race-full.csv", "full", seed=1)
    small = write_batch(incoming / "race-small.csv", "small", seed=1)
    target = stack.state / "landing" / "landing" / "lc-race"
    os.replace(full, target / "batch-full.csv")
    os.replace(small, target / "batch-small.csv")

    stack.wait(
        "both challengers evaluated",
        lambda: {"2", "3"} <= {e["data"]["version"] for e in stack.events(model, "VersionEvaluated")},
    )
    stack.settle()

    versions = _check_consistent(stack, model)
    assert set(versions) == {"1", "2", "3"}
    assert len(stack.events(model, "TrainingStarted")) == 3
    by_data = {t["signalbox.data_uri"].rsplit("/", 1)[-1]: v for v, t in versions.items()}
    best, other = by_data["batch-full.csv"], by_data["batch-small.csv"]
    # Each verdict must be about its own version: scored here from the registry, independently.
    for v in (best, other):
        decision = json.loads(versions[v]["signalbox.decision"])
        assert decision["champion_version"] == "1"
        assert decision["challenger"]["accuracy"] == pytest.approx(stack.true_accuracy(model, v)), (
            f"v{v}'s decision record does not describe v{v}: {decision}"
        )
        assert decision["won"] is True, decision
    stages = {v: t.get("stage") for v, t in versions.items()}
    assert stages[best] == "production", stages
    aliases = stack.aliases(model)
    assert aliases.get("champion") == best, aliases
    assert stages["1"] == "surpassed"
    order = [(e["type"].removeprefix("io.signalbox."), e["data"].get("version")) for e in stack.events(model)]
    if stages[other] == "surpassed":
        # Legitimate only if it really was in production before the better one was staged.
        assert order.index(("VersionDeployed", other)) < order.index(("VersionStaged", best)), (
            f"v{other} went to production after v{best} had replaced it as the staged version: {order}"
        )
    else:
        assert stages[other] in ("unstaged", None), (other, versions[other])
        assert versions[other].get("signalbox.outcome") in (f"replaced by v{best}", f"lost to staged v{best}"), (
            versions[other]
        )
        assert ("VersionDeployed", other) not in order, order
        assert "signalbox.deployment" not in versions[other]
    stack.assert_serves(model, endpoint, best)
    # The challenger alias names the staged version, if any: none is staged any more.
    pointed = aliases.get("challenger")
    assert pointed is None, (
        f"the challenger alias still points at v{pointed} (stage {stages[pointed]}, outcome "
        f"{versions[pointed].get('signalbox.outcome')!r}) after v{best} went to production"
    )


# -- 5: manual approval ------------------------------------------------------------------------------


def test_manual_approval_waits_then_deploys_and_rejects(stack: Stack) -> None:
    model, endpoint = "lc-manual", "lc-manual"
    stack.wait(f"{model} v1 waiting for approval", lambda: stack.pending(model, "1"))
    stack.settle()
    v1 = stack.tags(model, "1")
    assert json.loads(v1["signalbox.decision"])["won"] is True
    assert "signalbox.deployment" not in v1
    assert "champion" not in stack.aliases(model)
    assert stack.aliases(model).get("challenger") == "1"
    assert requests.post(stack.endpoint_url(endpoint), json={}, timeout=10).status_code == 404
    assert stack.events(model, "ApprovalRequested", version="1")

    # Approvals need the function key.
    anonymous = requests.post(f"{stack.url}/api/approvals/{model}/1/approve", timeout=10)
    assert anonymous.status_code == 401
    answer = stack.decide(model, "1", "approve")
    assert answer.status_code == 202, answer.text
    assert answer.json()["decision"] == "approved"
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()
    v1 = stack.tags(model, "1")
    assert v1["approval"] == "approved" and v1["approved_by"] == "integration-test"
    assert json.loads(v1["signalbox.deployment"])["status"] == "deployed"
    stack.assert_serves(model, endpoint, "1")

    # Approving a version that is not waiting for approval is a conflict.
    again = stack.decide(model, "1", "approve")
    assert again.status_code == 409, again.text
    assert stack.decide(model, "99", "approve").status_code == 404

    # A better challenger waits too; a rejection unstages it.
    stack.land("lc-manual/", "batch-002.csv", "full", seed=2)
    stack.wait(f"{model} v2 waiting for approval", lambda: stack.pending(model, "2"))
    stack.settle()
    assert "signalbox.deployment" not in stack.tags(model, "2")
    rejected = stack.decide(model, "2", "reject")
    assert rejected.status_code == 202, rejected.text
    assert rejected.json()["decision"] == "rejected"
    stack.wait(f"{model} v2 rejected", lambda: stack.tags(model, "2").get("approval") == "rejected")
    stack.settle()
    v2 = stack.tags(model, "2")
    assert v2["stage"] == "unstaged" and v2["approved_by"] == "integration-test"
    assert "signalbox.deployment" not in v2
    assert stack.aliases(model) == {"champion": "1"}
    assert stack.decide(model, "2", "approve").status_code == 409
    stack.assert_serves(model, endpoint, "1")
    _check_consistent(stack, model)


# -- 6: a failed smoke test rolls back ---------------------------------------------------------------


def test_failed_smoke_test_rolls_back_and_the_champion_keeps_serving(stack: Stack) -> None:
    model, endpoint = "lc-fragile", "lc-fragile"
    stack.land("lc-fragile/", "batch-001.csv", "small", seed=1)
    stack.wait(f"{model} v1 waiting for approval", lambda: stack.pending(model, "1"))
    assert stack.decide(model, "1", "approve").status_code == 202
    stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()
    stack.assert_serves(model, endpoint, "1")

    stack.land("lc-fragile/", "batch-002.csv", "full", seed=2)
    stack.wait(f"{model} v2 waiting for approval", lambda: stack.pending(model, "2"))
    stack.settle()
    v2 = stack.tags(model, "2")
    assert json.loads(v2["signalbox.decision"])["won"] is True  # it evaluated fine
    side_file = Path(v2["fragile.side_file"])
    side_file.unlink()  # now it cannot predict any more, though it still loads
    assert stack.decide(model, "2", "approve").status_code == 202
    stack.wait_event(model, "DeploymentRolledBack", version="2")
    stack.settle()

    deployment = stack.record(model, "2", "signalbox.deployment")
    assert deployment["status"] == "rolled_back", deployment
    assert "smoke test" in deployment["reason"], deployment
    assert deployment["endpoint"] == endpoint
    assert stack.tags(model, "2").get("stage") == "unstaged"
    assert stack.aliases(model).get("champion") == "1"
    assert stack.tags(model, "1")["stage"] == "production"
    assert not stack.events(model, "VersionDeployed", version="2")
    stack.assert_serves(model, endpoint, "1")  # the candidate's server was stopped, v1 still answers
    _check_consistent(stack, model)


def test_a_rolled_back_version_does_not_block_later_challengers(stack: Stack) -> None:
    model = "lc-fragile"
    assert stack.record(model, "2", "signalbox.deployment").get("status") == "rolled_back", "needs scenario 6"
    # Better than the champion v1 (small batch), not as good as the rolled-back v2 (full batch):
    # the first rows of each class of the training split, 6/5/3.
    full = training_frame("full")
    medium = pd.concat([full[full[TARGET] == label].head(n) for label, n in MEDIUM_PER_CLASS.items()])
    aside = stack.state.parent / "incoming" / "fragile-medium.csv"
    aside.parent.mkdir(parents=True, exist_ok=True)
    medium.to_csv(aside, index=False)
    os.replace(aside, stack.state / "landing" / "landing" / "lc-fragile" / "batch-003.csv")
    stack.wait_event(model, "VersionEvaluated", version="3")
    stack.settle()

    v2, v3 = stack.tags(model, "2"), stack.tags(model, "3")
    assert json.loads(v3["signalbox.decision"])["won"] is True
    # v2 can never serve (its deployment rolled back), so it must not keep v3 from a person's decision.
    assert v2.get("stage") == "unstaged"
    assert stack.pending(model, "3"), f"v3 should wait for approval: {v3}"
    assert stack.decide(model, "2", "approve").status_code == 409  # nothing to approve on v2 any more
    assert stack.aliases(model).get("champion") == "1"


# -- 7: a storm of drift alerts --------------------------------------------------------------------


def test_a_drift_storm_starts_exactly_one_training(stack: Stack) -> None:
    model = "lc-drift"
    stack.wait(f"{model} baseline v1 in production", lambda: stack.in_production(model, "1"))
    stack.settle()
    assert stack.versions(model) == ["1"]

    def alert(n: int) -> int:
        event = {
            "specversion": "1.0",
            "type": "io.signalbox.drift.detected",
            "source": "/signalbox/drift-monitor",
            "id": str(uuid.uuid4()),
            "time": datetime.now(UTC).isoformat(),
            "subject": f"models/{model}",
            "datacontenttype": "application/json",
            "data": {"model_name": model, "metric": "psi", "score": 0.3 + n / 100, "threshold": 0.2},
        }
        return stack.cloud_event("alert_events", event).status_code

    # Three in quick succession, then seven at once.
    answers = [alert(n) for n in range(3)]
    with ThreadPoolExecutor(max_workers=7) as pool:
        answers += list(pool.map(alert, range(3, 10)))
    assert answers == [200] * 10

    stack.wait_event(model, "TrainingStarted", reason="drift")
    stack.wait_event(model, "VersionEvaluated", version="2")
    stack.settle()
    trainings = stack.events(model, "TrainingStarted", reason="drift")
    assert len(trainings) == 1, trainings
    assert stack.versions(model) == ["1", "2"]
    assert stack.mlflow.get_registered_model(model).tags.get("signalbox.drift.last_training_at")
    v2 = stack.tags(model, "2")
    assert "signalbox.decision" in v2 and v2.get("signalbox.reason") == "drift"
    _check_consistent(stack, model)


# -- 8: duplicate deliveries --------------------------------------------------------------------------


def test_duplicate_deliveries_do_the_work_once(stack: Stack) -> None:
    model = "lc-dup"
    # The same BlobCreated (same Event Grid id) three times, the last two at once. The file is in
    # the landing zone (nothing outside it is read), so the watcher announces it too, with the same
    # id (blob_created_event): one more duplicate.
    from signalbox.client import blob_created_event

    data = write_batch(stack.state / "landing" / "landing" / "lc-dup" / "batch-001.csv", "small", seed=8)
    event = blob_created_event(data, "landing", "lc-dup/batch-001.csv")
    assert stack.event_grid("landing_events", [event]).status_code == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(lambda _: stack.event_grid("landing_events", [event]).status_code, range(2)))
    assert codes == [200, 200]
    stack.wait(f"{model} v1 waiting for approval", lambda: stack.pending(model, "1"))
    stack.settle()
    assert len(stack.events(model, "TrainingStarted")) == 1
    assert stack.versions(model) == ["1"]
    assert len(stack.events(model, "VersionEvaluated", version="1")) == 1

    # The same MLflow webhook delivery replayed (re-signed with the current timestamp): v1 was
    # evaluated when MLflow announced it; no second evaluation.
    decision = stack.tags(model, "1")["signalbox.decision"]
    evaluations = stack.host_status()["invocations"].get("evaluate:Succeeded", 0)
    assert evaluations > 0
    delivery = str(uuid.uuid4())
    for _ in range(2):
        answer = stack.mlflow_webhook(_model_version_created(model, "1"), delivery)
        assert answer.status_code == 200, answer.text
        time.sleep(1.1)  # a later timestamp for the replay
    stack.settle()
    assert stack.host_status()["invocations"].get("evaluate:Succeeded", 0) == evaluations
    assert len(stack.events(model, "VersionEvaluated", version="1")) == 1
    assert stack.tags(model, "1")["signalbox.decision"] == decision

    # The same GitHub delivery twice: one training.
    push = _push("main", ["jobs/lc-dup/train.py"])
    github_delivery = str(uuid.uuid4())
    for _ in range(2):
        answer = stack.github("push", push, github_delivery)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"outcome": "train", "models": [model]}
    stack.wait_event(model, "VersionEvaluated", version="2")
    stack.settle()
    assert len(stack.events(model, "TrainingStarted", reason="code_push")) == 1
    assert stack.versions(model) == ["1", "2"]
    assert stack.tags(model, "2")["signalbox.commit_sha"] == push["after"]
    _check_consistent(stack, model)


# -- 9: GitHub pushes ---------------------------------------------------------------------------------


def test_github_pushes_train_only_mapped_branches_and_code_paths(stack: Stack) -> None:
    model, endpoint = "lc-push", "lc-push"
    stack.wait(f"{model} baseline v1 waiting for approval (dev is manual)", lambda: stack.pending(model, "1"))
    stack.settle()
    trainings = len(stack.events(kind="TrainingStarted"))

    # Authentication first: a wrong signature is refused, a ping is answered.
    bad = stack.github("push", _push("main", ["src/model.py"]), str(uuid.uuid4()), secret="not-the-secret")
    assert bad.status_code == 401
    ping = stack.github("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}, str(uuid.uuid4()))
    assert ping.status_code == 200

    feature = stack.github("push", _push("feature/x", ["src/model.py"]), str(uuid.uuid4()))
    assert feature.status_code == 200 and feature.json()["outcome"] == "ignored"
    docs = stack.github("push", _push("main", ["docs/index.md", "docs/guide/usage.md"]), str(uuid.uuid4()))
    assert docs.status_code == 200 and docs.json()["outcome"] == "ignored"
    stack.settle()
    assert len(stack.events(kind="TrainingStarted")) == trainings

    push = _push("main", ["src/model.py"])
    answer = stack.github("push", push, str(uuid.uuid4()))
    assert answer.status_code == 200 and answer.json() == {"outcome": "train", "models": [model]}
    stack.wait_event(model, "TrainingStarted", reason="code_push")
    stack.wait_event(model, "VersionEvaluated", version="2")
    stack.settle()
    assert len(stack.events(kind="TrainingStarted")) == trainings + 1
    v2 = stack.tags(model, "2")
    assert v2["signalbox.environment"] == "staging"  # main -> staging
    assert v2["signalbox.commit_sha"] == push["after"]
    assert v2["signalbox.repository"] == "example/signalbox-models"
    # The whole lifecycle runs in staging: the staging policy (auto) applies, not the host's dev
    # policy (manual), so v2 replaces the pending v1 and deploys by itself; and it is one lifecycle,
    # so the version keeps the training's correlation id.
    run = stack.mlflow.get_run(stack.mlflow.get_model_version(model, "2").run_id)
    story = [(e["type"].removeprefix("io.signalbox."), e["data"].get("version")) for e in stack.events(model)]
    approvals = stack.events(model, "VersionApproved", version="2")
    assert approvals and approvals[0]["data"]["by"] == "auto (staging policy)", (
        f"v2 was not approved under the staging policy: approval={v2.get('approval')!r}, events {story}"
    )
    assert v2["signalbox.correlation_id"] == run.data.tags["signalbox.correlation_id"], (
        f"v2's lifecycle lost the training's correlation id {run.data.tags['signalbox.correlation_id']}"
    )
    stack.wait(f"{model} v2 in production", lambda: stack.in_production(model, "2"))
    assert stack.tags(model, "1")["stage"] == "unstaged"
    stack.assert_serves(model, endpoint, "2")
    _check_consistent(stack, model)


# -- signed MLflow webhooks ---------------------------------------------------------------------------


def test_mlflow_webhook_needs_a_valid_fresh_signature(stack: Stack) -> None:
    payload = _model_version_created("lc-main", "1")
    wrong = stack.mlflow_webhook(payload, str(uuid.uuid4()), secret="not-the-secret")
    assert wrong.status_code == 401
    stale = stack.mlflow_webhook(payload, str(uuid.uuid4()), timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401
    assert "timestamp" in stale.json()["error"]
    unsigned = requests.post(f"{stack.url}/api/webhooks/mlflow", json=payload, timeout=10)
    assert unsigned.status_code == 401
    fine = stack.mlflow_webhook(payload, str(uuid.uuid4()))
    assert fine.status_code == 200 and fine.json() == {"outcome": "evaluate"}
    stack.settle()
    assert len(stack.events("lc-main", "VersionEvaluated", version="1")) == 1
