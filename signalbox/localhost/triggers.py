"""Service Bus queue triggers pumped from the local queues, timer triggers, and Event Grid invocations.

Trigger inputs are built as the Python worker builds them: the Functions host sends the trigger's data and
its trigger metadata (typed data, converted as the host's gRPC layer converts .NET values), and the
``azure.functions`` library's own converter for the binding turns them into the function's argument.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.adapters.local.queues import LocalQueues, MessageLockLost, ReceivedMessage
from signalbox.localhost.config import HostConfigError, ServiceBusOptions, resolve_app_setting_refs
from signalbox.localhost.index import HostedFunction
from signalbox.localhost.schedule import parse_schedule

if TYPE_CHECKING:
    from azure.functions.meta import Datum

log = logging.getLogger("signalbox.host")

Recorder = Callable[[str, str, float, str | None], None]


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class QueuePump:
    """Feeds one Service Bus trigger from its local queue, as the Functions host does.

    Peek-lock receive, a lock renewed while the function runs (up to
    maxAutoLockRenewalDuration), complete on success and abandon on exception
    (the Python worker's behaviour); MaxDeliveryCount then dead-letters.
    """

    def __init__(
        self,
        function: HostedFunction,
        queues: LocalQueues,
        options: ServiceBusOptions,
        record: Recorder,
        *,
        poll_interval: float = 0.05,
    ) -> None:
        self.function = function
        self.queues = queues
        self.options = options
        self.record = record
        self.poll_interval = poll_interval
        where = f"function {function.name}: queueName"
        self.queue = resolve_app_setting_refs(str(function.trigger.get("queueName", "")), where=where)
        spec = queues.specs.get(self.queue)
        if spec is None:
            raise HostConfigError(f"{where}: queue {self.queue!r} is not defined in shared/queues.json")
        wants_sessions = bool(function.trigger.get("isSessionsEnabled", False))
        if wants_sessions != spec.requires_session:
            raise HostConfigError(
                f"function {function.name}: isSessionsEnabled={wants_sessions} but queue {self.queue!r} "
                f"has requiresSession={spec.requires_session}"
            )
        self.lock_duration = spec.lock_duration
        self.concurrency = options.max_concurrent_sessions if wants_sessions else options.max_concurrent_calls
        self.auto_complete = bool(function.trigger.get("autoCompleteMessages", options.auto_complete_messages))
        self._stop = threading.Event()
        self._slots = threading.Semaphore(self.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"sb-{function.name}")
        self._thread = threading.Thread(target=self._run, name=f"pump-{function.name}", daemon=True)

    def start(self) -> None:
        """Start pumping."""
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """Stop receiving; with ``wait``, let running invocations finish."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            free = 0
            while free < self.concurrency and self._slots.acquire(blocking=False):
                free += 1
            if free == 0:
                self._stop.wait(self.poll_interval)
                continue
            try:
                messages = self.queues.receive(self.queue, max_messages=free)
            except Exception:
                log.exception("receive from queue %s failed", self.queue)
                messages = []
            for _ in range(free - len(messages)):
                self._slots.release()
            for message in messages:
                self._pool.submit(self._process, message)
            if not messages:
                self._stop.wait(self.poll_interval)

    def _process(self, message: ReceivedMessage) -> None:
        try:
            self._invoke(message)
        finally:
            self._slots.release()

    def _invoke(self, message: ReceivedMessage) -> None:
        from azure.functions.servicebus import ServiceBusMessageInConverter

        done = threading.Event()
        renewer = threading.Thread(target=self._renew_lock, args=(message, done), daemon=True)
        renewer.start()
        started = time.monotonic()
        reason = f"New ServiceBus message detected on '{self.queue}'."
        log.info("Executing 'Functions.%s' (Reason='%s', MessageId=%s)", self.function.name, reason, message.message_id)
        data, metadata = service_bus_input(message, self.function.name)
        error: str | None = None
        try:
            # Inside the try: a message the converter cannot bind fails the invocation, as in the worker.
            bound = ServiceBusMessageInConverter.decode(data, trigger_metadata=metadata)
            self.function.call(**{self.function.trigger_arg: bound})
        except Exception as exc:
            error = _describe_error(exc)
            log.error(
                "Executed 'Functions.%s' (Failed, MessageId=%s, DeliveryCount=%s): %s\n%s",
                self.function.name,
                message.message_id,
                message.delivery_count,
                error,
                traceback.format_exc(limit=5),
            )
        finally:
            done.set()
            renewer.join()
        elapsed = time.monotonic() - started
        self.record(self.function.name, "Failed" if error else "Succeeded", elapsed, message.message_id)
        try:
            if error is not None:
                self.queues.abandon(self.queue, message.lock_token, error=error)
            elif self.auto_complete:
                self.queues.complete(self.queue, message.lock_token)
                log.info(
                    "Executed 'Functions.%s' (Succeeded, MessageId=%s, Duration=%dms)",
                    self.function.name,
                    message.message_id,
                    elapsed * 1000,
                )
        except MessageLockLost:
            log.warning(
                "lock on message %s of queue %s was lost before it could be settled; it will be redelivered",
                message.message_id,
                self.queue,
            )

    def _renew_lock(self, message: ReceivedMessage, done: threading.Event) -> None:
        # Renew at half the lock duration, for at most host.json's maxAutoLockRenewalDuration: the Service
        # Bus extension (v5) applies that one setting to message locks and to session locks. On a session
        # queue the local session lock is the lock of the session's message in flight, so this renews both.
        deadline = time.monotonic() + self.options.max_auto_lock_renewal.total_seconds()
        interval = max(self.lock_duration.total_seconds() / 2, 0.05)
        wait = interval
        while not done.wait(wait):
            if time.monotonic() >= deadline:
                return
            try:
                self.queues.renew_lock(self.queue, message.lock_token)
            except MessageLockLost:
                return
            except Exception as exc:
                # A busy queue file, say: the lock still has half its time, so try again soon.
                log.warning("renewing the lock of message %s on %s failed: %s", message.message_id, self.queue, exc)
                wait = max(interval / 4, 0.05)
            else:
                wait = interval


class TimerRunner:
    """Fires one timer trigger on its NCRONTAB (or TimeSpan) schedule.

    With the schedule monitor (``useMonitor``; by default on for schedules of a minute or more, as in
    Azure) the schedule's status (``Last``, ``Next``, ``LastUpdated``) is kept in ``status_dir``, and an
    occurrence missed while the host was down fires once at start-up with ``IsPastDue`` true.
    """

    def __init__(self, function: HostedFunction, record: Recorder, status_dir: Path | None = None) -> None:
        self.function = function
        self.record = record
        where = f"function {function.name}: schedule"
        expression = resolve_app_setting_refs(str(function.trigger.get("schedule", "")), where=where)
        try:
            self.schedule = parse_schedule(expression)
        except ValueError as exc:
            raise HostConfigError(f"{where}: {exc}") from None
        self.run_on_startup = bool(function.trigger.get("runOnStartup", False))
        monitor = function.trigger.get("useMonitor")
        if monitor is None:
            probe = self.schedule.next_after(datetime.now(UTC))
            monitor = self.schedule.next_after(probe) - probe >= timedelta(minutes=1)
        self.status_file = status_dir / f"{function.name}.json" if status_dir is not None and monitor else None
        self._kept = self._load_status()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timer-{function.name}", daemon=True)
        self.next_fire: datetime | None = None

    def start(self) -> None:
        """Start the schedule."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the schedule."""
        self._stop.set()
        self._thread.join(timeout=5)

    def fire(self, *, past_due: bool = False, occurrence: datetime | None = None) -> None:
        """Invoke the function once now (for the scheduled ``occurrence``, when it is one)."""
        from azure.functions.timer import TimerRequestConverter

        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='Timer fired at %s')", self.function.name, datetime.now(UTC))
        status = "Succeeded"
        try:
            data = timer_input(past_due=past_due, status=self._status())
            bound = TimerRequestConverter.decode(data, trigger_metadata={})
            self.function.call(**{self.function.trigger_arg: bound})
        except Exception as exc:
            status = "Failed"
            log.error("Executed 'Functions.%s' (Failed): %s", self.function.name, _describe_error(exc))
        self.record(self.function.name, status, time.monotonic() - started, None)
        if occurrence is not None:
            self._save_status(occurrence)

    def _run(self) -> None:
        missed = self._missed()
        if missed is not None:
            log.info(
                "Timer '%s' missed its %s occurrence while the host was down: firing it now", self.function.name, missed
            )
            self.fire(past_due=True, occurrence=missed)
        elif self.run_on_startup:
            self.fire()
        while not self._stop.is_set():
            now = datetime.now(UTC)
            self.next_fire = self.schedule.next_after(now)
            self._save_status(None, upcoming=self.next_fire)
            wait = (self.next_fire - now).total_seconds()
            if self._stop.wait(max(wait, 0)):
                return
            late = datetime.now(UTC) - self.next_fire > timedelta(seconds=30)
            self.fire(past_due=late, occurrence=self.next_fire)

    # -- the schedule monitor ----------------------------------------------------------------------

    def _load_status(self) -> dict[str, str] | None:
        """The schedule status an earlier host left for this timer, if monitored (read once, at start)."""
        if self.status_file is None:
            return None
        try:
            raw = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def _status(self) -> dict[str, str] | None:
        """The schedule status kept for this timer (``Last``, ``Next``, ``LastUpdated``), if monitored."""
        return self._kept

    def _missed(self) -> datetime | None:
        """The first occurrence after the last recorded one, if it is already past (Azure's past-due check)."""
        status = self._status()
        if not status:
            return None
        try:
            since = datetime.fromisoformat(status.get("LastUpdated") or status["Last"])
        except (KeyError, TypeError, ValueError):
            return None
        expected = self.schedule.next_after(since.astimezone(UTC))
        return expected if expected < datetime.now(UTC) else None

    def _save_status(self, fired: datetime | None, *, upcoming: datetime | None = None) -> None:
        if self.status_file is None:
            return
        previous = self._kept or {}
        now = datetime.now(UTC)
        status = {
            "Last": fired.isoformat() if fired is not None else previous.get("Last", ""),
            "Next": (upcoming or self.schedule.next_after(now)).isoformat(),
            "LastUpdated": now.isoformat(),
        }
        self._kept = status
        try:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.status_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(status), encoding="utf-8")
            temporary.replace(self.status_file)
        except OSError as exc:  # the schedule keeps running; only a missed fire after a restart is at stake
            log.warning("could not record the schedule status of timer %s: %s", self.function.name, exc)


def invoke_event_grid(function: HostedFunction, event: Mapping[str, Any]) -> None:
    """Call an Event Grid trigger with one event (its JSON object as delivered), bound as the worker binds it.

    The converter binds ``azure.functions.CloudEvent`` for an event with ``specversion`` (a CloudEvents
    subscription) and ``azure.functions.EventGridEvent`` otherwise, whatever the function's annotation says.
    """
    from azure.functions.eventgrid import EventGridEventInConverter

    data, metadata = event_grid_input(event, function.name)
    bound = EventGridEventInConverter.decode(data, trigger_metadata=metadata)
    function.call(**{function.trigger_arg: bound})


# -- trigger inputs as the Functions host sends them ------------------------------------------------


def event_grid_input(event: Mapping[str, Any], function_name: str) -> tuple[Datum, dict[str, Datum]]:
    """The data and trigger metadata the host sends the worker for one Event Grid event.

    The extension binds the event's JSON object (typed data ``json``) and offers its ``data`` property as
    binding data; the host adds ``sys``.
    """
    from azure.functions.meta import Datum

    metadata = {"sys": _sys_metadata(function_name)}
    if "data" in event:
        metadata["data"] = Datum(_json(event["data"]), "json")
    return Datum(_json(event), "json"), metadata


def service_bus_input(message: ReceivedMessage, function_name: str) -> tuple[Datum, dict[str, Datum]]:
    """The data and trigger metadata the host sends the worker for one Service Bus message.

    The binding data of the Service Bus extension (v5) for a single message; the host leaves out null
    values and converts the rest to typed data: text as ``string``, everything else (int, long, DateTime,
    DateTimeOffset, dictionaries) as Json.NET-serialised ``json``. ``DateTime`` values come from
    ``DateTimeOffset.DateTime``, so they carry no offset (the converter returns them naive).
    """
    from azure.functions.meta import Datum

    def text(value: str | None) -> Datum | None:
        return None if value is None else Datum(value, "string")

    def number(value: int) -> Datum:
        return Datum(_json(value), "json")

    def clock(value: datetime) -> Datum:
        return Datum(_json(_dotnet_time(value, offset=False)), "json")

    def moment(value: datetime) -> Datum:
        return Datum(_json(_dotnet_time(value, offset=True)), "json")

    properties = Datum(_json(dict(message.application_properties)), "json")
    fields: dict[str, Datum | None] = {
        "DeliveryCount": number(message.delivery_count),
        "DeadLetterSource": None,
        "LockToken": text(message.lock_token),
        "ExpiresAtUtc": clock(message.expires_at),
        "ExpiresAt": moment(message.expires_at),
        "EnqueuedTimeUtc": clock(message.enqueued_time),
        "EnqueuedTime": moment(message.enqueued_time),
        "MessageId": text(message.message_id),
        "ContentType": text(message.content_type),
        "ReplyTo": None,
        "SequenceNumber": number(message.sequence_number),
        "To": None,
        "Subject": text(message.subject),
        "Label": text(message.subject),
        "CorrelationId": text(message.correlation_id),
        "ApplicationProperties": properties,
        "UserProperties": properties,
        "SessionId": text(message.session_id),
        "ReplyToSessionId": None,
        "PartitionKey": None,
        "TransactionPartitionKey": None,
        "sys": _sys_metadata(function_name),
    }
    metadata = {key: value for key, value in fields.items() if value is not None}
    try:
        body = Datum(message.body.decode("utf-8"), "string")
    except UnicodeDecodeError:
        body = Datum(message.body, "bytes")
    return body, metadata


def timer_input(*, past_due: bool, status: Mapping[str, str] | None = None) -> Datum:
    """The data the host sends the worker for a timer: the TimerInfo, Json.NET-serialised.

    ``ScheduleStatus`` is null for a timer without the schedule monitor.
    """
    from azure.functions.meta import Datum

    info = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": dict(status) if status else None,
        "IsPastDue": past_due,
    }
    return Datum(_json(info), "json")


def _sys_metadata(function_name: str) -> Datum:
    from azure.functions.meta import Datum

    now = datetime.now(UTC)
    return Datum(
        _json(
            {
                "MethodName": function_name,
                "UtcNow": _dotnet_time(now, offset=False) + "Z",
                "RandGuid": str(uuid.uuid4()),
            }
        ),
        "json",
    )


def _json(value: Any) -> str:
    # Json.NET's Formatting.None: no whitespace between tokens.
    return json.dumps(value, separators=(",", ":"))


def _dotnet_time(value: datetime, *, offset: bool) -> str:
    """``value`` as Json.NET writes a .NET DateTime (no offset) or DateTimeOffset (+00:00), in UTC.

    Json.NET writes up to 7 fractional digits and drops trailing zeros (and the point when none is left).
    """
    utc = value.astimezone(UTC) if value.tzinfo else value
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{utc.microsecond:06d}0".rstrip("0")
    if fraction:
        text += "." + fraction
    return text + ("+00:00" if offset else "")
