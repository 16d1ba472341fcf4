"""The bus port over the local SQLite queues (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import groupby

from shared import observability
from shared.adapters.local.queues import LocalQueues, OutboundMessage
from shared.contracts import Envelope


def application_properties(envelope: Envelope) -> dict[str, str | int]:
    """What every bus puts beside the body: routing facts and the W3C trace context."""
    properties: dict[str, str | int] = {
        "schema_version": envelope.schema_version,
        "environment": envelope.environment,
        "causation_id": envelope.causation_id or "",
        "model_name": envelope.command.model_name,
    }
    traceparent = observability.current_traceparent()
    if traceparent:
        properties[observability.TRACEPARENT] = traceparent
    return properties


def to_message(envelope: Envelope, scheduled_at: datetime | None = None) -> OutboundMessage:
    """The queue message an envelope travels as (the same fields Service Bus gets)."""
    return OutboundMessage(
        body=envelope.to_json(),
        message_id=envelope.transport_id,
        session_id=envelope.session_id,
        correlation_id=envelope.correlation_id,
        subject=envelope.command.kind,
        content_type="application/json",
        application_properties=application_properties(envelope),
        scheduled_enqueue_time=scheduled_at,
    )


class LocalBus:
    """Sends commands to the local queues; duplicates are dropped as Service Bus does."""

    def __init__(self, queues: LocalQueues) -> None:
        self.queues = queues

    def send(self, envelope: Envelope, *, scheduled_at: datetime | None = None) -> None:
        """Send one command."""
        self.queues.send(envelope.queue, to_message(envelope, scheduled_at))

    def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """Send several commands, one batch per queue."""
        ordered = sorted(envelopes, key=lambda e: e.queue)
        for queue, group in groupby(ordered, key=lambda e: e.queue):
            self.queues.send_many(queue, [to_message(e) for e in group])
