"""The small interfaces handlers depend on. Adapters implement them; bootstrap wires them.

Data crossing a port is a plain frozen dataclass defined here, so handlers never see an
SDK type and fakes are easy to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from shared.contracts import Envelope
    from shared.domain import LifecycleEvent


class Clock(Protocol):
    """The current time, in UTC; injected so cooldowns and backoff are testable."""

    def __call__(self) -> datetime: ...


class Bus(Protocol):
    """Sends commands to their queues (local queues or Azure Service Bus)."""

    def send(self, envelope: Envelope, *, scheduled_at: datetime | None = None) -> None:
        """Send one command; a duplicate ``message_id`` within the window is dropped."""
        ...

    def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """Send several commands together."""
        ...


# -- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version as the registry holds it."""

    model_name: str
    version: str
    run_id: str | None
    source: str | None
    status: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...]
    created_at: datetime | None = None


class Registry(Protocol):
    """The model registry (MLflow): the system of record for stages and decisions."""

    def get_version(self, model_name: str, version: str) -> ModelVersion:
        """One version; raises ``LookupError`` when it does not exist."""
        ...

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first (empty when the model is unknown)."""
        ...

    def versions_of_run(self, run_id: str) -> list[ModelVersion]:
        """The versions a training run registered."""
        ...

    def versions_with_tag(self, model_name: str, key: str, value: str) -> list[ModelVersion]:
        """The versions of a model whose tag ``key`` is ``value``, oldest first (searched, not listed)."""
        ...

    def versions_after(self, model_name: str, version: str, limit: int) -> list[ModelVersion]:
        """The oldest ``limit`` versions numbered above ``version``, oldest first, with their tags.

        Costs O(versions above ``version``), not O(versions): the reconciliation sweep's read.
        Aliases are not read (empty).
        """
        ...

    def set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set (overwrite) tags on a version."""
        ...

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        """Remove a tag from a version; no error when it is absent."""
        ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point an alias at a version."""
        ...

    def delete_alias(self, model_name: str, alias: str) -> None:
        """Remove an alias; no error when it is absent."""
        ...

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points at, if any."""
        ...

    def model_tags(self, model_name: str) -> dict[str, str]:
        """Tags on the registered model (empty when the model is unknown)."""
        ...

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        """Set a tag on the registered model, creating the model if needed."""
        ...

    def delete_model_tag(self, model_name: str, key: str) -> None:
        """Remove a tag from the registered model; no error when it (or the model) is absent."""
        ...

    def has_model_files(self, model_name: str, version: str) -> bool:
        """Whether the version's model files (its ``MLmodel``) can still be found in the artifact store."""
        ...

    def append_history(self, model_name: str, entry: Mapping[str, str]) -> None:
        """Append one entry (``shared.history``'s fields, ``at`` in ISO 8601) to the model's history."""
        ...

    def history(self, model_name: str, since: datetime | None = None) -> list[dict[str, str]]:
        """The model's history entries at or after ``since`` (aware), in no particular order."""
        ...


# -- compute ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """A training or scoring job for one model."""

    model_name: str
    purpose: Literal["train", "score"]
    job_reference: str
    data_uri: str | None
    parameters: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None  # the same key launches the same run once


RunState = Literal["pending", "running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class RunStatus:
    """Where a launched job is."""

    run_id: str
    state: RunState
    message: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # e.g. mlflow_run_id, model_version
    # A failure of the platform's capacity, not of the job (a concurrency limit, a cloud failure):
    # launching again, with a new idempotency key, may succeed.
    retryable: bool = False

    @property
    def finished(self) -> bool:
        """Whether the job has stopped, for good or ill."""
        return self.state in ("succeeded", "failed", "cancelled")


class Compute(Protocol):
    """Runs training and scoring jobs (local process, Databricks Jobs, Azure ML jobs)."""

    backend: str

    def launch(self, job: JobRequest) -> str:
        """Start the job; returns its run id."""
        ...

    def status(self, run_id: str) -> RunStatus:
        """The job's current state."""
        ...

    def cancel(self, run_id: str) -> None:
        """Stop the job."""
        ...


# -- evaluation ------------------------------------------------------------------------


class Evaluator(Protocol):
    """Scores a model version on an evaluation dataset."""

    def score(self, model_name: str, version: str, dataset: str, metrics: Sequence[str]) -> dict[str, float]:
        """The named metrics of one version on the dataset."""
        ...


# -- serving ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """One model version running (or starting) behind an endpoint."""

    endpoint: str
    model_name: str
    version: str
    slot: str
    url: str


@dataclass(frozen=True)
class ScoringFrame:
    """Rows to score, by column; each serving adapter shapes its own request body from it."""

    columns: tuple[str, ...]
    data: tuple[tuple[float, ...], ...]

    def dataframe_split(self) -> dict[str, object]:
        """MLflow's scoring server body (``mlflow models serve``, Databricks Model Serving)."""
        return {"dataframe_split": {"columns": list(self.columns), "data": [list(row) for row in self.data]}}


@dataclass(frozen=True)
class Readiness:
    """Whether a started deployment can take a smoke request yet."""

    state: Literal["ready", "pending", "failed"]
    message: str | None = None


class Serving(Protocol):
    """Real-time endpoints with blue/green deployments.

    ``start`` may return before the deployment is ready (cloud endpoints take minutes):
    the deploy handler then checks ``readiness`` from scheduled messages, never sleeping.
    """

    def current(self, endpoint: str) -> Deployment | None:
        """What takes the endpoint's traffic now."""
        ...

    def start(self, endpoint: str, model_name: str, version: str) -> Deployment:
        """Bring up the version in the idle slot, taking no traffic yet."""
        ...

    def readiness(self, deployment: Deployment) -> Readiness:
        """Ready for a smoke request, still starting, or failed (with why)."""
        ...

    def invoke(self, deployment: Deployment, frame: ScoringFrame) -> object:
        """Score rows on a deployment directly (the smoke test), in the platform's request shape."""
        ...

    def route(self, endpoint: str, deployment: Deployment) -> None:
        """Move all of the endpoint's traffic to the deployment."""
        ...

    def stop(self, deployment: Deployment) -> None:
        """Tear a deployment down."""
        ...

    def endpoint_url(self, endpoint: str) -> str:
        """The endpoint's stable scoring URL."""
        ...


# -- landing zone and outbound events -------------------------------------------------------


@dataclass(frozen=True)
class LandedFile:
    """One file in the landing zone, as a listing sees it."""

    uri: str
    container: str
    path: str
    size: int
    last_modified: datetime  # timezone-aware, UTC
    # The storage's version of the content as it reports it (``0x8D…`` on Blob Storage, with or
    # without quotes): with the path it names one write of the file, as BlobCreated's ``eTag`` does.
    etag: str | None = None


class LandingZone(Protocol):
    """Where new data arrives (a local folder or a Storage container)."""

    def size(self, uri: str) -> int:
        """Bytes at the URI; raises ``OSError`` when it cannot be read."""
        ...

    def list_since(self, container: str, prefix: str, after: datetime | None, limit: int) -> list[LandedFile]:
        """Files under ``prefix`` last modified after ``after`` (aware), oldest first.

        At most ``limit`` files, plus any more with the last one's time, so a sweep that resumes
        after that time misses none. Blob times have one-second resolution: resume a little
        earlier and let the deterministic message ids drop what was already sent.
        """
        ...


class LifecycleEvents(Protocol):
    """Publishes Signalbox's own lifecycle events (approval requested, deployed, ...)."""

    def publish(self, event_type: LifecycleEvent, subject: str, data: Mapping[str, object]) -> None:
        """Emit one event."""
        ...
