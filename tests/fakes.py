"""In-memory fakes of the ports, for fast handler tests (no SDK, no process)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.catalogue import Catalogue, load_catalogue
from shared.contracts import Envelope
from shared.deadletters.ports import DeadLetter, DeadLetterPorts, ReplayMessage
from shared.errors import DeploymentFailed
from shared.ports import Deployment, JobRequest, ModelVersion, Readiness, RunStatus, ScoringFrame
from shared.services import Services
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, now: datetime = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeBus:
    """Keeps what was sent; drops a repeated message id as duplicate detection does."""

    sent: list[tuple[Envelope, datetime | None]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def send(self, envelope: Envelope, *, scheduled_at: datetime | None = None) -> None:
        if envelope.transport_id in self.seen:
            return
        self.seen.add(envelope.transport_id)
        self.sent.append((envelope, scheduled_at))

    def send_many(self, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            self.send(envelope)

    def take(self, kind: str | None = None) -> list[Envelope]:
        """Remove and return the sent envelopes (of one kind)."""
        taken = [e for e, _ in self.sent if kind is None or e.command.kind == kind]
        self.sent = [(e, t) for e, t in self.sent if e not in taken]
        return taken


@dataclass
class FakeRegistry:
    versions: dict[tuple[str, str], ModelVersion] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    model_tag_values: dict[str, dict[str, str]] = field(default_factory=dict)
    runs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    entries: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    files_gone: set[tuple[str, str]] = field(default_factory=set)
    numbers: dict[str, int] = field(default_factory=dict)

    def register(
        self, model: str, run_id: str | None = None, *, registered_at: datetime | None = None, **tags: str
    ) -> str:
        number = str(self.numbers.get(model, 0) + 1)
        self.numbers[model] = int(number)
        version = ModelVersion(model, number, run_id, None, "READY", dict(tags), (), created_at=registered_at)
        self.versions[(model, number)] = version
        if run_id:
            self.runs.setdefault(run_id, []).append((model, number))
        return number

    def get_version(self, model_name: str, version: str) -> ModelVersion:
        try:
            v = self.versions[(model_name, version)]
        except KeyError:
            raise LookupError(f"model {model_name} version {version} is not registered") from None
        aliases = tuple(a for (m, a), target in self.aliases.items() if m == model_name and target == version)
        return replace(v, tags=dict(v.tags), aliases=aliases)

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        numbers = sorted((int(v) for m, v in self.versions if m == model_name))
        return [self.get_version(model_name, str(n)) for n in numbers]

    def versions_of_run(self, run_id: str) -> list[ModelVersion]:
        return [self.get_version(m, v) for m, v in self.runs.get(run_id, [])]

    def versions_with_tag(self, model_name: str, key: str, value: str) -> list[ModelVersion]:
        return [v for v in self.list_versions(model_name) if v.tags.get(key) == value]

    def versions_after(self, model_name: str, version: str, limit: int) -> list[ModelVersion]:
        # Looked up by number, as a registry's ordered search would: O(versions returned).
        found, number = [], int(version) + 1
        while len(found) < limit and number <= self.numbers.get(model_name, 0):
            v = self.versions.get((model_name, str(number)))
            if v is not None:
                found.append(replace(v, tags=dict(v.tags)))
            number += 1
        return found

    def set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        v = self.versions[(model_name, version)]
        self.versions[(model_name, version)] = replace(v, tags={**v.tags, **{k: str(x) for k, x in tags.items()}})

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        v = self.versions[(model_name, version)]
        self.versions[(model_name, version)] = replace(v, tags={k: x for k, x in v.tags.items() if k != key})

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.aliases[(model_name, alias)] = version

    def delete_alias(self, model_name: str, alias: str) -> None:
        self.aliases.pop((model_name, alias), None)

    def alias_version(self, model_name: str, alias: str) -> str | None:
        return self.aliases.get((model_name, alias))

    def model_tags(self, model_name: str) -> dict[str, str]:
        return dict(self.model_tag_values.get(model_name, {}))

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.model_tag_values.setdefault(model_name, {})[key] = value

    def delete_model_tag(self, model_name: str, key: str) -> None:
        self.model_tag_values.get(model_name, {}).pop(key, None)

    def has_model_files(self, model_name: str, version: str) -> bool:
        self.get_version(model_name, version)
        return (model_name, version) not in self.files_gone

    def append_history(self, model_name: str, entry: Mapping[str, str]) -> None:
        self.entries.setdefault(model_name, []).append(dict(entry))

    def history(self, model_name: str, since: datetime | None = None) -> list[dict[str, str]]:
        found = self.entries.get(model_name, [])
        return [dict(e) for e in found if since is None or datetime.fromisoformat(e["at"]) >= since]

    def stage(self, model: str, version: str) -> str | None:
        return self.versions[(model, version)].tags.get("stage")


@dataclass
class FakeCompute:
    backend: str = "local"
    launched: list[JobRequest] = field(default_factory=list)
    states: dict[str, RunStatus] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def launch(self, job: JobRequest) -> str:
        run_id = f"run-{job.idempotency_key or len(self.launched)}"
        if run_id not in self.states:
            self.launched.append(job)
            self.states[run_id] = RunStatus(run_id, "running")
        return run_id

    def status(self, run_id: str) -> RunStatus:
        return self.states[run_id]

    def cancel(self, run_id: str) -> None:
        self.cancelled.append(run_id)
        self.states[run_id] = RunStatus(run_id, "cancelled")


@dataclass
class FakeEvaluator:
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def score(self, model_name: str, version: str, dataset: str, metrics: Sequence[str]) -> dict[str, float]:
        self.calls.append(version)
        return {m: self.scores[version][m] for m in metrics}


@dataclass
class FakeServing:
    routed: dict[str, Deployment] = field(default_factory=dict)
    running: list[Deployment] = field(default_factory=list)
    broken_versions: set[str] = field(default_factory=set)
    slow_versions: dict[str, int] = field(default_factory=dict)  # version -> pending checks before ready
    failing_versions: set[str] = field(default_factory=set)

    def current(self, endpoint: str) -> Deployment | None:
        return self.routed.get(endpoint)

    def start(self, endpoint: str, model_name: str, version: str) -> Deployment:
        slot = "green" if (cur := self.routed.get(endpoint)) and cur.slot == "blue" else "blue"
        deployment = Deployment(endpoint, model_name, version, slot, f"http://fake/{slot}")
        self.running.append(deployment)
        return deployment

    def readiness(self, deployment: Deployment) -> Readiness:
        if deployment.version in self.slow_versions:
            self.slow_versions[deployment.version] -= 1
            if self.slow_versions[deployment.version] >= 0:
                return Readiness("pending")
        if deployment.version in self.failing_versions:
            return Readiness("failed", "served entity config update failed: out of capacity")
        return Readiness("ready")

    def invoke(self, deployment: Deployment, frame: ScoringFrame) -> object:
        if deployment.version in self.broken_versions:
            raise DeploymentFailed("500 from /invocations: model failed to predict")
        return {"predictions": [0]}

    def route(self, endpoint: str, deployment: Deployment) -> None:
        self.routed[endpoint] = deployment

    def stop(self, deployment: Deployment) -> None:
        self.running.remove(deployment)

    def endpoint_url(self, endpoint: str) -> str:
        return f"http://127.0.0.1:7071/endpoints/{endpoint}/invocations"


@dataclass
class FakeLanding:
    sizes: dict[str, int] = field(default_factory=dict)

    def size(self, uri: str) -> int:
        if uri not in self.sizes:
            raise OSError(f"{uri}: no such blob")
        return self.sizes[uri]


@dataclass
class FakeEvents:
    published: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def publish(self, event_type: str, subject: str, data: Mapping[str, object]) -> None:
        self.published.append((event_type, subject, dict(data)))

    def types(self) -> list[str]:
        return [t for t, _, _ in self.published]


@dataclass
class FakeDeadLetters:
    """An in-memory dead-letter store and replay sender; ``session`` is a ``Services.dead_letters`` factory."""

    dead: dict[str, list[DeadLetter]] = field(default_factory=dict)
    sent: list[tuple[str, ReplayMessage]] = field(default_factory=list)
    locked: set[tuple[str, int]] = field(default_factory=set)
    sessions: int = 0

    def queue_names(self) -> list[str]:
        from shared.queues import QUEUES

        return list(QUEUES)

    def peek(self, queue: str, limit: int) -> list[DeadLetter]:
        return self.dead.get(queue, [])[:limit]

    def lock(self, queue: str, sequence_number: int) -> DeadLetter | None:
        found = [d for d in self.dead.get(queue, []) if d.sequence_number == sequence_number]
        if not found or (queue, sequence_number) in self.locked:
            return None
        self.locked.add((queue, sequence_number))
        return found[0]

    def complete(self, queue: str, sequence_number: int) -> None:
        self.locked.remove((queue, sequence_number))
        self.dead[queue] = [d for d in self.dead[queue] if d.sequence_number != sequence_number]

    def release(self, queue: str, sequence_number: int) -> None:
        self.locked.remove((queue, sequence_number))

    def release_all(self) -> None:
        self.locked.clear()

    def send(self, queue: str, message: ReplayMessage) -> bool:
        self.sent.append((queue, message))
        return True

    @contextmanager
    def session(self) -> Iterator[DeadLetterPorts]:
        self.sessions += 1
        try:
            yield DeadLetterPorts(self, self)
        finally:
            self.release_all()


def services(catalogue: Catalogue | None = None, environment: str = "dev", **settings: object) -> Services:
    return Services(
        settings=Settings.model_validate({"SIGNALBOX_ENVIRONMENT": environment, **settings}),
        catalogue=catalogue or load_catalogue(REPO / "catalogue.toml"),
        bus=FakeBus(),
        registry=FakeRegistry(),
        compute={"local": FakeCompute()},
        evaluator=FakeEvaluator(),
        serving=FakeServing(),
        landing=FakeLanding(),
        events=FakeEvents(),
        clock=FakeClock(),
        dead_letters=FakeDeadLetters().session,
        code_version={"commit_sha": "abc123", "repository": "example/signalbox"},
    )
