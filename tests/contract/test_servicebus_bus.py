"""ServiceBusBus and ServiceBusAccess against azure-servicebus at its message-building boundary (no broker:
AMQP has no local fake).

Messages and batches are the SDK's real objects; the client is a recording stand-in, or the real
``ServiceBusClient`` pointed at a closed port on 127.0.0.1, so nothing is ever sent to a namespace.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus import exceptions as sb

from shared.adapters.local import bus as local_bus
from shared.adapters.servicebus.access import ServiceBusAccess
from shared.adapters.servicebus.bus import ServiceBusBus, to_servicebus_message
from shared.contracts import DeployVersion, Envelope, EvaluateVersion, PromoteVersion, TrainModel
from shared.errors import PermanentError, TransientError

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
KEY = "c2lnbmFsYm94LW5vdC1hLXJlYWwta2V5LWJ1dC1kb250LWxvZy1pdA=="
CONNECTION = f"Endpoint=sb://127.0.0.1/;SharedAccessKeyName=send-only;SharedAccessKey={KEY}"
NAMESPACE = "sb-signalbox.servicebus.windows.net"


def train(model: str = "iris", cause: str = "blob:1") -> Envelope:
    return Envelope.start(TrainModel(model_name=model, reason="landing"), cause=cause, environment="dev", now=NOW)


def promote(model: str = "iris", version: str = "3") -> Envelope:
    evaluate = train(model).follow(EvaluateVersion(model_name=model, version=version), now=NOW)
    return evaluate.follow(PromoteVersion(model_name=model, version=version, decision="won"), now=NOW)


def deploy(model: str = "iris", version: str = "3") -> Envelope:
    return promote(model, version).follow(DeployVersion(model_name=model, version=version), now=NOW)


def body_of(message: ServiceBusMessage) -> str:
    return b"".join(message.body).decode("utf-8")


# -- the message --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [train, promote, deploy], ids=["train", "promote", "deploy"])
def test_a_message_carries_the_envelope(make):
    envelope = make()
    at = NOW + timedelta(minutes=5)
    message = to_servicebus_message(envelope, at)
    assert isinstance(message, ServiceBusMessage)
    assert body_of(message) == envelope.to_json()
    assert Envelope.model_validate_json(body_of(message)) == envelope
    assert message.message_id == envelope.message_id
    assert message.session_id == envelope.session_id
    assert message.correlation_id == envelope.correlation_id
    assert message.subject == envelope.command.kind
    assert message.content_type == "application/json"
    assert message.application_properties == {
        "schema_version": 1,
        "environment": "dev",
        "causation_id": envelope.causation_id or "",
        "model_name": "iris",
    }
    assert message.scheduled_enqueue_time_utc == at


def test_sessions_are_set_on_promote_and_deploy_only():
    assert to_servicebus_message(train()).session_id is None
    assert to_servicebus_message(promote()).session_id == "iris"
    assert to_servicebus_message(deploy()).session_id == "iris"
    assert to_servicebus_message(train()).scheduled_enqueue_time_utc is None


@pytest.mark.parametrize("make", [train, promote, deploy], ids=["train", "promote", "deploy"])
def test_the_message_mirrors_the_local_bus(make):
    envelope = make()
    at = NOW + timedelta(seconds=30)
    local = local_bus.to_message(envelope, at)
    cloud = to_servicebus_message(envelope, at)
    assert (body_of(cloud), cloud.message_id, cloud.session_id, cloud.correlation_id) == (
        local.body,
        local.message_id,
        local.session_id,
        local.correlation_id,
    )
    assert (cloud.subject, cloud.content_type, cloud.scheduled_enqueue_time_utc) == (
        local.subject,
        local.content_type,
        local.scheduled_enqueue_time,
    )
    assert cloud.application_properties == local.application_properties


def test_the_trace_context_travels_in_the_application_properties():
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("hop") as span:
        cloud = to_servicebus_message(train())
        local = local_bus.to_message(train())
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert cloud.application_properties is not None
    assert trace_id in str(cloud.application_properties["traceparent"])
    assert cloud.application_properties == local.application_properties


def test_a_scheduled_time_is_sent_in_utc_and_must_be_aware():
    paris = timezone(timedelta(hours=1))
    message = to_servicebus_message(train(), datetime(2026, 11, 23, 11, 0, tzinfo=paris))
    assert message.scheduled_enqueue_time_utc == NOW
    assert message.scheduled_enqueue_time_utc.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        to_servicebus_message(train(), datetime(2026, 11, 23, 10, 0))


# -- a recording stand-in for ServiceBusClient --------------------------------------------


class Touched:
    """Which threads used an SDK stand-in (closing it is not a use: close() may come from any thread)."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.overlaps = 0  # uses that began while another use was in flight
        self._busy = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[None]:
        self.threads.add(threading.get_ident())
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            self._busy.acquire()
        try:
            time.sleep(0)  # let another thread in, if the adapter would let it
            yield
        finally:
            self._busy.release()


class RecordingBatch(ServiceBusMessageBatch):
    """A real batch (real size accounting) that remembers what was added and who added it."""

    def __init__(self, max_size_in_bytes: int | None = None) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []
        self.touched = Touched()

    def add_message(self, message: Any) -> None:
        with self.touched.use():
            super().add_message(message)
            self.added.append(message)


class RecordingSender:
    def __init__(self, client: RecordingClient, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.closed = False
        self.touched = Touched()
        self.batches: list[RecordingBatch] = []

    def send_messages(self, message: Any) -> None:
        with self.touched.use():
            assert not self.closed, "sent on a closed sender"
            if self.client.failures:
                raise self.client.failures.pop(0)
            if isinstance(message, RecordingBatch):
                message.touched.threads.add(threading.get_ident())
            self.client.sent.append((self.queue, message))

    def create_message_batch(self) -> RecordingBatch:
        with self.touched.use():
            if self.client.batch_failures:
                raise self.client.batch_failures.pop(0)
            self.batches.append(RecordingBatch(self.client.batch_size))
            return self.batches[-1]

    def close(self) -> None:
        self.closed = True


class RecordingClient:
    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size
        self.senders: list[RecordingSender] = []
        self.sent: list[tuple[str, Any]] = []
        self.failures: list[Exception] = []
        self.batch_failures: list[Exception] = []
        self.closed = False
        self.touched = Touched()

    def get_queue_sender(self, *, queue_name: str) -> RecordingSender:
        with self.touched.use():
            sender = RecordingSender(self, queue_name)
            self.senders.append(sender)
            return sender

    def close(self) -> None:
        self.closed = True

    def sender_queues(self) -> list[str]:
        return [s.queue for s in self.senders]


class Factory:
    def __init__(self, batch_size: int | None = None) -> None:
        self.clients: list[RecordingClient] = []
        self.batch_size = batch_size
        self.lock = threading.Lock()

    def __call__(self) -> RecordingClient:
        client = RecordingClient(self.batch_size)
        with self.lock:
            self.clients.append(client)
        return client


def recording_bus(batch_size: int | None = None, **settings: Any) -> tuple[ServiceBusBus, Factory]:
    factory = Factory(batch_size)
    settings = settings or {"fully_qualified_namespace": NAMESPACE}
    return ServiceBusBus(ServiceBusAccess(**settings), client_factory=factory), factory


# -- send and send_many -----------------------------------------------------------------


def test_send_goes_to_the_commands_queue_on_one_client_and_one_sender_per_queue():
    bus, factory = recording_bus()
    bus.send(train(cause="a"))
    bus.send(train(cause="b"))
    bus.send(promote())
    bus.send(deploy(), scheduled_at=NOW + timedelta(minutes=1))
    assert len(factory.clients) == 1
    client = factory.clients[0]
    assert client.sender_queues() == ["train", "promote", "deploy"]
    assert [(queue, m.subject) for queue, m in client.sent] == [
        ("train", "train"),
        ("train", "train"),
        ("promote", "promote"),
        ("deploy", "deploy"),
    ]
    assert all(isinstance(m, ServiceBusMessage) for _, m in client.sent)
    assert client.sent[3][1].scheduled_enqueue_time_utc == NOW + timedelta(minutes=1)
    assert client.sent[3][1].session_id == "iris"


def test_nothing_is_created_before_the_first_send():
    bus, factory = recording_bus()
    bus.send_many([])
    assert factory.clients == []


def test_send_many_batches_per_queue_in_order():
    bus, factory = recording_bus()
    envelopes = [train(cause="1"), promote("a"), train(cause="2"), promote("b"), train(cause="3")]
    bus.send_many(envelopes)
    client = factory.clients[0]
    assert client.sender_queues() == ["train", "promote"]
    assert [queue for queue, _ in client.sent] == ["train", "promote"]
    train_batch, promote_batch = (batch for _, batch in client.sent)
    assert isinstance(train_batch, ServiceBusMessageBatch) and len(train_batch) == 3
    assert [m.message_id for m in train_batch.added] == [e.message_id for e in envelopes if e.queue == "train"]
    assert [m.session_id for m in promote_batch.added] == ["a", "b"]


def test_a_full_batch_is_sent_and_a_new_one_started():
    probe = ServiceBusMessageBatch()
    for cause in ("x", "y"):
        probe.add_message(to_servicebus_message(train(cause=cause)))
    bus, factory = recording_bus(batch_size=probe.size_in_bytes + 10)  # room for two, not three
    envelopes = [train(cause=str(i)) for i in range(5)]
    bus.send_many(envelopes)
    client = factory.clients[0]
    assert [len(batch) for _, batch in client.sent] == [2, 2, 1]
    sent_ids = [m.message_id for _, batch in client.sent for m in batch.added]
    assert sent_ids == [e.message_id for e in envelopes]
    assert client.sender_queues() == ["train"]


def test_a_message_too_big_for_any_batch_is_permanent_and_named():
    bus, factory = recording_bus(batch_size=100)
    envelope = train()
    with pytest.raises(PermanentError, match=rf"message {envelope.message_id} .* exceeds the maximum message size"):
        bus.send_many([envelope])
    bus.send_many([])  # the sender survives a refused message
    assert len(factory.clients[0].senders) == 1 and not factory.clients[0].senders[0].closed


def test_close_closes_senders_and_client_and_a_later_send_reconnects():
    bus, factory = recording_bus()
    bus.send(train())
    bus.send(promote())
    bus.close()
    first = factory.clients[0]
    assert first.closed and all(s.closed for s in first.senders)
    bus.send(train())
    assert len(factory.clients) == 2 and factory.clients[1].sent[0][0] == "train"


THREADS = 16


def run_threads(count: int, work: Any) -> None:
    """``work(i)`` on ``count`` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"sender-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a sending thread hangs"
    if errors:
        raise errors[0]


def assert_no_sdk_object_shared_between_threads(factory: Factory) -> None:
    for client in factory.clients:
        objects = [client, *client.senders, *(batch for sender in client.senders for batch in sender.batches)]
        owners = set().union(*(obj.touched.threads for obj in objects))
        assert len(owners) <= 1, f"one client (and its senders, batches) used by {len(owners)} threads"
        assert all(obj.touched.overlaps == 0 for obj in objects)


def test_concurrent_senders_each_use_their_own_client_and_senders():
    """azure-servicebus' clients, senders and batches are not thread-safe: no two threads share one."""
    bus, factory = recording_bus()
    envelopes = [make(f"m{i}") for i in range(50) for make in (train, promote, deploy)]

    def work(i: int) -> None:
        for envelope in envelopes[i::THREADS]:
            bus.send(envelope)
        bus.send_many([train(cause=f"many-{i}-{n}") for n in range(3)] + [promote(f"many-{i}")])

    run_threads(THREADS, work)
    assert_no_sdk_object_shared_between_threads(factory)
    assert len(factory.clients) == THREADS  # one per sending thread
    sent = [m.message_id for client in factory.clients for _, item in client.sent for m in messages_of(item)]
    wanted = [e.message_id for e in envelopes]
    wanted += [e.message_id for i in range(THREADS) for e in [train(cause=f"many-{i}-{n}") for n in range(3)]]
    wanted += [promote(f"many-{i}").message_id for i in range(THREADS)]
    assert sorted(sent) == sorted(wanted)  # every message once, none lost or doubled
    for client in factory.clients:
        assert sorted(client.sender_queues()) == sorted(set(client.sender_queues()))  # one sender per queue
    bus.close()
    assert all(client.closed and all(s.closed for s in client.senders) for client in factory.clients)


def messages_of(item: Any) -> list[ServiceBusMessage]:
    return list(item.added) if isinstance(item, RecordingBatch) else [item]


def test_a_thread_keeps_its_client_and_senders_across_sends():
    bus, factory = recording_bus()

    def work(i: int) -> None:
        for n in range(5):
            bus.send(train(cause=f"{i}-{n}"))

    run_threads(4, work)
    assert len(factory.clients) == 4
    assert all(client.sender_queues() == ["train"] and len(client.sent) == 5 for client in factory.clients)


def test_links_of_ended_threads_are_closed_when_a_new_thread_sends():
    bus, factory = recording_bus()
    all_sent = threading.Barrier(3)

    def first(i: int) -> None:
        bus.send(train(cause=f"first-{i}"))
        all_sent.wait()  # none ends before all have their links (a new thread reaps ended ones)

    run_threads(3, first)
    first = list(factory.clients)
    assert not any(client.closed for client in first)
    run_threads(1, lambda i: bus.send(train(cause="later")))
    assert all(client.closed and all(s.closed for s in client.senders) for client in first)
    assert len(factory.clients) == 4 and not factory.clients[-1].closed


def test_close_waits_for_a_send_in_flight_on_another_thread():
    bus, factory = recording_bus()
    entered, release = threading.Event(), threading.Event()
    closed_while_sending: list[bool] = []

    def slow(envelope: Envelope) -> None:
        with bus._sending(envelope.queue, what="slow") as sender:
            sender.send_messages(to_servicebus_message(envelope))
            entered.set()
            release.wait(10)
            closed_while_sending.append(sender.closed)

    sending = threading.Thread(target=slow, args=(train(),))
    sending.start()
    assert entered.wait(10)
    closer = threading.Thread(target=bus.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() must wait for the send in flight"
    release.set()
    sending.join(10)
    closer.join(10)
    assert closed_while_sending == [False]
    client = factory.clients[0]
    assert client.closed and client.senders[0].closed
    bus.send(train(cause="after"))  # this (test) thread gets new links
    assert len(factory.clients) == 2


def test_a_broken_link_is_dropped_for_its_thread_only():
    bus, factory = recording_bus()
    both_warm = threading.Barrier(2)
    failed: list[str] = []

    def work(i: int) -> None:
        bus.send(train(cause=f"warm-{i}"))
        both_warm.wait()
        if i == 0:
            mine = next(c for c in list(factory.clients) if threading.get_ident() in c.touched.threads)
            mine.failures.append(sb.ServiceBusConnectionError(message="socket closed"))
            with pytest.raises(TransientError, match="retry later"):
                bus.send(train(cause="lost"))
            failed.append(threading.current_thread().name)
        bus.send(train(cause=f"after-{i}"))

    run_threads(2, work)
    assert failed == ["sender-0"]
    assert len(factory.clients) == 2  # the client is kept: each sender owns its AMQP connection
    by_senders = sorted(factory.clients, key=lambda c: len(c.senders))
    assert [len(c.senders) for c in by_senders] == [1, 2]  # only the failing thread reopened its sender
    assert not by_senders[0].senders[0].closed
    assert by_senders[1].senders[0].closed and not by_senders[1].senders[1].closed
    assert_no_sdk_object_shared_between_threads(factory)


# -- errors --------------------------------------------------------------------------------

ERRORS = [
    # (SDK error, what it becomes, what the message must say, whether the sender is kept)
    (sb.MessagingEntityNotFoundError, PermanentError, f"queue 'train' not found in namespace {NAMESPACE}", False),
    (sb.MessagingEntityDisabledError, PermanentError, "is disabled", False),
    (sb.ServiceBusAuthenticationError, PermanentError, "could not authenticate", False),
    (sb.ServiceBusAuthorizationError, PermanentError, "Azure Service Bus Data Sender", False),
    (sb.MessageSizeExceededError, PermanentError, "exceeds the namespace's maximum message size", True),
    (sb.ServiceBusQuotaExceededError, PermanentError, "over its quota", False),
    (sb.ServiceBusServerBusyError, TransientError, "retry later", True),
    (sb.ServiceBusConnectionError, TransientError, "retry later", False),
    (sb.OperationTimeoutError, TransientError, "retry later", False),
    (sb.ServiceBusCommunicationError, TransientError, "retry later", False),
    (sb.SessionCannotBeLockedError, TransientError, "failed", False),  # any other retryable error
    (sb.MessageNotFoundError, PermanentError, "failed", False),  # any other non-retryable one
]


@pytest.mark.parametrize(("error", "becomes", "says", "kept"), ERRORS, ids=[e[0].__name__ for e in ERRORS])
def test_sdk_errors_become_transient_or_permanent(error, becomes, says, kept, caplog):
    caplog.set_level(logging.DEBUG)
    bus, factory = recording_bus()
    bus.send(train(cause="warm"))  # opens the client and the train sender
    client = factory.clients[0]
    client.failures.append(error(message=f"amqp said no (SharedAccessKey={KEY})"))
    with pytest.raises(becomes) as raised:
        bus.send(train())
    assert says in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert KEY not in str(raised.value) and KEY not in caplog.text
    bus.send(train(cause="after"))
    assert client.sender_queues() == (["train"] if kept else ["train", "train"])
    assert client.senders[0].closed is not kept
    assert len(factory.clients) == 1  # the client is kept: each sender owns its AMQP connection


def test_errors_while_batching_are_translated_too():
    bus, factory = recording_bus()
    bus.send_many([train(cause="warm")])
    factory.clients[0].batch_failures.append(sb.ServiceBusConnectionError(message="socket closed"))
    with pytest.raises(TransientError, match="sending 1 message"):
        bus.send_many([train()])
    factory.clients[0].failures.append(sb.MessagingEntityNotFoundError(message="no such entity"))
    with pytest.raises(PermanentError, match="queue 'promote' not found"):
        bus.send_many([promote()])


def test_a_credential_that_cannot_get_a_token_is_permanent():
    bus, factory = recording_bus()
    bus.send(train(cause="warm"))
    factory.clients[0].failures.append(ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token"))
    with pytest.raises(PermanentError, match="managed identity"):
        bus.send(train())


def test_a_programming_error_is_not_disguised():
    bus, factory = recording_bus()
    bus.send(train(cause="warm"))
    factory.clients[0].failures.append(TypeError("bad argument"))
    with pytest.raises(TypeError, match="bad argument"):
        bus.send(train())


def test_the_namespace_of_a_connection_string_names_errors_without_its_key(caplog):
    caplog.set_level(logging.DEBUG)
    bus, factory = recording_bus(connection_string=CONNECTION)
    assert bus.namespace == "127.0.0.1" and KEY not in repr(bus)
    bus.send(train(cause="warm"))
    factory.clients[0].failures.append(sb.MessagingEntityNotFoundError(message=f"gone {CONNECTION} key {KEY}"))
    with pytest.raises(PermanentError) as raised:
        bus.send(train())
    assert "queue 'train' not found in namespace 127.0.0.1" in str(raised.value)
    assert "ServiceBusConnection" in str(raised.value)
    assert KEY not in str(raised.value) and KEY not in caplog.text


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{}, {"fully_qualified_namespace": NAMESPACE, "connection_string": CONNECTION}, {"connection_string": ""}],
    ids=["neither", "both", "empty"],
)
def test_exactly_one_way_to_connect(settings):
    with pytest.raises(ValueError) as raised:
        ServiceBusAccess(**settings)
    text = str(raised.value)
    assert "ServiceBusConnection__fullyQualifiedNamespace" in text and "ServiceBusConnection " in text
    assert KEY not in text


@pytest.mark.parametrize(
    ("connection_string", "says"),
    [
        (f"SharedAccessKeyName=k;SharedAccessKey={KEY}", "not a Service Bus connection string"),
        (f"{CONNECTION};EntityPath=train", "scoped to one queue"),
    ],
)
def test_a_bad_connection_string_is_refused_without_echoing_it(connection_string, says):
    with pytest.raises(ValueError, match=says) as raised:
        ServiceBusAccess(connection_string=connection_string)
    assert KEY not in str(raised.value)


def test_a_credential_goes_with_the_namespace_only():
    with pytest.raises(ValueError, match="credential applies only"):
        ServiceBusAccess(connection_string=CONNECTION, credential=object())


def test_the_namespace_setting_may_be_a_url():
    assert ServiceBusAccess(fully_qualified_namespace=f"sb://{NAMESPACE}/").namespace == NAMESPACE


def test_a_connection_string_the_sdk_refuses_is_permanent():
    bus = ServiceBusBus(ServiceBusAccess(connection_string=f"Endpoint=sb://127.0.0.1/;SharedAccessKey={KEY}"))
    with pytest.raises(PermanentError, match="check ServiceBusConnection") as raised:
        bus.send(train())
    assert KEY not in str(raised.value)


# -- the real ServiceBusClient, offline ------------------------------------------------------


def amqp_port_closed() -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", 5671)) != 0


def test_the_real_client_builds_offline_from_a_connection_string(caplog):
    caplog.set_level(logging.DEBUG)
    client = ServiceBusClient.from_connection_string(CONNECTION)
    try:
        assert client.fully_qualified_namespace == "127.0.0.1"
        sender = client.get_queue_sender(queue_name="train")
        assert str(sender).endswith("entity: train")
        sender.close()
    finally:
        client.close()
    assert KEY not in caplog.text


@pytest.mark.skipif(not amqp_port_closed(), reason="something listens on 127.0.0.1:5671")
def test_the_real_client_unreachable_is_transient_and_reconnects(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    opened: list[str] = []
    real = ServiceBusClient.get_queue_sender

    def counting(self: ServiceBusClient, queue_name: str, **kwargs: Any) -> Any:
        opened.append(queue_name)
        return real(self, queue_name, **kwargs)

    monkeypatch.setattr(ServiceBusClient, "get_queue_sender", counting)
    bus = ServiceBusBus(ServiceBusAccess(connection_string=CONNECTION), retry_total=0)
    try:
        for _ in range(2):
            with pytest.raises(TransientError, match=r"namespace 127\.0\.0\.1") as raised:
                bus.send(train())
            assert "ServiceBusConnectionError" in str(raised.value)
        with pytest.raises(TransientError):
            bus.send_many([train(), promote()])
    finally:
        bus.close()
    assert opened == ["train", "train", "train"]  # a broken sender is dropped and reopened
    assert KEY not in caplog.text and KEY not in str(raised.value)


@pytest.mark.skipif(not amqp_port_closed(), reason="something listens on 127.0.0.1:5671")
def test_real_clients_and_senders_on_many_threads_are_never_shared(caplog, monkeypatch):
    """The real ServiceBusClient / ServiceBusSender, offline: each thread builds and uses its own."""
    caplog.set_level(logging.INFO)
    opened: list[tuple[int, ServiceBusClient, Any]] = []  # (thread, client, sender), kept alive: no id reuse
    lock = threading.Lock()
    real = ServiceBusClient.get_queue_sender

    def recording(self: ServiceBusClient, queue_name: str, **kwargs: Any) -> Any:
        sender = real(self, queue_name, **kwargs)
        with lock:
            opened.append((threading.get_ident(), self, sender))
        return sender

    monkeypatch.setattr(ServiceBusClient, "get_queue_sender", recording)
    bus = ServiceBusBus(ServiceBusAccess(connection_string=CONNECTION), retry_total=0)
    outcomes: list[str] = []

    def work(i: int) -> None:
        try:
            bus.send(train(cause=f"real-{i}"))
        except TransientError as exc:
            with lock:
                outcomes.append(type(exc).__name__)

    try:
        run_threads(8, work)
    finally:
        bus.close()
    assert outcomes == ["TransientError"] * 8  # unreachable, and translated on every thread
    assert len({thread for thread, _, _ in opened}) == 8
    assert len({id(client) for _, client, _ in opened}) == 8  # a real client per thread
    assert len({id(sender) for _, _, sender in opened}) == 8
    assert caplog.text.count("Service Bus client for namespace 127.0.0.1") == 8
    assert KEY not in caplog.text


class StubCredential:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("not-a-token", 2_000_000_000)


@pytest.mark.skipif(not amqp_port_closed(), reason="something listens on 127.0.0.1:5671")
def test_the_namespace_uses_default_azure_credential_unless_given_one(monkeypatch):
    built: list[StubCredential] = []

    def default_credential() -> StubCredential:
        built.append(StubCredential())
        return built[-1]

    import azure.identity

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", default_credential)
    access = ServiceBusAccess(fully_qualified_namespace="127.0.0.1")
    assert built == []  # nothing is made before a client is needed
    bus = ServiceBusBus(access, retry_total=0)
    with pytest.raises(TransientError):
        bus.send(train())
    bus.close()
    with pytest.raises(TransientError):
        bus.send(train())  # a new client after close: the same credential
    bus.close()
    assert len(built) == 1  # made lazily, once

    given = StubCredential()
    bus = ServiceBusBus(ServiceBusAccess(fully_qualified_namespace="127.0.0.1", credential=given), retry_total=0)
    with pytest.raises(TransientError):
        bus.send(train())
    bus.close()
    assert len(built) == 1


def test_importing_the_adapters_imports_no_azure_sdk():
    code = (
        "import sys, shared.adapters.servicebus.bus, shared.adapters.azure.events\n"
        "print(sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- one access, shared by the bus, the dead letters and the queue depths ----------------------------------


def test_one_access_makes_one_credential_for_every_service_bus_adapter(monkeypatch):
    """bootstrap builds one ServiceBusAccess: the bus, the dead letters and the queue depths share its credential."""
    from azure.servicebus.management import ServiceBusAdministrationClient

    from shared.adapters.servicebus.deadletters import ServiceBusDeadLetters
    from shared.queue_depths import ServiceBusQueueDepths

    built: list[StubCredential] = []

    def default_credential() -> StubCredential:
        built.append(StubCredential())
        return built[-1]

    import azure.identity

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", default_credential)
    access = ServiceBusAccess(fully_qualified_namespace=NAMESPACE)
    bus = ServiceBusBus(access)
    dead_letters = ServiceBusDeadLetters(access)
    depths = ServiceBusQueueDepths(access)
    links = bus._links()
    with links.lock:
        bus_client = bus._client(links)
    dead_letter_client = dead_letters._get_client()
    admin = depths._admin_client()
    try:
        assert isinstance(bus_client, ServiceBusClient) and isinstance(dead_letter_client, ServiceBusClient)
        assert bus_client is not dead_letter_client  # each adapter owns (and closes) its client
        assert isinstance(admin, ServiceBusAdministrationClient)
        assert bus_client.fully_qualified_namespace == dead_letter_client.fully_qualified_namespace == NAMESPACE
        assert admin.fully_qualified_namespace == NAMESPACE
        assert len(built) == 1
        assert bus_client._credential is dead_letter_client._credential is built[0]
    finally:
        bus.close()
        dead_letters.close()
        admin.close()


def test_the_access_from_settings_prefers_the_managed_identity_and_never_shows_the_key():
    from shared.settings import Settings

    both = Settings.model_validate(
        {"ServiceBusConnection__fullyQualifiedNamespace": NAMESPACE, "ServiceBusConnection": CONNECTION}
    )
    by_identity = ServiceBusAccess.from_settings(both)
    assert by_identity.namespace == NAMESPACE and not by_identity.uses_connection_string
    by_key = ServiceBusAccess.from_settings(Settings.model_validate({"ServiceBusConnection": CONNECTION}))
    assert by_key.namespace == "127.0.0.1" and by_key.uses_connection_string and by_key.credential() is None
    assert KEY not in repr(by_key) and "connection string" in repr(by_key)
    assert KEY not in by_key.redact(f"failed for {CONNECTION} (key {KEY})")
    with pytest.raises(ValueError, match="neither"):
        ServiceBusAccess.from_settings(Settings.model_validate({}))
