"""The bus port over Azure Service Bus (azure-servicebus), for the function app in Azure.

Messages carry the same fields as the local queues' (:func:`shared.adapters.local.bus.to_message`),
so a handler cannot tell the two buses apart. SDK errors become :class:`TransientError` or
:class:`PermanentError`, whose messages say what to fix and never carry a key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.adapters.local.bus import application_properties
from shared.adapters.servicebus.access import CONNECTION_SETTING, NAMESPACE_SETTING, ServiceBusAccess
from shared.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusMessage

    from shared.contracts import Envelope

__all__ = ["ServiceBusBus", "to_servicebus_message"]

log = logging.getLogger("signalbox.servicebus")


def to_servicebus_message(envelope: Envelope, scheduled_at: datetime | None = None) -> ServiceBusMessage:
    """The Service Bus message an envelope travels as (the fields of ``local_bus.to_message``)."""
    from azure.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        body=envelope.to_json(),
        message_id=envelope.transport_id,
        session_id=envelope.session_id,
        correlation_id=envelope.correlation_id,
        subject=envelope.command.kind,
        content_type="application/json",
        application_properties=application_properties(envelope),  # type: ignore[arg-type]
        scheduled_enqueue_time_utc=_aware_utc(scheduled_at) if scheduled_at is not None else None,
    )


def _aware_utc(moment: datetime) -> datetime:
    # A naive time would be read as local time by one side and UTC by the other.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"scheduled_at must be timezone-aware (UTC), got {moment!r}")
    return moment.astimezone(UTC)


@dataclass
class _Sender:
    sender: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


class ServiceBusBus:
    """Sends commands to Azure Service Bus queues: one client per adapter, one sender per queue."""

    def __init__(
        self,
        access: ServiceBusAccess,
        *,
        client_factory: Callable[[], Any] | None = None,
        retry_total: int = 3,
    ) -> None:
        """Send over ``access`` (the namespace and how to authenticate, chosen once in bootstrap).

        ``client_factory`` replaces the ``ServiceBusClient`` (tests); ``retry_total`` is the
        SDK's own retry count per operation, kept small because redelivery retries too.
        """
        self._access = access
        self.namespace = access.namespace
        self._client_factory = client_factory
        self._retry_total = retry_total
        self._lock = threading.Lock()
        self._client: Any = None
        self._senders: dict[str, _Sender] = {}

    def __repr__(self) -> str:
        return f"ServiceBusBus(namespace={self.namespace!r})"

    def send(self, envelope: Envelope, *, scheduled_at: datetime | None = None) -> None:
        """Send one command; scheduled when ``scheduled_at`` is given."""
        message = to_servicebus_message(envelope, scheduled_at)
        with self._sending(envelope.queue, what=_describe(envelope)) as sender:
            sender.send_messages(message)

    def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """Send several commands in batches, one queue at a time.

        When a later batch fails, earlier ones stay sent; resending them all is safe because
        message ids are deterministic and duplicate detection drops the repeats.
        """
        by_queue: dict[str, list[Envelope]] = {}
        for envelope in envelopes:
            by_queue.setdefault(envelope.queue, []).append(envelope)
        for queue, group in by_queue.items():
            messages = [(envelope, to_servicebus_message(envelope)) for envelope in group]
            with self._sending(queue, what=f"{len(messages)} message(s)") as sender:
                self._send_batches(queue, sender, messages)

    def close(self) -> None:
        """Close every sender and the client; a later send reconnects."""
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
            client, self._client = self._client, None
        for cached in senders:
            with cached.lock:
                cached.closed = True
                _quietly_close(cached.sender)
        if client is not None:
            _quietly_close(client)

    # -- internals ---------------------------------------------------------------------

    def _send_batches(self, queue: str, sender: Any, messages: list[tuple[Envelope, Any]]) -> None:
        from azure.servicebus.exceptions import MessageSizeExceededError

        batch = sender.create_message_batch()
        for envelope, message in messages:
            try:
                batch.add_message(message)
                continue
            except MessageSizeExceededError:
                if len(batch) == 0:
                    raise self._too_large(queue, envelope) from None
            sender.send_messages(batch)
            batch = sender.create_message_batch()
            try:
                batch.add_message(message)
            except MessageSizeExceededError:
                raise self._too_large(queue, envelope) from None
        if len(batch):
            sender.send_messages(batch)

    def _too_large(self, queue: str, envelope: Envelope) -> PermanentError:
        return PermanentError(
            f"{_describe(envelope)} for queue {queue!r} exceeds the maximum message size of namespace "
            f"{self.namespace}: keep commands small (pass data by URI, not inline)"
        )

    def _get_client(self) -> Any:
        # Called with self._lock held.
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                self._client = self._access.client(retry_total=self._retry_total)
                log.info("Service Bus client for namespace %s (%s)", self.namespace, self._access.how())
        return self._client

    def _sender(self, queue: str) -> _Sender:
        with self._lock:
            cached = self._senders.get(queue)
            if cached is None:
                cached = _Sender(self._get_client().get_queue_sender(queue_name=queue))
                self._senders[queue] = cached
            return cached

    def _drop(self, queue: str, cached: _Sender) -> None:
        # Called with cached.lock held; the next send on this queue opens a new link.
        cached.closed = True
        with self._lock:
            if self._senders.get(queue) is cached:
                del self._senders[queue]
        _quietly_close(cached.sender)

    @contextmanager
    def _sending(self, queue: str, *, what: str) -> Iterator[Any]:
        """Yield the queue's sender, held exclusively; translate what the SDK raises."""
        while True:
            try:
                cached = self._sender(queue)
            except ValueError:
                raise PermanentError(
                    f"cannot create a Service Bus client for namespace {self.namespace}: "
                    f"check {CONNECTION_SETTING} / {NAMESPACE_SETTING}"
                ) from None
            with cached.lock:
                if cached.closed:  # dropped by another thread while this one waited
                    continue
                try:
                    yield cached.sender
                except (PermanentError, TransientError):
                    raise
                except Exception as exc:
                    translated = self._translate(exc, queue, what)
                    if translated is None:
                        raise
                    if not _keeps_link(exc):
                        self._drop(queue, cached)
                    raise translated from None
                return

    def _translate(self, exc: Exception, queue: str, what: str) -> Exception | None:
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.servicebus import exceptions as sb

        ns = self.namespace
        detail = f"{type(exc).__name__}: {self._redact(str(exc))}"
        where = f"queue {queue!r} in namespace {ns}"
        if isinstance(exc, sb.MessagingEntityNotFoundError):
            return PermanentError(
                f"queue {queue!r} not found in namespace {ns}: create it (infra/, queues.json) "
                f"or check {CONNECTION_SETTING} / {NAMESPACE_SETTING} ({detail})"
            )
        if isinstance(exc, sb.MessagingEntityDisabledError):
            return PermanentError(f"{where} is disabled: set its status back to Active ({detail})")
        if isinstance(exc, sb.ServiceBusAuthenticationError | ClientAuthenticationError):
            return PermanentError(
                f"Service Bus could not authenticate to namespace {ns}: check the key in {CONNECTION_SETTING}, "
                f"or the function app's managed identity when {NAMESPACE_SETTING} is set ({detail})"
            )
        if isinstance(exc, sb.ServiceBusAuthorizationError):
            return PermanentError(
                f"not authorized to send to {where}: grant the function app's identity the "
                f"'Azure Service Bus Data Sender' role, or use a connection string with Send rights ({detail})"
            )
        if isinstance(exc, sb.MessageSizeExceededError):
            return PermanentError(
                f"{what} for {where} exceeds the namespace's maximum message size: "
                f"keep commands small (pass data by URI, not inline) ({detail})"
            )
        if isinstance(exc, sb.ServiceBusQuotaExceededError):
            return PermanentError(
                f"{where} is over its quota (queue full or too many connections): drain it or raise "
                f"the queue's max size ({detail})"
            )
        if isinstance(
            exc,
            sb.ServiceBusServerBusyError
            | sb.ServiceBusConnectionError
            | sb.OperationTimeoutError
            | sb.ServiceBusCommunicationError,
        ):
            return TransientError(f"sending {what} to {where} failed, retry later ({detail})")
        if isinstance(exc, sb.ServiceBusError):
            # azure-servicebus 7.x keeps the flag private; newer releases may expose it.
            retryable = getattr(exc, "retryable", getattr(exc, "_retryable", False))
            cls = TransientError if retryable else PermanentError
            return cls(f"sending {what} to {where} failed ({detail})")
        if isinstance(exc, AzureError):
            return TransientError(f"sending {what} to {where} failed, retry later ({detail})")
        return None

    def _redact(self, text: str) -> str:
        return self._access.redact(text)


def _keeps_link(exc: Exception) -> bool:
    """Whether the sender stays usable after ``exc`` (a rejected message or throttling)."""
    from azure.servicebus import exceptions as sb

    return isinstance(exc, sb.MessageSizeExceededError | sb.ServiceBusServerBusyError)


def _describe(envelope: Envelope) -> str:
    size = len(envelope.to_json().encode("utf-8"))
    return f"message {envelope.message_id} ({envelope.command.kind}, {size} bytes)"


def _quietly_close(handle: Any) -> None:
    try:
        handle.close()
    except Exception as exc:  # closing a broken link must not hide the error that broke it
        log.debug("closing %s failed: %s", type(handle).__name__, type(exc).__name__)
