"""The dead-letter port over the local SQLite queues (the embedded default).

:class:`LocalDeadLetters` is both the :class:`~shared.deadletters.ports.DeadLetterStore` and the
:class:`~shared.deadletters.ports.ReplaySender`: it locks a dead letter by sequence number
(``LocalQueues.lock_dead_letter``), sends the replay with ``LocalQueues.send`` (duplicate
detection included) and completes the dead letter only when told to.

:func:`local_dead_letters` is what the composition root (``shared/bootstrap.py``) wires into
``Services``; ``signalbox dlq`` opens the queues of a state dir with :func:`local_queues`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from shared.adapters.local.queues import LocalQueues, OutboundMessage, ReceivedMessage
from shared.deadletters.ports import DeadLetter, DeadLetterPorts, DeadLetterSessions, ReplayMessage, replay_count_of

if TYPE_CHECKING:
    from shared.queues import QueueSpec

__all__ = ["LocalDeadLetters", "local_dead_letters", "local_queues", "queue_specs", "to_dead_letter"]

QUEUES_FILE_SETTING = "SIGNALBOX_QUEUES_FILE"


def to_dead_letter(message: ReceivedMessage) -> DeadLetter:
    """A dead-lettered local message as the domain sees it."""
    properties = dict(message.application_properties)
    return DeadLetter(
        queue=message.queue,
        message_id=message.message_id,
        sequence_number=message.sequence_number,
        body=message.body,
        correlation_id=message.correlation_id,
        session_id=message.session_id,
        application_properties=properties,
        reason=message.dead_letter_reason,
        description=message.dead_letter_error_description,
        enqueued_time=message.enqueued_time,
        dead_lettered_time=message.dead_lettered_at,
        delivery_count=message.delivery_count,
        replay_count=replay_count_of(properties),
        subject=message.subject,
        content_type=message.content_type,
    )


class LocalDeadLetters:
    """Dead letters of the local queues, and the sender of their replays.

    Lock tokens are kept per instance: use one instance per run (they are cheap).
    """

    def __init__(self, queues: LocalQueues) -> None:
        self.queues = queues
        self._tokens: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def queue_names(self) -> Sequence[str]:
        """The queues of the queue definition the local queues were opened with."""
        return list(self.queues.specs)

    def peek(self, queue: str, limit: int) -> list[DeadLetter]:
        """Dead letters in sequence order, unlocked."""
        return [to_dead_letter(m) for m in self.queues.peek(queue, dead_letter=True, limit=limit)]

    def lock(self, queue: str, sequence_number: int) -> DeadLetter | None:
        """Peek-lock one dead letter (for the queue's lock duration)."""
        message = self.queues.lock_dead_letter(queue, sequence_number)
        if message is None:
            return None
        with self._lock:
            self._tokens[(queue, sequence_number)] = message.lock_token
        return to_dead_letter(message)

    def complete(self, queue: str, sequence_number: int) -> None:
        """Delete a dead letter locked here; ``MessageLockLost`` when its lock expired."""
        self.queues.complete_dead_letter(queue, self._token(queue, sequence_number))

    def release(self, queue: str, sequence_number: int) -> None:
        """Unlock a dead letter locked here."""
        self.queues.release_dead_letter(queue, self._token(queue, sequence_number))

    def release_all(self) -> None:
        """Unlock every dead letter still locked here (a lost lock is already released)."""
        from shared.adapters.local.queues import MessageLockLost

        with self._lock:
            held, self._tokens = self._tokens, {}
        for (queue, _), token in held.items():
            with suppress(MessageLockLost):
                self.queues.release_dead_letter(queue, token)

    def send(self, queue: str, message: ReplayMessage) -> bool:
        """Enqueue a replay; ``False`` when duplicate detection dropped it."""
        return self.queues.send(
            queue,
            OutboundMessage(
                body=message.body,
                message_id=message.message_id,
                session_id=message.session_id,
                correlation_id=message.correlation_id,
                subject=message.subject,
                content_type=message.content_type,
                application_properties=dict(message.application_properties),
            ),
        )

    def _token(self, queue: str, sequence_number: int) -> str:
        with self._lock:
            token = self._tokens.pop((queue, sequence_number), None)
        if token is None:
            raise KeyError(f"dead letter {sequence_number} of queue {queue!r} is not locked by this run")
        return token


# -- wiring ------------------------------------------------------------------------------------------


def local_dead_letters(queues: LocalQueues) -> DeadLetterSessions:
    """The dead-letter sessions over ``queues``: a new :class:`LocalDeadLetters` (its own lock tokens) per
    session, whose locks are given back when the session ends."""

    @contextmanager
    def session() -> Iterator[DeadLetterPorts]:
        adapter = LocalDeadLetters(queues)
        try:
            yield DeadLetterPorts(adapter, adapter)
        finally:
            adapter.release_all()

    return session


def queue_specs() -> dict[str, QueueSpec]:
    """The queue definition in force: ``SIGNALBOX_QUEUES_FILE`` (read now), else ``shared/queues.json``."""
    from shared.queues import QUEUES_FILE, load_queue_specs

    return load_queue_specs(Path(os.environ.get(QUEUES_FILE_SETTING) or QUEUES_FILE))


def local_queues(state_dir: Path, *, must_exist: bool = False) -> LocalQueues:
    """The local queues of a state dir; ``FileNotFoundError`` if ``must_exist`` and there are none."""
    path = state_dir / "queues.sqlite3"
    if must_exist and not path.exists():
        raise FileNotFoundError(f"no local queues at {path}: is the state dir right (--state-dir)?")
    return LocalQueues(path, specs=queue_specs())
