"""The fault-injection run: many model lifecycles on the local host while everything goes wrong.

    signalbox chaos [--lifecycles 1000] [--models 20] [--fault-rate 0.2] [--duplicate-rate 0.3]
                    [--kills 5] [--rate 8] [--deadline 1500] [--seed 7] [--state-dir DIR]

It starts a real MLflow server (SQL store), a fake Databricks workspace whose Jobs and Model
Serving APIs — and a proxy in front of MLflow — fail at random (throttling, 5xx, timeouts;
``signalbox/chaos/workspace.py``), and ``signalbox host`` as a separate process wired to them
(Databricks compute and serving adapters, the MLflow registry through the faulty proxy). It then
acts as Event Grid: one landed file (BlobCreated) per lifecycle, a share of them delivered two or
three times, each delivery retried until the host answers 200, while the host is killed with
``kill -9`` and restarted several times. A few lifecycles (``--poison-rate``) land data whose model
fails every evaluation. When every queue is empty it checks, and prints:

- every accepted event ended completed or in a dead-letter queue with a reason (nothing lost);
- no cause launched two trainings (runs per landed file, from the workspace's own record);
- never two production versions of one model (the registry, sampled through the whole run);
- each endpoint serves the version tagged production (and the champion alias points at it);
- every poison lifecycle ended in a dead-letter queue.

Exit status 0 only when all four hold. Every figure printed is measured by this run.
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
from pathlib import Path
from typing import Any, TextIO

import requests

from shared.domain import DECISION, read_record
from signalbox.chaos.options import ChaosConfig, build_parser, config_from
from signalbox.client import blob_created_event
from signalbox.localhost.process import HostProcess, free_port

QUEUES = ("train", "poll-run", "evaluate", "promote", "deploy")


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
    uri: str
    event: dict[str, Any]
    copies: int = 1
    poison: bool = False
    accepted_at: float | None = None
    attempts: int = 0
    refusals: Counter[str] = field(default_factory=Counter)


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

    def _code(self) -> str:
        keys = json.loads((self.state_dir / "host-keys.json").read_text(encoding="utf-8"))
        return str(keys["systemKeys"]["eventgrid_extension"])

    def deliver(self, lifecycle: Lifecycle, due: float) -> None:
        """One delivery of the event: wait for its time, then POST until accepted (Event Grid's retry policy)."""
        time.sleep(max(0.0, due - time.monotonic()))
        backoff = 0.25
        for _ in range(self.max_attempts):
            with self.lock:
                self.deliveries += 1
                lifecycle.attempts += 1
            try:
                answer = requests.post(
                    f"{self.host.url}/runtime/webhooks/EventGrid",
                    params={"functionName": "landing_events", "code": self._code()},
                    json=[lifecycle.event],
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
    rng = random.Random(config.seed)  # noqa: S311 - a reproducible run, not a secret
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x,target\n1,2\n2,4\n", encoding="utf-8")
        event = blob_created_event(path, "landing", blob_path)
        copies = 1 + (rng.randint(1, 2) if rng.random() < config.duplicate_rate else 0)
        out.append(Lifecycle(index, name, quality, event["data"]["url"], event, copies, poison))
    return out


def host_environment(
    config: ChaosConfig, state_dir: Path, catalogue: Path, queues: Path, workspace: str
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
        f"duplicates {config.duplicate_rate:.0%}, {config.kills} kills; state in {root}",
        file=out,
        flush=True,
    )

    from signalbox.mlflow_server import MlflowServer

    if threading.current_thread() is threading.main_thread():
        # A stopped run (timeout, CI cancel) still stops its servers and the host.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mlflow = MlflowServer(root / "mlflow")
    workspace: Workspace | None = None
    host: HostProcess | None = None
    sampler: Sampler | None = None
    try:
        mlflow.start()
        workspace = Workspace(mlflow.url, config, root / "workspace.log")
        workspace.start()
        catalogue = write_catalogue(root, config.models)
        queues = write_queues(root)
        host = HostProcess(state_dir, env=host_environment(config, state_dir, catalogue, queues, workspace.url))
        host.start(timeout=90)
        sampler = Sampler(mlflow.url)
        threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
        lifecycles = _lifecycles(config, state_dir / "landing")
        report = _drive(config, host, lifecycles, began, out)
        sampler.stop()
        report = _check(config, report, host, workspace, sampler, lifecycles, state_dir)
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
        if workspace is not None:
            workspace.stop()
        mlflow.stop()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def _drive(config: ChaosConfig, host: HostProcess, lifecycles: list[Lifecycle], began: float, out: TextIO) -> Report:
    """Feed the events, kill the host now and then, and wait until every queue is empty."""
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
        futures.append(grid.pool.submit(grid.deliver, lifecycles[index], due))

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
    fed = time.monotonic()
    print(f"  all deliveries answered at {fed - began:.0f} s; draining the queues", file=out, flush=True)

    quiet = 0
    counts: dict[str, dict[str, int]] = {}
    while quiet < 3:
        if time.monotonic() - began > config.deadline:
            raise TimeoutError(f"the queues were not empty after the {config.deadline:.0f} s deadline: {counts}")
        time.sleep(1.0)
        if not host.running:
            raise RuntimeError(f"the host died on its own; see {host.log_path}")
        settled, counts = _settled(host.state_dir)
        quiet = quiet + 1 if settled else 0
    drained = time.monotonic()

    report = Report()
    accepted = [lc for lc in lifecycles if lc.accepted_at is not None]
    report.add("lifecycles (landed files)", len(lifecycles))
    report.add("events delivered more than once", sum(lc.copies > 1 for lc in lifecycles))
    report.add("deliveries (incl. duplicates and retries)", grid.deliveries)
    report.add("delivery answers", ", ".join(f"{k}: {v}" for k, v in sorted(grid.statuses.items())))
    report.add("events accepted (200)", len(accepted))
    report.add("events never accepted", len(grid.gave_up))
    report.add("host kill -9 / restarts", f"{len(restarts)} / {len(restarts)}")
    if restarts:
        report.add("host restart time, mean / max", f"{sum(restarts) / len(restarts):.1f} s / {max(restarts):.1f} s")
    report.add("feed / drain time", f"{fed - start:.0f} s / {drained - fed:.0f} s")
    report.add("lifecycles per second (to drained)", f"{len(lifecycles) / (drained - start):.1f}")
    return report


def _check(
    config: ChaosConfig,
    report: Report,
    host: HostProcess,
    workspace: Workspace,
    sampler: Sampler,
    lifecycles: list[Lifecycle],
    state_dir: Path,
) -> Report:
    """The four claims, from the workspace's record, the registry and the dead-letter queues."""
    from mlflow import MlflowClient

    faults = workspace.get("faults")
    report.add("backend faults injected", _faults_text(faults))
    workspace.set_fault_rate(0.0)
    runs = workspace.get("runs")
    run_now = workspace.get("run-now-calls")
    report.add("training runs launched / run-now calls", f"{len(runs)} / {run_now['count']}")

    by_uri: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_uri[str(run.get("parameters", {}).get("data_uri", ""))].append(run)
    twice = {uri: len(r) for uri, r in by_uri.items() if len(r) > 1}
    report.check(not twice, "no cause launched two trainings", f"{len(twice)} files trained more than once")

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
                    dead_uris.add(str(run.get("parameters", {}).get("data_uri", "")))
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
        if lc.accepted_at is None:
            continue
        outcome = _outcome(lc, by_uri.get(lc.uri, []), versions, dead_uris, dead_versions)
        outcomes[("poison " if lc.poison else "") + outcome] += 1
        if outcome == "LOST":
            lost.append(lc.uri.rsplit("/", 1)[-1])
        if lc.poison and outcome != "dead-lettered":
            poison_kept.append(f"{lc.uri.rsplit('/', 1)[-1]}: {outcome}")
    report.add("accepted events by outcome", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    report.check(
        not lost and not no_reason,
        "every accepted event completed or dead-lettered with a reason",
        f"{len(lost)} lost (e.g. {', '.join(lost[:5])}); {len(no_reason)} dead letters without a reason",
    )
    poison = sum(lc.poison for lc in lifecycles if lc.accepted_at is not None)
    report.check(
        not poison_kept,
        f"every poison lifecycle ({poison}) ended in the dead-letter queue",
        "; ".join(poison_kept[:5]),
    )

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

    endpoints = workspace.get("endpoints")
    wrong = []
    for m in range(config.models):
        name = model_name(m)
        serving = (endpoints.get(name) or {}).get("serving_version")
        tagged = production.get(name, [None])[0]
        if str(serving) != str(tagged) if (serving or tagged) else False:
            wrong.append(f"{name}: serves v{serving}, production is v{tagged}")
    report.add("models with a production version", f"{len(production)} of {config.models}")
    report.add(
        "deployments (versions that reached production)",
        sum(1 for v in versions.values() if v.tags.get("stage") in ("production", "surpassed")),
    )
    report.check(not wrong, "each endpoint serves the version tagged production", "; ".join(wrong[:5]))
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
