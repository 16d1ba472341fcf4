"""Ingress against a real ``signalbox host`` process: latency, throughput, the drift storm and the host's RSS.

The host runs only ingress functions (``landing_events``, ``alert_events``, ``workspace_events``), so
nothing consumes the queues and every command the deliveries enqueued stays there to be counted.

The enqueue is synchronous: ``landing_events`` commits the ``train`` message to the local queue (SQLite)
before the function returns, and the host answers 200 only after the function returned. So the 200 marks
"enqueued"; the latency run checks after each answer (outside the timed part) that the message is visible.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.host import MODEL, Host, start_host
from bench.table import Row, median, percentile

BATCH = 100
DUPLICATES_PER_BATCH = 20  # redeliveries (same event id) in each batch of 100
LATENCY_GOAL_MS = 25.0
THROUGHPUT_GOAL = 2000.0


@dataclass(frozen=True)
class Sizes:
    """How many events each figure sends."""

    latency_events: int
    ingest_batches: int
    drift_alerts: int


FULL = Sizes(latency_events=1000, ingest_batches=100, drift_alerts=10_000)
QUICK = Sizes(latency_events=50, ingest_batches=5, drift_alerts=500)


class Landing:
    """Files in the host's landing zone and the BlobCreated events that announce them."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "landing" / "landing" / "iris"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def new_events(self, n: int) -> list[dict[str, Any]]:
        """Land ``n`` new small files; one BlobCreated each (a fresh event id)."""
        events = []
        for _ in range(n):
            self.count += 1
            name = f"batch-{self.count:06d}.csv"
            path = self.folder / name
            path.write_text("sepal_length,target\n5.1,setosa\n", encoding="utf-8")
            events.append(
                {
                    "id": str(uuid.uuid4()),
                    "topic": "/subscriptions/bench/resourceGroups/bench/providers/Microsoft.Storage/storageAccounts/b",
                    "subject": f"/blobServices/default/containers/landing/blobs/iris/{name}",
                    "eventType": "Microsoft.Storage.BlobCreated",
                    "eventTime": "2026-11-23T10:00:00Z",
                    "dataVersion": "",
                    "metadataVersion": "1",
                    "data": {"api": "PutBlob", "contentLength": 32, "blobType": "BlockBlob", "url": path.as_uri()},
                }
            )
        return events


def drift_alert() -> dict[str, Any]:
    """Signalbox's drift CloudEvent for the bench model (a fresh id)."""
    return {
        "specversion": "1.0",
        "type": "io.signalbox.drift.detected",
        "source": "/bench/drift-monitor",
        "id": str(uuid.uuid4()),
        "time": "2026-11-23T10:00:00Z",
        "subject": f"models/{MODEL}",
        "datacontenttype": "application/json",
        "data": {"model_name": MODEL, "metric": "psi", "score": 0.31, "threshold": 0.2},
    }


class Sender:
    """Posts deliveries to the host over one keep-alive connection, as an Event Grid subscription would."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.session = requests.Session()
        self.code = host.keys["systemKeys"]["eventgrid_extension"]

    def post(self, function: str, body: bytes, content_type: str = "application/json") -> None:
        """One delivery; anything but 200 is an error."""
        answer = self.session.post(
            self.host.event_grid_url,
            params={"functionName": function, "code": self.code},
            data=body,
            headers={"Content-Type": content_type, "aeg-event-type": "Notification"},
            timeout=120,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{function} answered {answer.status_code}: {answer.text[:300]}")


def run_completed() -> dict[str, Any]:
    """An Azure ML RunCompleted for the bench model (a fresh id and run): its handler only enqueues a poll."""
    return {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/bench/resourceGroups/bench/providers/Microsoft.MachineLearningServices/workspaces/b",
        "subject": "experiments/bench/runs/r",
        "eventType": "Microsoft.MachineLearningServices.RunCompleted",
        "eventTime": "2026-11-23T10:00:00Z",
        "dataVersion": "2",
        "data": {"runId": uuid.uuid4().hex, "experimentName": MODEL, "runTags": {"signalbox.model": MODEL}},
    }


def train_commands(state_dir: Path) -> list[dict[str, Any]]:
    """Every command waiting in the ``train`` queue (read-only, straight from SQLite)."""
    uri = f"file:{state_dir / 'queues.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT body FROM messages WHERE queue = 'train' AND dead_lettered = 0").fetchall()
    return [json.loads(body)["command"] for (body,) in rows]


def queue_count(state_dir: Path, queue: str = "train") -> int:
    """How many messages wait in ``queue``."""
    uri = f"file:{state_dir / 'queues.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0])


@contextmanager
def peak_rss(process: psutil.Process, interval: float = 0.05) -> Iterator[list[int]]:
    """Sample the process's RSS in a thread while the block runs; the list holds the peak at the end."""
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)


def latency(host: Host, sender: Sender, events: list[dict[str, Any]]) -> list[float]:
    """Seconds from sending a one-event BlobCreated delivery to its 200, for each event in turn."""
    samples = []
    expected = queue_count(host.state_dir)
    for event in events:
        body = json.dumps([event]).encode()
        started = time.perf_counter()
        sender.post("landing_events", body)
        samples.append(time.perf_counter() - started)
        expected += 1
        if queue_count(host.state_dir) != expected:
            raise RuntimeError("a 200 came back before the train command was visible in the queue")
    return samples


def ingest(host: Host, sender: Sender, landing: Landing, batches: int, delivered: list[dict[str, Any]]) -> float:
    """Events per second over ``batches`` deliveries of 100 (80 new, 20 redelivered), checked after."""
    before = queue_count(host.state_dir)
    bodies, previous = [], delivered
    for _ in range(batches):
        fresh = landing.new_events(BATCH - DUPLICATES_PER_BATCH)
        # Event Grid is at-least-once: the same event (same id) arrives again in a later delivery.
        bodies.append(json.dumps(fresh + previous[:DUPLICATES_PER_BATCH]).encode())
        previous = fresh
    started = time.perf_counter()
    for body in bodies:
        sender.post("landing_events", body)
    elapsed = time.perf_counter() - started
    enqueued = queue_count(host.state_dir) - before
    if enqueued != batches * (BATCH - DUPLICATES_PER_BATCH):
        raise RuntimeError(f"expected one train command per new event, found {enqueued}")
    return batches * BATCH / elapsed


def ingest_without_registry(host: Host, sender: Sender, batches: int) -> float:
    """The same deliveries (100 a batch, 20 redelivered) of RunCompleted events: host path and enqueue only."""
    previous = [run_completed() for _ in range(DUPLICATES_PER_BATCH)]
    sender.post("workspace_events", json.dumps(previous).encode())  # untimed: the first batch redelivers these
    bodies = []
    for _ in range(batches):
        fresh = [run_completed() for _ in range(BATCH - DUPLICATES_PER_BATCH)]
        bodies.append(json.dumps(fresh + previous[:DUPLICATES_PER_BATCH]).encode())
        previous = fresh
    before = queue_count(host.state_dir, "poll-run")
    started = time.perf_counter()
    for body in bodies:
        sender.post("workspace_events", body)
    elapsed = time.perf_counter() - started
    enqueued = queue_count(host.state_dir, "poll-run") - before
    if enqueued != batches * (BATCH - DUPLICATES_PER_BATCH):
        raise RuntimeError(f"expected one poll command per new RunCompleted, found {enqueued}")
    return batches * BATCH / elapsed


def drift_storm(host: Host, sender: Sender, alerts: int) -> tuple[int, float]:
    """Drift trainings enqueued after ``alerts`` drift CloudEvents (batches of 100), and the seconds it took."""
    started = time.perf_counter()
    for start in range(0, alerts, BATCH):
        batch = [drift_alert() for _ in range(min(BATCH, alerts - start))]
        sender.post("alert_events", json.dumps(batch).encode(), "application/cloudevents-batch+json")
    elapsed = time.perf_counter() - started
    drift = [c for c in train_commands(host.state_dir) if c.get("reason") == "drift"]
    return len(drift), elapsed


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def run(quick: bool) -> list[Row]:
    """Start a host, measure every ingress figure against it, stop it."""
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="signalbox-bench-") as tmp:
        host = start_host(Path(tmp) / "state", functions=("landing_events", "alert_events", "workspace_events"))
        try:
            process = psutil.Process(host.process.pid)
            sender = Sender(host)
            landing = Landing(host.state_dir)
            warm = landing.new_events(1)
            sender.post("landing_events", json.dumps(warm).encode())  # bootstraps the services once
            time.sleep(1.0)
            at_rest = process.memory_info().rss
            delivered = landing.new_events(sizes.latency_events)
            samples = latency(host, sender, delivered)
            p50, p99 = median(samples) * 1000, percentile(samples, 0.99) * 1000
            with peak_rss(process) as peak:
                # The first batch's duplicates are events the latency run delivered.
                rate = ingest(host, sender, landing, sizes.ingest_batches, delivered[-DUPLICATES_PER_BATCH:])
            bare_rate = ingest_without_registry(host, sender, sizes.ingest_batches)
            trainings, storm_seconds = drift_storm(host, sender, sizes.drift_alerts)
        finally:
            host.stop()
    n_lat, n_ing = sizes.latency_events, sizes.ingest_batches * BATCH
    return [
        Row(
            f"event accepted -> command enqueued, local host over HTTP ({n_lat} one-event deliveries)",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            goal=f"p99 <= {LATENCY_GOAL_MS:.0f} ms",
            met=p99 <= LATENCY_GOAL_MS,
        ),
        Row(
            f"ingest throughput, Event Grid batches of {BATCH} ({n_ing:,} events, 20% duplicates)",
            f"{rate:,.0f} events/s",
            goal=f">= {THROUGHPUT_GOAL:,.0f} events/s",
            met=rate >= THROUGHPUT_GOAL,
        ),
        Row(
            f"  the same without a registry write (RunCompleted -> poll command; {n_ing:,} events)",
            f"{bare_rate:,.0f} events/s",
        ),
        Row(
            f"drift storm: {sizes.drift_alerts:,} alerts for one model",
            f"{trainings} training launched ({sizes.drift_alerts / storm_seconds:,.0f} alerts/s)",
            goal="exactly 1 training",
            met=trainings == 1,
        ),
        Row("local host RSS at rest (services loaded, idle)", _mib(at_rest)),
        Row("local host RSS under the ingest load (peak)", _mib(peak[0])),
    ]
