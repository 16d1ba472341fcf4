"""The dead-letter ports: what an adapter gives the dead-letter operations, and the data it carries.

An adapter (``shared/adapters/local/deadletters.py``, ``shared/adapters/servicebus/deadletters.py``)
implements :class:`DeadLetterStore` and :class:`ReplaySender`; the composition root
(``shared/bootstrap.py``) wires a :data:`DeadLetterSessions` factory into ``Services``, and each
operation opens one session (its own locks) with it.

Standard library only: the function app imports it at invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeAlias

__all__ = [
    "ORIGINAL_MESSAGE_ID",
    "REPLAY_COUNT",
    "DeadLetter",
    "DeadLetterPorts",
    "DeadLetterSessions",
    "DeadLetterStore",
    "ReplayMessage",
    "ReplaySender",
    "replay_count_of",
]

REPLAY_COUNT = "signalbox.replay_count"
ORIGINAL_MESSAGE_ID = "signalbox.original_message_id"


@dataclass(frozen=True)
class DeadLetter:
    """One message in a queue's dead-letter sub-queue."""

    queue: str
    message_id: str
    sequence_number: int
    body: bytes
    correlation_id: str | None
    session_id: str | None
    application_properties: Mapping[str, Any]
    reason: str | None
    description: str | None
    enqueued_time: datetime | None
    dead_lettered_time: datetime | None
    delivery_count: int
    replay_count: int
    subject: str | None = None
    content_type: str | None = None

    @property
    def original_message_id(self) -> str:
        """The id of the first message this one replays (its own id when it is no replay)."""
        original = self.application_properties.get(ORIGINAL_MESSAGE_ID)
        return str(original) if original else self.message_id


@dataclass(frozen=True)
class ReplayMessage:
    """The new message a replay sends to the dead letter's queue."""

    body: bytes
    message_id: str
    correlation_id: str | None
    session_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: Mapping[str, str | int | float | bool]


def replay_count_of(properties: Mapping[str, Any]) -> int:
    """The ``signalbox.replay_count`` application property (0 when absent or not a count)."""
    value = properties.get(REPLAY_COUNT)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return 0


class DeadLetterStore(Protocol):
    """The dead-letter sub-queues: read them, and take one message at a time to settle it.

    ``lock`` is a peek-lock on the dead-letter sub-queue (Service Bus: a receiver with
    ``sub_queue=DEAD_LETTER``), so two runs never both replay or purge the same message.
    """

    def queue_names(self) -> Sequence[str]:
        """Every queue whose dead letters this store reads."""
        ...

    def peek(self, queue: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue`` in sequence order, without locking them."""
        ...

    def lock(self, queue: str, sequence_number: int) -> DeadLetter | None:
        """Lock one dead letter for this store; ``None`` when it is gone or another holder has it."""
        ...

    def complete(self, queue: str, sequence_number: int) -> None:
        """Delete a dead letter this store locked; raises when the lock was lost."""
        ...

    def release(self, queue: str, sequence_number: int) -> None:
        """Give back the lock on a dead letter; it stays as it was."""
        ...

    def release_all(self) -> None:
        """End of a run: give back every lock this store still holds."""
        ...


class ReplaySender(Protocol):
    """Sends replays to the (main) queues."""

    def send(self, queue: str, message: ReplayMessage) -> bool | None:
        """Send one message: ``False`` when duplicate detection dropped it, ``None`` when unknown."""
        ...


class DeadLetterPorts(NamedTuple):
    """What the dead-letter operations need: the store and the sender of replays."""

    store: DeadLetterStore
    sender: ReplaySender


# One session per operation: it owns the locks it takes and is closed when the operation ends.
DeadLetterSessions: TypeAlias = Callable[[], AbstractContextManager[DeadLetterPorts]]
