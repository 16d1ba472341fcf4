"""The commands that cross Signalbox's queues, and the envelope they travel in.

Every message on a queue is one :class:`Envelope` serialised as JSON. ``message_id``
is derived from the cause (the same cause always gives the same id, so Service Bus
duplicate detection drops a redelivered event), ``correlation_id`` is shared by every
hop of one model lifecycle, and ``causation_id`` names the message that led here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import queues
from shared.errors import InvalidInput

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

# Namespace for message ids: uuid5(namespace, "<command kind>:<cause>").
_MESSAGE_NAMESPACE = uuid.UUID("6f1d3c52-7a0e-4c53-9d8e-5b1f0e6a2c11")


class ContractError(InvalidInput):
    """A message body that is not a valid command; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(min_length=1, description="Registered model name in the catalogue")


TrainReason = Literal["landing", "drift", "code_push", "manual", "schedule"]


class TrainModel(_Command):
    """Launch the model's training job (or, for a rule-based model, its scoring job)."""

    kind: Literal["train"] = "train"
    reason: TrainReason
    data_uri: str | None = None
    commit_sha: str | None = None
    repository: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    # Relaunches after a capacity failure (a new run each: its envelope has a new message id).
    relaunch: int = Field(default=0, ge=0)


class PollRun(_Command):
    """Check a launched job; sent scheduled, with backoff, where no callback arrives."""

    kind: Literal["poll-run"] = "poll-run"
    backend: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    attempt: int = Field(default=0, ge=0)
    commit_sha: str | None = None
    repository: str | None = None
    # What launched the run, so a capacity failure (retryable) can launch it again.
    launch: TrainModel | None = None


class EvaluateVersion(_Command):
    """Score a new model version (challenger) against the champion."""

    kind: Literal["evaluate"] = "evaluate"
    version: str = Field(min_length=1)
    source: str = Field(default="registry", description="what announced the version")


class PromoteVersion(_Command):
    """Apply an evaluation verdict or an approval decision to the stage tags."""

    kind: Literal["promote"] = "promote"
    version: str = Field(min_length=1)
    decision: Literal["won", "lost", "approved", "rejected"]
    decided_by: str | None = None
    reason: str | None = Field(default=None, max_length=1000, description="why a person decided (recorded)")


class DeployVersion(_Command):
    """Deploy an approved version to the model's endpoint (blue/green)."""

    kind: Literal["deploy"] = "deploy"
    version: str = Field(min_length=1)
    # Set while waiting for a started deployment to become ready (cloud endpoints).
    candidate_slot: str | None = None
    candidate_url: str | None = None
    attempt: int = Field(default=0, ge=0)
    # Set to stop the old deployment later when the platform could not stop it right after the
    # traffic moved (a Databricks endpoint still applying its config update).
    retire_slot: str | None = None
    retire_version: str | None = None
    retire_url: str | None = None


class RollbackModel(_Command):
    """An operator's rollback: redeploy ``to_version`` (a version that served before) on the deploy queue.

    It travels on the deploy queue, in the model's session, so it is ordered with promotions'
    deployments; ``request_id`` is the cause (one rollback per request id).
    """

    kind: Literal["rollback"] = "rollback"
    to_version: str = Field(min_length=1)
    from_version: str | None = Field(default=None, description="the production version when it was asked for")
    requested_by: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=1000)
    request_id: str = Field(min_length=1, max_length=200)
    # Set while waiting for a started deployment to become ready (cloud endpoints), as for a deploy.
    candidate_slot: str | None = None
    candidate_url: str | None = None
    attempt: int = Field(default=0, ge=0)


Sweep = Literal["registry", "runs", "landing"]


class ReconcileModel(_Command):
    """Sweep one model for what its events lost (``shared.handlers.reconcile``).

    It travels on the promote queue, in the model's session, so one sweep per model runs at a
    time, ordered with that model's promotions.
    """

    kind: Literal["reconcile"] = "reconcile"
    sweeps: tuple[Sweep, ...] = ("registry", "runs", "landing")
    dry_run: bool = False


Command = Annotated[
    TrainModel | PollRun | EvaluateVersion | PromoteVersion | DeployVersion | RollbackModel | ReconcileModel,
    Field(discriminator="kind"),
]

QUEUE_OF: dict[str, str] = {
    "train": queues.TRAIN,
    "poll-run": queues.POLL_RUN,
    "evaluate": queues.EVALUATE,
    "promote": queues.PROMOTE,
    "deploy": queues.DEPLOY,
    "rollback": queues.DEPLOY,
    "reconcile": queues.PROMOTE,
}


def message_id_for(kind: str, cause: str) -> str:
    """The deterministic message id of a command of ``kind`` caused by ``cause``."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, f"{kind}:{cause}"))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """One command with the metadata that ties it to its cause and lifecycle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    message_id: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    environment: str = Field(min_length=1)
    created_at: datetime
    command: Command
    # Transient failures retried so far: a retry is the same command (same ``message_id``, so the
    # same follow-ups and idempotency keys) sent again later under its own transport id.
    retry: int = Field(default=0, ge=0)

    @property
    def transport_id(self) -> str:
        """The queue message id: ``message_id`` itself, or one per retry (duplicate detection keeps each)."""
        return self.message_id if self.retry == 0 else message_id_for("retry", f"{self.message_id}:{self.retry}")

    @property
    def queue(self) -> str:
        """The queue this envelope travels on."""
        return QUEUE_OF[self.command.kind]

    @property
    def session_id(self) -> str | None:
        """Per-model session id on queues that serialise work per model."""
        return self.command.model_name if queues.QUEUES[self.queue].requires_session else None

    @classmethod
    def start(cls, command: Any, *, cause: str, environment: str, now: datetime | None = None) -> Envelope:
        """Open a lifecycle: the first command, caused by an inbound event."""
        message_id = message_id_for(command.kind, cause)
        return cls(
            schema_version=SCHEMA_VERSION,
            message_id=message_id,
            correlation_id=message_id,
            causation_id=None,
            environment=environment,
            created_at=now or _utcnow(),
            command=command,
        )

    def follow(self, command: Any, *, cause: str | None = None, now: datetime | None = None) -> Envelope:
        """The next hop of this lifecycle; by default caused by this message."""
        return Envelope(
            schema_version=SCHEMA_VERSION,
            message_id=message_id_for(command.kind, cause or self.message_id),
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            environment=self.environment,
            created_at=now or _utcnow(),
            command=command,
        )

    def to_json(self) -> str:
        """Serialise for a queue."""
        return self.model_dump_json()


def _field_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the union tag in the location ("command.train.reason"); drop it.
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "command" and parts[1] in QUEUE_OF:
        parts.pop(1)
    return ".".join(parts) or "(body)"


def parse_envelope(body: bytes | str, *, queue: str | None = None) -> Envelope:
    """Parse a queue message body; raise :class:`ContractError` naming the bad field."""
    import json

    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError("(body)", f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError("(body)", "expected a JSON object (an envelope)")
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        raise ContractError("schema_version", f"unknown schema version {version!r} (supported: {supported})")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ContractError(_field_path(first["loc"]), first["msg"]) from None
    if queue is not None and envelope.queue != queue:
        raise ContractError("command.kind", f"a {envelope.command.kind!r} command does not belong on queue {queue!r}")
    return envelope
