"""Service Bus queue triggers pumped from the local queues, and timer triggers."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.adapters.local.queues import LocalQueues, MessageLockLost, ReceivedMessage
from signalbox.localhost.config import HostConfigError, ServiceBusOptions, resolve_app_setting_refs
from signalbox.localhost.index import HostedFunction
from signalbox.localhost.schedule import parse_schedule

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
        from azure.functions.servicebus import ServiceBusMessage

        done = threading.Event()
        renewer = threading.Thread(target=self._renew_lock, args=(message, done), daemon=True)
        renewer.start()
        started = time.monotonic()
        reason = f"New ServiceBus message detected on '{self.queue}'."
        log.info("Executing 'Functions.%s' (Reason='%s', MessageId=%s)", self.function.name, reason, message.message_id)
        sb_message = ServiceBusMessage(
            body=message.body,
            message_id=message.message_id,
            session_id=message.session_id,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            subject=message.subject,
            label=message.subject,
            delivery_count=message.delivery_count,
            enqueued_time_utc=message.enqueued_time,
            expires_at_utc=message.expires_at,
            locked_until=message.locked_until,
            lock_token=message.lock_token,
            sequence_number=message.sequence_number,
            scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
            application_properties=dict(message.application_properties),
            user_properties=dict(message.application_properties),
        )
        error: str | None = None
        try:
            self.function.call(**{self.function.trigger_arg: sb_message})
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
        # Renew at half the lock duration, for at most maxAutoLockRenewalDuration.
        deadline = time.monotonic() + self.options.max_auto_lock_renewal.total_seconds()
        interval = max(self.lock_duration.total_seconds() / 2, 0.05)
        while not done.wait(interval):
            if time.monotonic() >= deadline:
                return
            try:
                self.queues.renew_lock(self.queue, message.lock_token)
            except MessageLockLost:
                return


class TimerRunner:
    """Fires one timer trigger on its NCRONTAB (or TimeSpan) schedule."""

    def __init__(self, function: HostedFunction, record: Recorder) -> None:
        self.function = function
        self.record = record
        where = f"function {function.name}: schedule"
        expression = resolve_app_setting_refs(str(function.trigger.get("schedule", "")), where=where)
        try:
            self.schedule = parse_schedule(expression)
        except ValueError as exc:
            raise HostConfigError(f"{where}: {exc}") from None
        self.run_on_startup = bool(function.trigger.get("runOnStartup", False))
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

    def fire(self, *, past_due: bool = False) -> None:
        """Invoke the function once now."""
        from azure.functions.timer import TimerRequest

        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='Timer fired at %s')", self.function.name, datetime.now(UTC))
        status = "Succeeded"
        try:
            self.function.call(**{self.function.trigger_arg: TimerRequest(past_due=past_due)})
        except Exception as exc:
            status = "Failed"
            log.error("Executed 'Functions.%s' (Failed): %s", self.function.name, _describe_error(exc))
        self.record(self.function.name, status, time.monotonic() - started, None)

    def _run(self) -> None:
        if self.run_on_startup:
            self.fire()
        while not self._stop.is_set():
            now = datetime.now(UTC)
            self.next_fire = self.schedule.next_after(now)
            wait = (self.next_fire - now).total_seconds()
            if self._stop.wait(max(wait, 0)):
                return
            late = datetime.now(UTC) - self.next_fire > timedelta(seconds=30)
            self.fire(past_due=late)


def invoke_event_grid(function: HostedFunction, event_kwargs: dict[str, Any]) -> None:
    """Call an Event Grid trigger with one event, as the worker binds it."""
    import azure.functions as func

    function.call(**{function.trigger_arg: func.EventGridEvent(**event_kwargs)})
