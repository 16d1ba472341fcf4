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


@dataclass(eq=False)
class _Links:
    """One thread's ``ServiceBusClient`` and its senders: only that thread sends with them.

    azure-servicebus does not make its clients and senders thread-safe and advises against sharing
    them across threads. ``lock`` is taken by the owner around each use, and by :meth:`ServiceBusBus.close`
    (from any thread) to wait for a send in flight before it closes the links.
    """

    owner: threading.Thread
    client: Any = None
    senders: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        """Close the senders, then the client (called with ``lock`` held)."""
        self.closed = True
        senders, self.senders = list(self.senders.values()), {}
        for sender in senders:
            _quietly_close(sender)
        if self.client is not None:
            _quietly_close(self.client)
            self.client = None


class ServiceBusBus:
    """Sends commands to Azure Service Bus queues: each sending thread has its own client and senders.

    Nothing from azure-servicebus is shared between threads (its clients are not thread-safe), so
    threads send in parallel. Each sender is one AMQP connection (the SDK shares none): an instance
    holds at most one per sending thread and queue (the Functions worker's thread pool is small and
    long-lived). Links of a thread that has ended are closed when a new thread starts sending.
    """

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
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _all
        self._all: list[_Links] = []

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
        """Close every thread's senders and client (after a send in flight); a later send reconnects."""
        with self._lock:
            every, self._all = self._all, []
        for links in every:
            with links.lock:
                links.close()

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

    def _links(self) -> _Links:
        """This thread's links, registered (and those of ended threads closed) on first use."""
        links: _Links | None = getattr(self._local, "links", None)
        if links is not None and not links.closed:
            return links
        links = _Links(owner=threading.current_thread())
        with self._lock:
            ended = [other for other in self._all if not other.owner.is_alive()]
            self._all = [other for other in self._all if other.owner.is_alive()]
            self._all.append(links)
        for other in ended:  # no thread can use them any more
            with other.lock:
                other.close()
        self._local.links = links
        return links

    def _client(self, links: _Links) -> Any:
        # Called by the owner with links.lock held.
        if links.client is None:
            if self._client_factory is not None:
                links.client = self._client_factory()
            else:
                links.client = self._access.client(retry_total=self._retry_total)
                log.info(
                    "Service Bus client for namespace %s (%s) on thread %s",
                    self.namespace,
                    self._access.how(),
                    links.owner.name,
                )
        return links.client

    def _sender(self, links: _Links, queue: str) -> Any:
        # Called by the owner with links.lock held.
        sender = links.senders.get(queue)
        if sender is None:
            sender = links.senders[queue] = self._client(links).get_queue_sender(queue_name=queue)
        return sender

    @contextmanager
    def _sending(self, queue: str, *, what: str) -> Iterator[Any]:
        """Yield this thread's sender for the queue; translate what the SDK raises."""
        while True:
            links = self._links()
            with links.lock:
                if links.closed:  # closed by close() on another thread: open new links
                    continue
                try:
                    sender = self._sender(links, queue)
                except ValueError:
                    raise PermanentError(
                        f"cannot create a Service Bus client for namespace {self.namespace}: "
                        f"check {CONNECTION_SETTING} / {NAMESPACE_SETTING}"
                    ) from None
                try:
                    yield sender
                except (PermanentError, TransientError):
                    raise
                except Exception as exc:
                    translated = self._translate(exc, queue, what)
                    if translated is None:
                        raise
                    if not _keeps_link(exc):  # the next send on this queue opens a new link
                        if links.senders.get(queue) is sender:
                            del links.senders[queue]
                        _quietly_close(sender)
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
