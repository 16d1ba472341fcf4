"""The fault-injection run: many model lifecycles on the local host while everything goes wrong.

    signalbox chaos [--lifecycles 1000] [--models 20] [--fault-rate 0.2] [--duplicate-rate 0.3]
                    [--kills 5] [--rate 8] [--deadline 2400] [--seed 7] [--state-dir DIR]
                    [--event-loss-rate 0.05] [--deadletter-rate 0.03] [--webhook-loss-rate 0.3]
                    [--manual-rate 0.05] [--sweep-schedule "0 * * * * *"] [--sweep-grace 15]
                    [--capacity-failure-rate 0.05] [--slow-update-rate 0.2] [--slow-update-seconds 5]

It starts a real MLflow server (SQL store), a fake Databricks workspace whose Jobs and Model
Serving APIs — and a proxy in front of MLflow — fail at random (throttling, 5xx, timeouts;
``signalbox/chaos/workspace.py``), and ``signalbox host`` as a separate process wired to them
(Databricks compute and serving adapters, the MLflow registry through the faulty proxy). It then
acts as Event Grid: one landed file (BlobCreated) per lifecycle, a share of them delivered two or
three times, each delivery retried until the host answers 200, while the host is killed with
``kill -9`` and restarted several times. A few lifecycles (``--poison-rate``) land data whose model
fails every evaluation.

Losses no retry brings back: a share of the landed files' BlobCreated events is never delivered,
another share goes only to Event Grid's dead-letter folder (``STATE_DIR/eventgrid-deadletters``,
written with ``write_dead_letter``, as if its retries were spent); a share of lifecycles also has a
version registered by hand (no job, so no poll), and the MLflow server's ``model_version.created``
webhooks reach the host through a relay that drops a share of them. The host runs its
reconciliation timer on a short schedule and grace; at the end the run replays Event Grid's dead
letters (``signalbox dlq replay --source eventgrid``), which must train nothing twice. Degrades:
the workspace fails a share of runs for capacity (they must be relaunched as new runs) and keeps a
share of serving config updates in progress for seconds (an old entity must still be retired).

When every queue is empty and everything landed or registered has been found, it checks, and prints:

- every landed file completed or in a dead-letter queue with a reason (nothing lost), trained
  exactly once (no cause launched two trainings; from the workspace's own record);
- every capacity failure relaunched as a new run;
- every registered version decided (or its evaluation dead-lettered), none evaluated twice;
- every loss detected within one sweep interval + grace (the command's first send, from the
  queues' duplicate-detection record);
- never two production versions of one model (the registry, sampled through the whole run);
- each endpoint serves the version tagged production, the champion alias points at it, and no
  old served entity is left;
- every poison lifecycle ended in a dead-letter queue.

Exit status 0 only when every claim holds. Every figure printed is measured by this run.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import requests

from shared.domain import DECISION, read_record
from signalbox.chaos.options import ChaosConfig, build_parser, config_from
from signalbox.client import blob_created_event
from signalbox.localhost.process import HostProcess, free_port

if TYPE_CHECKING:
    from signalbox.chaos.workspace import SyntheticTrainer

QUEUES = ("train", "poll-run", "evaluate", "promote", "deploy")
DELIVERED, LOST, DEAD_LETTERED = "delivered", "lost", "dead-lettered"  # what Event Grid does with an event
LANDING_FUNCTION = "landing_events"
DEDUP_WINDOW_SECONDS = 86_400.0  # the train and evaluate queues' duplicate-detection window (P1D)


CLIENT_TIMEOUT = 2


# -- the pieces ---------------------------------------------------------------------------------


def write_catalogue(root: Path, models: int) -> Path:
    """A catalogue of ``models`` models trained on the workspace, judged on rmse, auto-approved in dev."""
    dataset = root / "evaluation.csv"
    dataset.write_text("x,target\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 41)), encoding="utf-8")
    judged = 'primary_metric = "rmse", direction = "minimize", min_improvement = 0.0'
    entries = []
    for m in range(models):
        name = model_name(m)
        entries.append(
            f"""[models.{name}]
kind = "trained"
training = {{ backend = "databricks", job = "chaos-train" }}
data = {{ container = "landing", prefix = "{name}/" }}
evaluation = {{ dataset = "{dataset.as_posix()}", {judged} }}
approval = {{ dev = "auto", staging = "manual", prod = "manual" }}
deployment = {{ endpoint = "{name}", mode = "real_time" }}
drift = {{ cooldown = "PT10M" }}
"""
        )
    path = root / "catalogue.toml"
    path.write_text("# The fault-injection run's models (signalbox chaos).\n\n" + "\n".join(entries), encoding="utf-8")
    return path


def write_queues(root: Path) -> Path:
    """The shipped queue definition with short locks, so a killed host's messages come back within seconds."""
    from shared.queues import QUEUES_FILE

    definition = json.loads(Path(QUEUES_FILE).read_text(encoding="utf-8"))
    for queue in definition["queues"]:
        queue["lockDuration"] = "PT15S"
        queue["maxDeliveryCount"] = 10  # Service Bus's default
    path = root / "queues.json"
    path.write_text(json.dumps(definition, indent=2), encoding="utf-8")
    return path


def model_name(index: int) -> str:
    """The name of the run's model number ``index``."""
    return f"chaos-m{index:02d}"


@dataclass
class Workspace:
    """The fault-injecting fake Databricks workspace (and MLflow proxy), as a child process."""

    mlflow_url: str
    config: ChaosConfig
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The workspace's base URL (DATABRICKS_HOST, and the MLflow tracking URI through the proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start it and wait for its introspection API."""
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "signalbox.chaos.workspace",
                    "--port",
                    str(self.port),
                    "--mlflow-url",
                    self.mlflow_url,
                    "--fault-rate",
                    str(self.config.fault_rate),
                    "--stall-seconds",
                    str(self.config.stall_seconds),
                    "--job-seconds",
                    str(self.config.job_seconds),
                    "--seed",
                    str(self.config.seed),
                    "--capacity-failure-rate",
                    str(self.config.capacity_failure_rate),
                    "--slow-update-rate",
                    str(self.config.slow_update_rate),
                    "--slow-update-seconds",
                    str(self.config.slow_update_seconds),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the workspace exited with {self.process.returncode}; see {self.log}")
            try:
                if requests.get(f"{self.url}/chaos/faults", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the workspace did not start within {timeout} s; see {self.log}")

    def get(self, what: str) -> Any:
        """One of the introspection documents (runs, endpoints, faults, run-now-calls)."""
        return requests.get(f"{self.url}/chaos/{what}", timeout=30).json()

    def set_fault_rate(self, rate: float) -> None:
        """Change the fault rate while running."""
        requests.post(f"{self.url}/chaos/faults", json={"rate": rate}, timeout=10).raise_for_status()

    def set_degrades(self, capacity_failure_rate: float, slow_update_rate: float) -> None:
        """Change the capacity-failure and slow-update rates while running."""
        body = {"capacity_failure_rate": capacity_failure_rate, "slow_update_rate": slow_update_rate}
        requests.post(f"{self.url}/chaos/degrades", json=body, timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# -- Event Grid ---------------------------------------------------------------------------------


@dataclass
class Lifecycle:
    """One landed file and what became of its event."""

    index: int
    model: str
    quality: int
    path: Path
    blob_path: str
    copies: int = 1
    poison: bool = False
    fate: str = DELIVERED  # or LOST (never delivered), DEAD_LETTERED (only to Event Grid's dead letters)
    manual: bool = False  # a version of the model is registered by hand too
    event: dict[str, Any] | None = None  # built when the file lands
    landed_at: float | None = None  # epoch seconds
    accepted_at: float | None = None
    attempts: int = 0
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def uri(self) -> str:
        """The landed file's URL, as the event and the landing listing name it."""
        return self.path.resolve().as_uri()


class EventGrid:
    """Delivers each event (and its duplicates) at its time, retrying until the host answers 200."""

    def __init__(self, host: HostProcess, state_dir: Path, workers: int = 12) -> None:
        self.host = host
        self.state_dir = state_dir
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eventgrid")
        self.lock = threading.Lock()
        self.deliveries = 0
        self.statuses: Counter[str] = Counter()
        self.gave_up: list[Lifecycle] = []
        self.max_attempts = 200
        self.dead_lettered = 0

    def land(self, lifecycle: Lifecycle) -> dict[str, Any]:
        """Write the file (once, at its time, as storage would) and build its BlobCreated event."""
        with self.lock:
            if lifecycle.event is None:
                lifecycle.path.parent.mkdir(parents=True, exist_ok=True)
                lifecycle.path.write_text("x,target\n1,2\n2,4\n", encoding="utf-8")
                lifecycle.event = blob_created_event(lifecycle.path, "landing", lifecycle.blob_path)
                lifecycle.landed_at = time.time()
            return lifecycle.event

    def lose(self, lifecycle: Lifecycle, due: float) -> None:
        """The file lands; its event is never delivered, or only to Event Grid's dead-letter container."""
        from datetime import UTC, datetime

        from shared.adapters.local.eventgrid_deadletters import MAX_DELIVERY_ATTEMPTS, write_dead_letter

        time.sleep(max(0.0, due - time.monotonic()))
        event = self.land(lifecycle)
        if lifecycle.fate == DEAD_LETTERED:
            # Event Grid's 30 attempts over 24 h, compressed: what it writes when they are spent.
            now = datetime.now(UTC)
            write_dead_letter(
                self.state_dir,
                LANDING_FUNCTION,
                [event],
                reason=MAX_DELIVERY_ATTEMPTS,
                attempts=30,
                last_outcome="GenericError",
                last_status=503,
                first_attempt=now,
                last_attempt=now,
            )
            with self.lock:
                self.dead_lettered += 1

    def _code(self) -> str:
        keys = json.loads((self.state_dir / "host-keys.json").read_text(encoding="utf-8"))
        return str(keys["systemKeys"]["eventgrid_extension"])

    def deliver(self, lifecycle: Lifecycle, due: float) -> None:
        """One delivery of the event: wait for its time, then POST until accepted (Event Grid's retry policy)."""
        time.sleep(max(0.0, due - time.monotonic()))
        event = self.land(lifecycle)
        backoff = 0.25
        for _ in range(self.max_attempts):
            with self.lock:
                self.deliveries += 1
                lifecycle.attempts += 1
            try:
                answer = requests.post(
                    f"{self.host.url}/runtime/webhooks/EventGrid",
                    params={"functionName": LANDING_FUNCTION, "code": self._code()},
                    json=[event],
                    headers={"aeg-event-type": "Notification"},
                    timeout=30,
                )
                outcome = str(answer.status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            with self.lock:
                self.statuses[outcome] += 1
                if outcome == "200":
                    if lifecycle.accepted_at is None:
                        lifecycle.accepted_at = time.monotonic()
                    return
                lifecycle.refusals[outcome] += 1
            time.sleep(backoff)
            backoff = min(backoff * 2, 4.0)
        with self.lock:
            self.gave_up.append(lifecycle)


# -- MLflow's registry webhooks, some never sent ------------------------------------------------


class WebhookRelay:
    """Where the MLflow server sends ``model_version.created``: forwards it to the host, or drops it.

    A dropped delivery is answered 200, so MLflow never retries it: the webhook was never sent, as
    when MLflow restarts with deliveries in memory. Which versions lose theirs is drawn from the
    seed and the version, so every retry of one delivery has the same fate.
    """

    def __init__(self, host: HostProcess, loss_rate: float, seed: int) -> None:
        self.host = host
        self.loss_rate = loss_rate
        self.seed = seed
        self.lock = threading.Lock()
        self.dropped: set[tuple[str, str]] = set()
        self.forwarded: set[tuple[str, str]] = set()
        self.answers: Counter[str] = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-relay", daemon=True)

    @property
    def url(self) -> str:
        """The webhook URL given to MLflow."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/mlflow"

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def drops(self, name: str, version: str) -> bool:
        """Whether this version's webhook is never sent."""
        rng = random.Random(f"{self.seed}:{name}:{version}")  # noqa: S311 - a reproducible run, not a secret
        return rng.random() < self.loss_rate

    def _relay(self, headers: dict[str, str], body: bytes) -> int:
        try:
            data = json.loads(body).get("data") or {}
            key = (str(data.get("name", "")), str(data.get("version", "")))
        except (ValueError, AttributeError):
            key = ("", "")
        if key[1] and self.drops(*key):
            with self.lock:
                self.dropped.add(key)
                self.answers["dropped"] += 1
            return 200
        forward = {k: v for k, v in headers.items() if k.lower().startswith("x-mlflow") or k.lower() == "content-type"}
        try:
            answer = requests.post(f"{self.host.url}/api/webhooks/mlflow", data=body, headers=forward, timeout=20)
            status, outcome = answer.status_code, str(answer.status_code)
        except requests.RequestException as exc:  # the host is down: MLflow retries a few times, then gives up
            status, outcome = 502, type(exc).__name__
        with self.lock:
            self.answers[outcome] += 1
            if status < 300 and key[1]:
                self.forwarded.add(key)
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = relay._relay(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@dataclass
class Manual:
    """A version registered by hand (a notebook's ``register_model``): no job, no poll; a webhook or the sweep."""

    lifecycle: Lifecycle
    version: str | None = None
    registered_at: float | None = None  # the registry's creation time, epoch seconds
    error: str | None = None


def register_by_hand(trainer: SyntheticTrainer, manual: Manual, due: float) -> None:
    """Register one version at its time, straight into the MLflow server (retried: the server is not faulted)."""
    from mlflow import MlflowClient

    time.sleep(max(0.0, due - time.monotonic()))
    lc = manual.lifecycle
    for attempt in range(5):
        try:
            _, version = trainer.train({"model_name": lc.model}, lc.quality)
            client = MlflowClient(tracking_uri=trainer.mlflow_url, registry_uri=trainer.mlflow_url)
            created = client.get_model_version(lc.model, version).creation_timestamp
            manual.version, manual.registered_at = version, created / 1000
            return
        except Exception as exc:
            manual.error = f"{type(exc).__name__}: {exc}"[:200]
            time.sleep(1.0 + attempt)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Counts production versions per model in the registry, over and over, for the whole run."""

    tracking_uri: str
    interval: float = 0.5
    samples: int = 0
    worst: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def production(self) -> dict[str, list[str]]:
        """Model → versions tagged ``stage=production`` right now."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        found: dict[str, list[str]] = defaultdict(list)
        for version in client.search_model_versions("tags.stage = 'production'", max_results=10_000):
            found[version.name].append(version.version)
        return found

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop.wait(self.interval):
            try:
                found = self.production()
            except Exception:  # the sampler must outlive a slow or busy server
                self.errors += 1
                continue
            self.samples += 1
            for model, versions in found.items():
                self.worst[model] = max(self.worst.get(model, 0), len(versions))
                if len(versions) > 1:
                    self.violations.append(f"{model}: versions {', '.join(sorted(versions))} at once")

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()


def _queues(state_dir: Path) -> Any:
    from shared.adapters.local.queues import LocalQueues

    return LocalQueues(state_dir / "queues.sqlite3")


def _settled(state_dir: Path) -> tuple[bool, dict[str, dict[str, int]]]:
    queues = _queues(state_dir)
    try:
        counts = {name: queues.counts(name) for name in QUEUES}
    finally:
        queues.close()
    busy = sum(c["active"] + c["scheduled"] + c["locked"] for c in counts.values())
    return busy == 0, counts


def _dead_letters(state_dir: Path) -> list[Any]:
    queues = _queues(state_dir)
    try:
        return [m for name in QUEUES for m in queues.peek(name, dead_letter=True, limit=100_000)]
    finally:
        queues.close()


def _lifecycles(config: ChaosConfig, landing: Path) -> list[Lifecycle]:
    """What each lifecycle will land and what becomes of its event; nothing is written yet."""
    rng = random.Random(config.seed)  # noqa: S311 - a reproducible run, not a secret
    fates = random.Random(config.seed + 2)  # noqa: S311 - its own sequence: the other draws stay as they were
    per_model = max(1, config.lifecycles // config.models)
    out = []
    for index in range(config.lifecycles):
        m = index % config.models
        # Quality mostly improves over a model's lifecycles, with noise: some challengers win, some lose.
        step = index // config.models
        quality = int(min(100, max(0, 20 + 70 * step / per_model + rng.gauss(0, 12))))
        name = model_name(m)
        poison = rng.random() < config.poison_rate
        blob_path = f"{name}/lc-{index:05d}-q{quality:03d}{'-broken' if poison else ''}.csv"
        path = landing / "landing" / blob_path
        copies = 1 + (rng.randint(1, 2) if rng.random() < config.duplicate_rate else 0)
        draw = fates.random()
        fate = (
            LOST
            if draw < config.event_loss_rate
            else DEAD_LETTERED
            if draw < config.event_loss_rate + config.deadletter_rate
            else DELIVERED
        )
        manual = not poison and fates.random() < config.manual_rate
        out.append(
            Lifecycle(index, name, quality, path, blob_path, copies if fate == DELIVERED else 1, poison, fate, manual)
        )
    return out


def host_environment(
    config: ChaosConfig, state_dir: Path, catalogue: Path, queues: Path, workspace: str, webhook_secret: str
) -> dict[str, str]:
    """The app settings of the host under test: Databricks compute and serving, MLflow through the proxy."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SIGNALBOX_", "MLFLOW_", "DATABRICKS_", "AZURE"))
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SIGNALBOX_STATE_DIR": str(state_dir),
            "SIGNALBOX_CATALOGUE": str(catalogue),
            "SIGNALBOX_QUEUES_FILE": str(queues),
            "SIGNALBOX_ENVIRONMENT": "dev",
            "SIGNALBOX_SERVING": "databricks",
            "DATABRICKS_HOST": workspace,
            "DATABRICKS_TOKEN": "dapi-chaos-" + os.urandom(8).hex(),
            "MLFLOW_TRACKING_URI": workspace,
            "SIGNALBOX_POLL_INITIAL_SECONDS": "0.5",
            "SIGNALBOX_POLL_MAX_SECONDS": "2",
            "SIGNALBOX_POLL_MAX_ATTEMPTS": "200",
            # The clients fail fast on an injected stall; a failed hop is retried by its queue.
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CLIENT_TIMEOUT),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",  # an int for MLflow; Retry-After still applies
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
            "SIGNALBOX_DATABRICKS_HTTP_TIMEOUT_SECONDS": str(CLIENT_TIMEOUT),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "SIGNALBOX_MLFLOW_WEBHOOK_SECRET": webhook_secret,
            # Sweeps often enough for a run of minutes: the bound on detecting a loss is interval + grace.
            "SIGNALBOX_RECONCILE_SCHEDULE": config.sweep_schedule,
            "SIGNALBOX_RECONCILE_GRACE_SECONDS": str(config.sweep_grace),
            # Transient retries and capacity relaunches within the run's minutes (defaults: 5 s .. 600 s).
            "SIGNALBOX_RETRY_INITIAL_SECONDS": "1",
            "SIGNALBOX_RETRY_MAX_SECONDS": "10",
        }
    )
    return env


@dataclass
class Report:
    """The figures of one run."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        """One figure."""
        self.rows.append((name, str(value)))

    def check(self, ok: bool, claim: str, detail: str = "") -> None:
        """One invariant: printed as held or broken."""
        self.rows.append((claim, "HOLDS" if ok else f"BROKEN {detail}".strip()))
        if not ok:
            self.failures.append(f"{claim}: {detail}")

    def print(self, out: TextIO) -> None:
        """The table."""
        width = max(len(name) for name, _ in self.rows)
        for name, value in self.rows:
            print(f"  {name.ljust(width)}  {value}", file=out)


def run_chaos(config: ChaosConfig, out: TextIO = sys.stdout) -> int:
    """Run it; 0 when every claim holds."""
    began = time.monotonic()
    owned = config.state_dir is None
    root = Path(tempfile.mkdtemp(prefix="signalbox-chaos-")) if owned else Path(config.state_dir or ".")
    root.mkdir(parents=True, exist_ok=True)
    state_dir = root / "host"
    state_dir.mkdir(exist_ok=True)
    print(
        f"signalbox chaos: {config.lifecycles} lifecycles over {config.models} models, faults {config.fault_rate:.0%}, "
        f"duplicates {config.duplicate_rate:.0%}, {config.kills} kills; events lost {config.event_loss_rate:.0%}, "
        f"dead-lettered {config.deadletter_rate:.0%}, webhooks lost {config.webhook_loss_rate:.0%}, "
        f"versions by hand {config.manual_rate:.0%}; capacity failures {config.capacity_failure_rate:.0%}, "
        f"slow updates {config.slow_update_rate:.0%}; sweeps {config.sweep_schedule!r}, "
        f"grace {config.sweep_grace:g} s; state in {root}",
        file=out,
        flush=True,
    )

    from signalbox.chaos.workspace import SyntheticTrainer
    from signalbox.mlflow_server import MlflowServer, ensure_model_version_webhook

    # The versions registered by hand here, and the workspace's jobs, would print MLflow's run links and notes.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is imported, here and in the workspace

    if threading.current_thread() is threading.main_thread():
        # A stopped run (timeout, CI cancel) still stops its servers and the host.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mlflow = MlflowServer(root / "mlflow")
    workspace: Workspace | None = None
    host: HostProcess | None = None
    sampler: Sampler | None = None
    relay: WebhookRelay | None = None
    trainer: SyntheticTrainer | None = None
    try:
        mlflow.start()
        workspace = Workspace(mlflow.url, config, root / "workspace.log")
        workspace.start()
        catalogue = write_catalogue(root, config.models)
        queues = write_queues(root)
        secret = os.urandom(16).hex()
        env = host_environment(config, state_dir, catalogue, queues, workspace.url, secret)
        host = HostProcess(state_dir, env=env)
        relay = WebhookRelay(host, config.webhook_loss_rate, config.seed)
        relay.start()
        # As `signalbox host --with-mlflow` does, but through the relay that loses some deliveries.
        ensure_model_version_webhook(mlflow.url, "signalbox-chaos", relay.url, secret)
        host.start(timeout=90)
        sampler = Sampler(mlflow.url)
        threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
        trainer = SyntheticTrainer(mlflow.url)
        lifecycles = _lifecycles(config, state_dir / "landing")
        manual = [Manual(lc) for lc in lifecycles if lc.manual]
        report = _drive(config, host, workspace, relay, trainer, lifecycles, manual, began, out)
        sampler.stop()
        report = _check(config, report, host, workspace, sampler, relay, lifecycles, manual, state_dir)
        report.add("wall time", f"{time.monotonic() - began:.0f} s")
        print("\nfigures of this run:", file=out)
        report.print(out)
        if report.failures:
            print("\nFAILED: " + "; ".join(report.failures), file=out)
            return 1
        print("\nall claims hold", file=out)
        return 0
    finally:
        if sampler is not None:
            sampler.stop()
        if host is not None:
            host.stop()
        if relay is not None:
            relay.stop()
        if trainer is not None:
            trainer.close()
        if workspace is not None:
            workspace.stop()
        mlflow.stop()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def _drive(
    config: ChaosConfig,
    host: HostProcess,
    workspace: Workspace,
    relay: WebhookRelay,
    trainer: SyntheticTrainer,
    lifecycles: list[Lifecycle],
    manual: list[Manual],
    began: float,
    out: TextIO,
) -> Report:
    """Feed the events, kill the host now and then, and wait until every queue is empty and nothing is missing."""
    rng = random.Random(config.seed + 1)  # noqa: S311 - a reproducible run, not a secret
    grid = EventGrid(host, host.state_dir)
    start = time.monotonic()
    feed_seconds = config.lifecycles / config.rate
    schedule: list[tuple[float, int, int]] = []
    for lc in lifecycles:
        first = start + lc.index / config.rate
        heapq.heappush(schedule, (first, lc.index, 0))
        for copy in range(1, lc.copies):
            # A redelivery: now and then at once, mostly later (Event Grid retries when it saw no answer).
            heapq.heappush(schedule, (first + rng.choice([0.0, rng.uniform(0.5, 30.0)]), lc.index, copy))
    futures = []
    while schedule:
        due, index, _ = heapq.heappop(schedule)
        lc = lifecycles[index]
        futures.append(grid.pool.submit(grid.deliver if lc.fate == DELIVERED else grid.lose, lc, due))
    hands = ThreadPoolExecutor(max_workers=2, thread_name_prefix="by-hand")
    trainer.warm()
    for item in manual:
        # A data scientist registers a version of the model a little after the data landed.
        due = start + item.lifecycle.index / config.rate + rng.uniform(0.0, 5.0)
        futures.append(hands.submit(register_by_hand, trainer, item, due))

    # While events arrive and after, when the chains are deep in evaluation and deployment.
    kill_times = sorted(start + rng.uniform(0.1, 1.5) * feed_seconds for _ in range(config.kills))
    restarts: list[float] = []
    for when in kill_times:
        time.sleep(max(0.0, when - time.monotonic()))
        host.kill()
        print(f"  kill -9 at {time.monotonic() - began:.0f} s", file=out, flush=True)
        time.sleep(rng.uniform(0.2, 2.0))
        restarts.append(host.restart(timeout=90))
    for future in futures:
        future.result()
    grid.pool.shutdown()
    hands.shutdown()
    fed = time.monotonic()
    print(f"  all deliveries answered at {fed - began:.0f} s; draining the queues", file=out, flush=True)

    # Lost events are found by the sweeps only: wait for them too, up to twice the bound past the last loss.
    losses = [lc.landed_at or 0.0 for lc in lifecycles if lc.fate != DELIVERED]
    losses += [m.registered_at or 0.0 for m in manual]
    patience = 2 * (config.sweep_interval + max(config.sweep_grace, _landing_grace())) + 30
    give_up = max(losses, default=0.0) + patience
    quiet = 0
    counts: dict[str, dict[str, int]] = {}
    missing = "?"
    while True:
        if time.monotonic() - began > config.deadline:
            raise TimeoutError(f"the queues were not empty after the {config.deadline:.0f} s deadline: {counts}")
        time.sleep(1.0)
        if not host.running:
            raise RuntimeError(f"the host died on its own; see {host.log_path}")
        settled, counts = _settled(host.state_dir)
        quiet = quiet + 1 if settled else 0
        if quiet >= 3:
            missing = _missing(workspace, lifecycles, manual)
            if not missing or time.time() > give_up:
                break
            quiet = 0  # look again after three more quiet seconds
    drained = time.monotonic()
    if missing:
        print(f"  stopped waiting for the sweeps: {missing}", file=out, flush=True)

    # An operator replays what Event Grid dead-lettered: the files were trained by the sweep already.
    replay = _replay_dead_letters(host) if grid.dead_lettered else "none to replay"
    print(f"  Event Grid dead letters replayed: {replay}", file=out, flush=True)
    quiet = 0
    while quiet < 3:
        time.sleep(1.0)
        quiet = quiet + 1 if _settled(host.state_dir)[0] else 0

    report = Report()
    accepted = [lc for lc in lifecycles if lc.accepted_at is not None]
    report.add("lifecycles (landed files)", len(lifecycles))
    report.add("events delivered more than once", sum(lc.copies > 1 for lc in lifecycles))
    report.add("deliveries (incl. duplicates and retries)", grid.deliveries)
    report.add("delivery answers", ", ".join(f"{k}: {v}" for k, v in sorted(grid.statuses.items())))
    report.add("events accepted (200)", len(accepted))
    report.add("events never accepted", len(grid.gave_up))
    report.add(
        "events lost / only in Event Grid's dead letters",
        f"{sum(lc.fate == LOST for lc in lifecycles)} / {sum(lc.fate == DEAD_LETTERED for lc in lifecycles)}",
    )
    report.add("Event Grid dead letters replayed after the drain", replay)
    report.add(
        "versions registered by hand (failed)",
        f"{sum(m.version is not None for m in manual)} ({sum(m.version is None for m in manual)})",
    )
    report.add(
        "MLflow webhooks dropped / forwarded (answers)",
        f"{len(relay.dropped)} / {len(relay.forwarded)} ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(relay.answers.items()))
        + ")",
    )
    report.add("host kill -9 / restarts", f"{len(restarts)} / {len(restarts)}")
    if restarts:
        report.add("host restart time, mean / max", f"{sum(restarts) / len(restarts):.1f} s / {max(restarts):.1f} s")
    report.add("feed / drain time", f"{fed - start:.0f} s / {drained - fed:.0f} s")
    report.add("lifecycles per second (to drained)", f"{len(lifecycles) / (drained - start):.1f}")
    return report


def _landing_grace() -> float:
    """The landing sweep's own grace (a file younger than it waits for the next sweep)."""
    from shared.handlers.landing_sweep import GRACE

    return GRACE.total_seconds()


def _missing(workspace: Workspace, lifecycles: list[Lifecycle], manual: list[Manual]) -> str:
    """What is not found yet: landed files with no training run, versions by hand with no decision ("" if none)."""
    from mlflow import MlflowClient

    try:
        runs = workspace.get("runs")
        trained = {str(r.get("parameters", {}).get("data_uri", "")) for r in runs if not r.get("termination_code")}
        untrained = [lc for lc in lifecycles if lc.uri not in trained]
        undecided = 0
        if manual:
            client = MlflowClient(tracking_uri=workspace.mlflow_url, registry_uri=workspace.mlflow_url)
            for item in manual:
                if (
                    item.version is not None
                    and DECISION not in client.get_model_version(item.lifecycle.model, item.version).tags
                ):
                    undecided += 1
    except Exception as exc:
        return f"could not look ({type(exc).__name__})"
    parts = []
    if untrained:
        parts.append(f"{len(untrained)} landed files without a training")
    if undecided:
        parts.append(f"{undecided} versions registered by hand without a decision")
    return "; ".join(parts)


def _replay_dead_letters(host: HostProcess) -> str:
    """``signalbox dlq replay --source eventgrid`` against the host; its summary line."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalbox.cli",
            "dlq",
            "replay",
            "--source",
            "eventgrid",
            "--state-dir",
            str(host.state_dir),
            "--deliver-to",
            host.url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return f"exit {result.returncode}: {lines[-1] if lines else 'no output'}"[:160]


def _check(
    config: ChaosConfig,
    report: Report,
    host: HostProcess,
    workspace: Workspace,
    sampler: Sampler,
    relay: WebhookRelay,
    lifecycles: list[Lifecycle],
    manual: list[Manual],
    state_dir: Path,
) -> Report:
    """The claims, from the workspace's record, the registry, the events, the queues and their dead letters."""
    from mlflow import MlflowClient

    faults = workspace.get("faults")
    report.add("backend faults injected", _faults_text(faults))
    workspace.set_fault_rate(0.0)
    degrades = workspace.get("degrades")
    workspace.set_degrades(0.0, 0.0)
    runs = workspace.get("runs")
    run_now = workspace.get("run-now-calls")
    report.add("training runs launched / run-now calls", f"{len(runs)} / {run_now['count']}")

    # -- training: every landed file exactly once; capacity failures relaunched -------------------
    placed: dict[str, list[dict[str, Any]]] = defaultdict(list)  # runs the workspace could place
    unplaced: list[dict[str, Any]] = []
    for run in runs:
        (unplaced if run.get("termination_code") else placed[_data_uri(run)]).append(run)
    codes = Counter(str(r["termination_code"]) for r in unplaced)
    report.add(
        "runs failed for capacity (codes)",
        f"{len(unplaced)} (" + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())) + ")",
    )
    report.add(
        "slow config updates / config updates",
        f"{degrades.get('slow_updates', 0)} / {degrades.get('updates', 0)}",
    )
    orphans = []
    for failed in unplaced:
        later = [
            r
            for r in runs
            if _data_uri(r) == _data_uri(failed)
            and r["created_at"] > failed["created_at"]
            and r["idempotency_token"] != failed["idempotency_token"]
        ]
        if not later:
            orphans.append(f"run {failed['run_id']} ({failed['termination_code']})")
    report.check(
        not orphans,
        f"every capacity failure ({len(unplaced)}) relaunched as a new run",
        f"{len(orphans)} not relaunched: {', '.join(orphans[:5])}",
    )
    twice = {uri: len(r) for uri, r in placed.items() if len(r) > 1}
    report.check(not twice, "no cause launched two trainings", f"{len(twice)} files trained more than once")
    never = [lc.path.name for lc in lifecycles if lc.uri not in placed]
    report.check(
        not never and not twice,
        f"every landed file ({len(lifecycles)}) trained exactly once",
        f"{len(never)} never trained (e.g. {', '.join(never[:5])}), {len(twice)} more than once",
    )

    # -- the registry ------------------------------------------------------------------------------
    client = MlflowClient(tracking_uri=sampler.tracking_uri, registry_uri=sampler.tracking_uri)
    versions: dict[tuple[str, str], Any] = {}
    for m in range(config.models):
        for version in client.search_model_versions(f"name = '{model_name(m)}'", max_results=10_000):
            versions[(version.name, version.version)] = version

    dead = _dead_letters(state_dir)
    no_reason = [d for d in dead if not (d.dead_letter_reason and d.dead_letter_error_description)]
    dead_uris: set[str] = set()
    dead_versions: set[tuple[str, str]] = set()
    for letter in dead:
        try:
            command = json.loads(letter.body).get("command", {})
        except ValueError:
            continue
        if command.get("data_uri"):
            dead_uris.add(str(command["data_uri"]))
        if command.get("model_name") and command.get("version"):
            dead_versions.add((str(command["model_name"]), str(command["version"])))
        if command.get("run_id"):
            for run in runs:
                if str(run.get("run_id")) == str(command["run_id"]):
                    dead_uris.add(_data_uri(run))
    report.add("dead letters (with reason and description)", f"{len(dead)} ({len(dead) - len(no_reason)})")
    reasons = Counter((d.queue, d.dead_letter_reason) for d in dead)
    if reasons:
        report.add(
            "dead letters by queue and reason", ", ".join(f"{q}/{r}: {n}" for (q, r), n in sorted(reasons.items()))
        )

    outcomes: Counter[str] = Counter()
    lost: list[str] = []
    poison_kept: list[str] = []
    for lc in lifecycles:
        if lc.accepted_at is None and lc.fate == DELIVERED:
            continue  # never accepted: counted above
        outcome = _outcome(lc, placed.get(lc.uri, []), versions, dead_uris, dead_versions)
        outcomes[("poison " if lc.poison else "") + outcome] += 1
        if outcome == "LOST":
            lost.append(lc.path.name)
        if lc.poison and outcome != "dead-lettered":
            poison_kept.append(f"{lc.path.name}: {outcome}")
    report.add("landed files by outcome", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    report.check(
        not lost and not no_reason,
        "every landed file completed or dead-lettered with a reason",
        f"{len(lost)} lost (e.g. {', '.join(lost[:5])}); {len(no_reason)} dead letters without a reason",
    )
    poison = sum(lc.poison for lc in lifecycles if lc.accepted_at is not None or lc.fate != DELIVERED)
    report.check(
        not poison_kept,
        f"every poison lifecycle ({poison}) ended in the dead-letter queue",
        "; ".join(poison_kept[:5]),
    )

    by_hand = {(m.lifecycle.model, m.version) for m in manual if m.version is not None}
    undecided = sorted(
        f"{name} v{number}{' (by hand)' if (name, number) in by_hand else ''}"
        for (name, number), version in versions.items()
        if DECISION not in version.tags and (name, number) not in dead_versions
    )
    decided = sum(DECISION in v.tags for v in versions.values())
    report.add(
        "registered versions: by jobs / by hand; decided / evaluation dead-lettered",
        f"{len(versions) - len(by_hand)} / {len(by_hand)}; {decided} / {len(versions) - decided - len(undecided)}",
    )
    failed_by_hand = [m for m in manual if m.version is None]
    report.check(
        not undecided and not failed_by_hand,
        f"every registered version ({len(versions)}) decided",
        f"{len(undecided)} undecided (e.g. {', '.join(undecided[:5])}); {len(failed_by_hand)} registrations failed",
    )
    events = _events(state_dir)
    evaluated = Counter(
        (str(e.get("subject")), str((e.get("data") or {}).get("version")))
        for e in events
        if e.get("type") == "io.signalbox.VersionEvaluated"
    )
    again = {k: n for k, n in evaluated.items() if n > 1}
    report.check(
        not again,
        "no version evaluated twice",
        ", ".join(f"{name} v{number}: {n}" for (name, number), n in list(again.items())[:5]),
    )
    sweeps = [e for e in events if e.get("type") == "io.signalbox.Reconciled"]
    sent: Counter[str] = Counter()
    for e in sweeps:
        for counts in (e.get("data") or {}).values():
            if isinstance(counts, dict):
                sent.update({k: v for k, v in counts.items() if k.endswith("_sent") and isinstance(v, int)})
    report.add(
        "sweeps (Reconciled events): versions / files / polls sent",
        f"{len(sweeps)}: {sent['versions_sent']} / {sent['files_sent']} / {sent['runs_sent']}",
    )

    # -- detection latency of what was lost -------------------------------------------------------
    _latency(config, report, lifecycles, manual, relay, placed, events, state_dir)

    # -- production and serving --------------------------------------------------------------------
    production: dict[str, list[str]] = defaultdict(list)
    for (name, number), version in versions.items():
        if version.tags.get("stage") == "production":
            production[name].append(number)
    final_two = {name: v for name, v in production.items() if len(v) > 1}
    report.add("registry samples taken during the run", sampler.samples)
    report.check(
        not sampler.violations and not final_two,
        "never two production versions of one model",
        "; ".join(sampler.violations[:3] + [f"{n}: {v} at the end" for n, v in final_two.items()]),
    )

    # A config update the drain's last deployment began (a slow one takes seconds) is not "left": let it apply.
    settle_by = time.monotonic() + config.slow_update_seconds + 15
    endpoints = workspace.get("endpoints")
    while time.monotonic() < settle_by and any(e.get("config_update") == "IN_PROGRESS" for e in endpoints.values()):
        time.sleep(0.5)
        endpoints = workspace.get("endpoints")
    wrong = []
    stale = []
    for m in range(config.models):
        name = model_name(m)
        endpoint = endpoints.get(name) or {}
        serving = endpoint.get("serving_version")
        tagged = production.get(name, [None])[0]
        if str(serving) != str(tagged) if (serving or tagged) else False:
            wrong.append(f"{name}: serves v{serving}, production is v{tagged}")
        routed = {entity for entity, pct in (endpoint.get("routes") or {}).items() if pct}
        for entity, served in (endpoint.get("entities") or {}).items():
            if entity not in routed:
                stale.append(f"{name}: {entity} (v{served.get('version')}, {served.get('state')})")
                began = [
                    f"{time.strftime('%H:%M:%S', time.localtime(u['at']))} {u['entities']} {u['routes']}"
                    f"{' slow' if u.get('slow') else ''}"
                    for u in endpoint.get("updates") or []
                ]
                print(f"  {name}'s last config updates: {'; '.join(began)}", file=sys.stderr)
    report.add("models with a production version", f"{len(production)} of {config.models}")
    report.add(
        "deployments (versions that reached production)",
        sum(1 for v in versions.values() if v.tags.get("stage") in ("production", "surpassed")),
    )
    report.check(not wrong, "each endpoint serves the version tagged production", "; ".join(wrong[:5]))
    report.check(not stale, "no old served entity left serving after the drain", "; ".join(stale[:5]))
    aliases = []
    for m in range(config.models):
        name = model_name(m)
        tagged = production.get(name, [None])[0]
        try:
            champion: str | None = client.get_model_version_by_alias(name, "champion").version
        except Exception:  # no such alias (or model)
            champion = None
        if str(champion) != str(tagged):
            aliases.append(f"{name}: champion v{champion}, production v{tagged}")
    report.check(not aliases, "the champion alias points at the production version", "; ".join(aliases[:5]))
    return report


def _data_uri(run: dict[str, Any]) -> str:
    return str(run.get("parameters", {}).get("data_uri", ""))


def _events(state_dir: Path) -> list[dict[str, Any]]:
    """The host's lifecycle events (``events.jsonl``; a line a kill cut short is skipped)."""
    path = state_dir / "events.jsonl"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _first_sends(state_dir: Path, queue: str) -> dict[str, float]:
    """Message id → when it was first sent (epoch seconds), from the queue's duplicate-detection record."""
    import sqlite3

    with sqlite3.connect(state_dir / "queues.sqlite3") as conn:
        rows = conn.execute("SELECT message_id, expires_at FROM dedup WHERE queue = ?", (queue,)).fetchall()
    return {str(mid): expires / 1e6 - DEDUP_WINDOW_SECONDS for mid, expires in rows}


def _latency(
    config: ChaosConfig,
    report: Report,
    lifecycles: list[Lifecycle],
    manual: list[Manual],
    relay: WebhookRelay,
    placed: dict[str, list[dict[str, Any]]],
    events: list[dict[str, Any]],
    state_dir: Path,
) -> None:
    """From a lost event's landing or registration to the command the sweep sent, and to training/evaluation."""
    from shared.contracts import message_id_for
    from shared.handlers.ingress import landing_cause

    trains = _first_sends(state_dir, "train")
    evaluations = _first_sends(state_dir, "evaluate")
    fires = _sweep_fires(config, state_dir, lifecycles)
    ends = _sweep_ends(events)
    evaluated_at: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("type") == "io.signalbox.VersionEvaluated":
            key = (str(e.get("subject")), str((e.get("data") or {}).get("version")))
            moment = _epoch(str(e.get("time", "")))
            if moment is not None and key not in evaluated_at:
                evaluated_at[key] = moment

    landing_bound = config.sweep_interval + _landing_grace()
    registry_bound = config.sweep_interval + config.sweep_grace
    detect: list[tuple[float, float, str]] = []  # latency, bound, what (a file name, or "model vN")
    work: list[float] = []  # from the timer's fire to the command its sweep sent (queue wait and run)
    sent_after: list[float] = []  # from the loss to the command sent
    started: list[float] = []
    unknown = 0
    for lc in lifecycles:
        if lc.fate == DELIVERED or lc.event is None or lc.landed_at is None:
            continue
        cause = landing_cause("landing", lc.blob_path, str(lc.event["data"].get("eTag", "")))
        sent = trains.get(message_id_for("train", cause or ""))
        if sent is None:
            unknown += 1
            continue
        fired = _fired_for(fires.get(lc.model, []), ends.get(lc.model, []), sent)
        work.append(sent - fired)
        sent_after.append(sent - lc.landed_at)
        detect.append((fired - lc.landed_at, landing_bound, lc.path.name))
        runs = placed.get(lc.uri) or []
        if runs:
            started.append(min(float(r["created_at"]) for r in runs) - lc.landed_at)
    by_sweep = [m for m in manual if m.version and (m.lifecycle.model, m.version) in relay.dropped]
    done: list[float] = []
    for item in by_sweep:
        assert item.version is not None and item.registered_at is not None
        key = (item.lifecycle.model, item.version)
        sent = evaluations.get(message_id_for("evaluate", f"version:{key[0]}:{key[1]}"))
        if sent is None:
            unknown += 1
            continue
        fired = _fired_for(fires.get(key[0], []), ends.get(key[0], []), sent)
        work.append(sent - fired)
        sent_after.append(sent - item.registered_at)
        detect.append((fired - item.registered_at, registry_bound, f"{key[0]} v{key[1]}"))
        if key in evaluated_at:
            done.append(evaluated_at[key] - item.registered_at)
    landing = [d for d, _, what in detect if not _is_version(what)]
    registry = [d for d, _, what in detect if _is_version(what)]
    report.add(
        "losses the sweeps had to find: landed files / versions by hand",
        f"{sum(lc.fate != DELIVERED for lc in lifecycles)} / {len(by_sweep)}",
    )
    report.add(
        "detection latency (loss to the sweep that found it), worst: files / versions",
        f"{_worst(landing)} (bound {landing_bound:.0f} s) / {_worst(registry)} (bound {registry_bound:.0f} s)",
    )
    report.add("sweep's queue wait and run under the faults (timer to command sent), worst", _worst(work))
    report.add(
        "loss to command sent / to training launched / to evaluation done, worst",
        f"{_worst(sent_after)} / {_worst(started)} / {_worst(done)}",
    )
    late = sorted(((d - bound, what) for d, bound, what in detect if d > bound), reverse=True)
    report.check(
        not late and not unknown,
        "every loss detected within one sweep interval + grace",
        f"{len(late)} late (e.g. {', '.join(f'{w}: +{over:.0f} s' for over, w in late[:5])}); {unknown} never sent",
    )


def _sweep_fires(config: ChaosConfig, state_dir: Path, lifecycles: list[Lifecycle]) -> dict[str, list[float]]:
    """Model → when the reconcile timer sent its sweeps (epoch seconds, sorted), from the promote queue's record.

    ``schedule_sweeps`` sends one ``ReconcileModel`` per model and minute (cause ``reconcile:{model}:{minute}``).
    """
    from datetime import UTC, datetime

    from shared.contracts import message_id_for

    sends = _first_sends(state_dir, "promote")
    landed = [lc.landed_at for lc in lifecycles if lc.landed_at is not None]
    first = int((min(landed, default=time.time()) - 600) // 60)
    last = int(time.time() // 60) + 2
    out: dict[str, list[float]] = {}
    for m in range(config.models):
        name = model_name(m)
        found = []
        for minute in range(first, last):
            stamp = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M")
            sent = sends.get(message_id_for("reconcile", f"reconcile:{name}:{stamp}"))
            if sent is not None:
                found.append(sent)
        out[name] = sorted(found)
    return out


def _sweep_ends(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Model → when each of its sweeps ended (epoch seconds, sorted): its ``Reconciled`` event.

    A sweep that failed transiently publishes one and is retried; only its retry's counts as its end.
    """
    out: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("type") != "io.signalbox.Reconciled":
            continue
        failed = (e.get("data") or {}).get("failed") or {}
        moment = _epoch(str(e.get("time", "")))
        if moment is not None and not any(str(why).startswith("TransientError") for why in failed.values()):
            out[str(e.get("subject"))].append(moment)
    return {name: sorted(times) for name, times in out.items()}


def _fired_for(fires: list[float], ends: list[float], sent: float) -> float:
    """When the timer sent the sweep that sent a command at ``sent``.

    One model's sweeps run one at a time in the order sent (its session), so the sweep that sent it
    is the first to end at or after ``sent``, and the n-th sweep to end is the n-th the timer sent.
    Where that pairing does not hold (a sweep lost), the last sweep sent before ``sent``.
    """
    index = next((i for i, end in enumerate(ends) if end >= sent), None)
    if index is not None and index < len(fires) and fires[index] <= sent:
        return fires[index]
    earlier = [f for f in fires if f <= sent]
    return earlier[-1] if earlier else sent


def _is_version(what: str) -> bool:
    return " v" in what  # "model vN"; a landed file's name has no space


def _worst(values: list[float]) -> str:
    return f"{max(values):.0f} s" if values else "-"


def _epoch(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _faults_text(faults: dict[str, Any]) -> str:
    """``N of M requests (kind: n, ...)`` from the workspace's fault counts."""
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(faults["by_kind"].items()))
    return f"{faults['total']} of {faults['requests']} requests" + (f" ({kinds})" if kinds else "")


def _outcome(
    lc: Lifecycle,
    runs: list[dict[str, Any]],
    versions: dict[tuple[str, str], Any],
    dead_uris: set[str],
    dead_versions: set[tuple[str, str]],
) -> str:
    """Where one accepted event's lifecycle ended."""
    if lc.uri in dead_uris:
        return "dead-lettered"
    numbers = [str(r.get("model_version")) for r in runs if r.get("model_version")]
    if not numbers:
        return "LOST"
    for number in numbers:
        if (lc.model, number) in dead_versions:
            return "dead-lettered"
        version = versions.get((lc.model, number))
        if version is None:
            return "LOST"
        tags = version.tags
        stage = tags.get("stage")
        if stage in ("production", "surpassed"):
            return "deployed"
        if stage == "unstaged":
            return "unstaged" if "rolled back" not in tags.get("signalbox.outcome", "") else "rolled back"
        decision = read_record(tags.get(DECISION))
        if decision and decision.get("won") is False:
            return "lost evaluation"
        if decision and tags.get("signalbox.outcome", "").startswith("lost to staged"):
            return "lost to a staged version"
    return "LOST"


def main(argv: list[str] | None = None) -> int:
    """``python -m signalbox.chaos.run``."""
    return run_chaos(config_from(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
