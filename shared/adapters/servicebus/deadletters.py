"""The dead-letter port over Azure Service Bus (azure-servicebus, imported inside methods only).

- ``peek``: ``peek_messages`` on a receiver with ``sub_queue=ServiceBusSubQueue.DEAD_LETTER``
  (nothing is locked).
- ``lock``: Service Bus cannot lock a dead letter by sequence number (``receive_deferred_messages``
  works for deferred messages only), so the store keeps one PEEK_LOCK dead-letter receiver per
  queue and receives in sequence order until it holds the wanted message. Messages met on the
  way stay locked, held by the store (an ``AutoLockRenewer`` keeps their locks), so the next
  ``lock`` (a replay goes in sequence order) usually finds its message already held.
  ``release_all`` (the end of a run) abandons whatever is still held: abandon on the
  dead-letter sub-queue only unlocks (it raises the delivery count; no MaxDeliveryCount
  applies there).
- ``complete`` / ``release``: ``complete_message`` / ``abandon_message`` on the receiver that
  received the message (settlement must use the link that received it).
- ``send``: ``ServiceBusSender.send_messages`` with a new ``ServiceBusMessage``; the broker does
  not say whether duplicate detection dropped it, so ``send`` answers ``None``.

Service Bus does not record when a message was dead-lettered: ``dead_lettered_time`` is
``None``, and a ``since`` filter compares the enqueued time instead. Received application
properties come back with ``bytes`` keys and string values; they are decoded to ``str``.

One instance per run: :func:`servicebus_dead_letters` (wired by ``shared/bootstrap.py``) opens
one per dead-letter session and closes it at the end, so its held locks belong to that run.
The namespace and credential come from the one :class:`ServiceBusAccess` bootstrap built.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from shared.adapters.servicebus.access import ServiceBusAccess
from shared.deadletters.ports import (
    DeadLetter,
    DeadLetterPorts,
    DeadLetterSessions,
    ReplayMessage,
    replay_count_of,
)

__all__ = ["ServiceBusDeadLetters", "servicebus_dead_letters", "to_dead_letter"]

log = logging.getLogger("signalbox.servicebus")

_PEEK_PAGE = 250


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def _properties(raw: Mapping[Any, Any] | None) -> dict[str, Any]:
    return {str(_text(key)): _text(value) for key, value in (raw or {}).items()}


def _body(message: Any) -> bytes:
    body = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    from azure.servicebus.amqp import AmqpMessageBodyType

    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(part) for part in body)
    # VALUE and SEQUENCE bodies (not sent by Signalbox or the Functions host): their JSON form.
    return json.dumps(body, default=_text).encode("utf-8")


def to_dead_letter(message: Any, queue: str) -> DeadLetter:
    """A received (or peeked) ``ServiceBusReceivedMessage`` of a dead-letter sub-queue, for the domain."""
    properties = _properties(message.application_properties)
    return DeadLetter(
        queue=queue,
        message_id=str(message.message_id),
        sequence_number=int(message.sequence_number),
        body=_body(message),
        correlation_id=message.correlation_id,
        session_id=message.session_id,
        application_properties=properties,
        reason=message.dead_letter_reason,
        description=message.dead_letter_error_description,
        enqueued_time=message.enqueued_time_utc,
        dead_lettered_time=None,
        delivery_count=int(message.delivery_count or 0),
        replay_count=replay_count_of(properties),
        subject=message.subject,
        content_type=message.content_type,
    )


class ServiceBusDeadLetters:
    """Dead letters of the Service Bus queues, and the sender of their replays (one run)."""

    def __init__(
        self,
        access: ServiceBusAccess,
        *,
        client_factory: Callable[[], Any] | None = None,
        queue_names: Sequence[str] | None = None,
        max_wait_time: float = 5.0,
        receive_batch: int = 50,
        max_lock_renewal_seconds: float = 900.0,
        retry_total: int = 3,
    ) -> None:
        """Connect over ``access``; ``client_factory`` replaces the ``ServiceBusClient`` (tests).

        ``max_wait_time`` is how long one receive waits for the dead-letter sub-queue to answer;
        an empty answer means "no further dead letter is available".
        """
        self._access = access
        self._client_factory = client_factory
        self._names = list(queue_names) if queue_names is not None else None
        self.max_wait_time = max_wait_time
        self.receive_batch = receive_batch
        self.max_lock_renewal_seconds = max_lock_renewal_seconds
        self._retry_total = retry_total
        self._lock = threading.RLock()
        self._client: Any = None
        self._renewer: Any = None
        self._receivers: dict[str, Any] = {}
        self._senders: dict[str, Any] = {}
        self._held: dict[str, dict[int, Any]] = {}

    def __repr__(self) -> str:
        return f"ServiceBusDeadLetters(namespace={self._access.namespace!r})"

    # -- DeadLetterStore -------------------------------------------------------------------

    def queue_names(self) -> Sequence[str]:
        """The queues of ``shared/queues.json``."""
        if self._names is None:
            from shared.queues import QUEUES

            self._names = list(QUEUES)
        return list(self._names)

    def peek(self, queue: str, limit: int) -> list[DeadLetter]:
        """Browse the dead-letter sub-queue from its first message, page by page."""
        from azure.servicebus import ServiceBusSubQueue

        out: list[DeadLetter] = []
        receiver = self._get_client().get_queue_receiver(queue_name=queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        with receiver:
            next_sequence = 0
            while len(out) < limit:
                page = receiver.peek_messages(
                    max_message_count=min(limit - len(out), _PEEK_PAGE), sequence_number=next_sequence
                )
                if not page:
                    break
                out.extend(to_dead_letter(message, queue) for message in page)
                next_sequence = int(page[-1].sequence_number) + 1
        return out

    def lock(self, queue: str, sequence_number: int) -> DeadLetter | None:
        """Receive (peek-lock) up to the wanted dead letter; ``None`` when it is not available."""
        with self._lock:
            held = self._held.setdefault(queue, {})
            if sequence_number in held:
                return to_dead_letter(held[sequence_number], queue)
            receiver = self._receiver(queue)
            while True:
                batch = receiver.receive_messages(
                    max_message_count=self.receive_batch, max_wait_time=self.max_wait_time
                )
                if not batch:
                    return None
                for message in batch:
                    held[int(message.sequence_number)] = message
                if sequence_number in held:
                    return to_dead_letter(held[sequence_number], queue)
                if max(int(m.sequence_number) for m in batch) > sequence_number:
                    return None  # received past it: settled meanwhile, or locked by another receiver

    def complete(self, queue: str, sequence_number: int) -> None:
        """``complete_message`` on the receiver that holds it."""
        with self._lock:
            message = self._take(queue, sequence_number)
            self._receivers[queue].complete_message(message)

    def release(self, queue: str, sequence_number: int) -> None:
        """``abandon_message``: the dead letter stays, unlocked."""
        with self._lock:
            message = self._take(queue, sequence_number)
            self._receivers[queue].abandon_message(message)

    def release_all(self) -> None:
        """Abandon every dead letter still held (met on the way, or left by a failed step)."""
        with self._lock:
            held, self._held = self._held, {}
            for queue, messages in held.items():
                receiver = self._receivers[queue]
                for message in messages.values():
                    try:
                        receiver.abandon_message(message)
                    except Exception as exc:  # its lock then lapses by itself
                        log.warning(
                            "could not abandon dead letter %s of queue %s (%s); it unlocks when its lock expires",
                            message.sequence_number,
                            queue,
                            type(exc).__name__,
                        )

    # -- ReplaySender ----------------------------------------------------------------------

    def send(self, queue: str, message: ReplayMessage) -> None:
        """Send the replay; Service Bus does not report a duplicate it dropped (``None``)."""
        from azure.servicebus import ServiceBusMessage

        outgoing = ServiceBusMessage(
            body=message.body,
            message_id=message.message_id,
            session_id=message.session_id,
            correlation_id=message.correlation_id,
            subject=message.subject,
            content_type=message.content_type,
            application_properties=dict(message.application_properties),  # type: ignore[arg-type]
        )
        with self._lock:
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._senders[queue] = self._get_client().get_queue_sender(queue_name=queue)
        sender.send_messages(outgoing)
        return None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release what is held, then close the links, the lock renewer and the client."""
        self.release_all()
        with self._lock:
            handles = [*self._receivers.values(), *self._senders.values(), self._renewer, self._client]
            self._receivers, self._senders, self._renewer, self._client = {}, {}, None, None
        for handle in handles:
            if handle is not None:
                try:
                    handle.close()
                except Exception as exc:  # closing a broken link must not hide what broke it
                    log.debug("closing %s failed: %s", type(handle).__name__, type(exc).__name__)

    # -- internals -------------------------------------------------------------------------

    def _take(self, queue: str, sequence_number: int) -> Any:
        message = self._held.get(queue, {}).pop(sequence_number, None)
        if message is None:
            raise KeyError(f"dead letter {sequence_number} of queue {queue!r} is not locked by this run")
        return message

    def _receiver(self, queue: str) -> Any:
        receiver = self._receivers.get(queue)
        if receiver is None:
            from azure.servicebus import AutoLockRenewer, ServiceBusReceiveMode, ServiceBusSubQueue

            if self._renewer is None:
                self._renewer = AutoLockRenewer(max_lock_renewal_duration=self.max_lock_renewal_seconds)
            receiver = self._get_client().get_queue_receiver(
                queue_name=queue,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                prefetch_count=0,
                auto_lock_renewer=self._renewer,
            )
            self._receivers[queue] = receiver
        return receiver

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    self._client = self._access.client(retry_total=self._retry_total)
            return self._client


def servicebus_dead_letters(access: ServiceBusAccess, **options: Any) -> DeadLetterSessions:
    """The dead-letter sessions over ``access``: a new :class:`ServiceBusDeadLetters` per session,
    closed (its held locks abandoned) when the session ends. ``options`` go to its constructor."""

    @contextmanager
    def session() -> Iterator[DeadLetterPorts]:
        adapter = ServiceBusDeadLetters(access, **options)
        try:
            yield DeadLetterPorts(adapter, adapter)
        finally:
            adapter.close()

    return session
