"""Event Grid's dead-letter container on this machine: ``STATE_DIR/eventgrid-deadletters/``.

The local host fills it as Event Grid fills the subscription's container when a delivery exhausts
its retries (:func:`deliver_with_retries`, :func:`write_dead_letter`): one JSON file per dead letter
at ``<function>/<yyyy>/<m>/<d>/<h>/<guid>.json`` holding ``[event + deadLetterReason, deliveryAttempts,
lastDeliveryOutcome, lastHttpStatusCode, publishTime, lastDeliveryAttemptTime]`` (the local
"subscription" is the function's name). :class:`LocalEventGridDeadLetters` reads it for
``signalbox dlq --source eventgrid``; the replay counts live in ``signalbox-replays/`` beside them.
A blob lease is a lock file (``O_EXCL``) that lapses after :data:`LEASE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared.deadletters.eventgrid import REPLAYS_PREFIX, StoredBlob, dead_letter_blob

FOLDER = "eventgrid-deadletters"
LEASE_SECONDS = 60.0
MAX_DELIVERY_ATTEMPTS = "MaxDeliveryAttemptsExceeded"
TIME_TO_LIVE_EXCEEDED = "TimeToLiveExceeded"
_LOCK_SUFFIX = ".lease"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class LocalEventGridDeadLetters:
    """The local dead-letter folder, with the store interface of ``shared.deadletters.eventgrid``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"{name!r} is outside the dead-letter folder")
        return path

    def blobs(self) -> Iterator[StoredBlob]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*.json")):
            name = path.relative_to(self.root).as_posix()
            if name.startswith(REPLAYS_PREFIX) or path.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                yield StoredBlob(name, datetime.fromtimestamp(path.stat().st_mtime, UTC))

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def lock(self, name: str) -> str | None:
        path = self._path(name)
        if not path.exists():
            return None
        lock = path.with_name(path.name + _LOCK_SUFFIX)
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime > LEASE_SECONDS:
                lock.unlink()  # a lapsed lease (its run was killed)
        lease = uuid.uuid4().hex
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(lease)
        if not path.exists():  # settled between the look and the lock
            lock.unlink(missing_ok=True)
            return None
        return lease

    def _check(self, name: str, lease: str) -> Path:
        path = self._path(name)
        lock = path.with_name(path.name + _LOCK_SUFFIX)
        try:
            held = lock.read_text(encoding="utf-8")
        except FileNotFoundError:
            held = ""
        if held != lease:
            raise RuntimeError(f"the lease on {name} was lost (it lapsed after {LEASE_SECONDS:.0f} s)")
        return path

    def replace(self, name: str, data: bytes, lease: str) -> None:
        _write_atomically(self._check(name, lease), data)

    def delete(self, name: str, lease: str) -> None:
        self._check(name, lease).unlink(missing_ok=True)

    def release(self, name: str, lease: str) -> None:
        path = self._path(name)
        lock = path.with_name(path.name + _LOCK_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text(encoding="utf-8") == lease:
                lock.unlink()
        # Empty hour/day folders of a settled dead letter go too (never the root).
        parent = path.parent
        while parent != self.root and parent.is_dir() and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _count_path(self, key: str) -> Path:
        subscription, _, event_id = key.partition("/")
        return self.root / REPLAYS_PREFIX / subscription / f"{quote(event_id, safe='')}.json"

    def replay_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        base = self.root / REPLAYS_PREFIX
        if not base.is_dir():
            return out
        for path in base.glob("*/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                entry = json.loads(path.read_text(encoding="utf-8"))
                out[str(entry["key"])] = int(entry["replay_count"])
        return out

    def replay_count(self, key: str) -> int:
        try:
            return int(json.loads(self._count_path(key).read_text(encoding="utf-8"))["replay_count"])
        except FileNotFoundError:
            return 0

    def set_replay_count(self, key: str, count: int) -> None:
        entry = {"key": key, "replay_count": count, "at": datetime.now(UTC).isoformat()}
        _write_atomically(self._count_path(key), json.dumps(entry).encode())


def local_eventgrid_dead_letters(state_dir: Path) -> LocalEventGridDeadLetters:
    """The dead-letter folder of a state dir."""
    return LocalEventGridDeadLetters(state_dir / FOLDER)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def write_dead_letter(
    state_dir: Path,
    function: str,
    events: Sequence[Mapping[str, Any]],
    *,
    reason: str,
    attempts: int,
    last_outcome: str,
    last_status: int | None,
    first_attempt: datetime,
    last_attempt: datetime,
    now: datetime | None = None,
) -> Path:
    """Write ``events`` as Event Grid dead-letters them: the Event Grid or CloudEvents schema's attribute names."""
    now = now or datetime.now(UTC)
    items = []
    for event in events:
        item = dict(event)
        if "specversion" in item:  # CloudEvents: extension attributes, lower case
            item.update(
                deadletterreason=reason,
                deliveryattempts=attempts,
                lastdeliveryoutcome=last_outcome,
                publishtime=_iso(first_attempt),
                lastdeliveryattempttime=_iso(last_attempt),
            )
            if last_status is not None:
                item["lasthttpstatuscode"] = last_status
        else:
            item.update(
                deadLetterReason=reason,
                deliveryAttempts=attempts,
                lastDeliveryOutcome=last_outcome,
                publishTime=_iso(first_attempt),
                lastDeliveryAttemptTime=_iso(last_attempt),
            )
            if last_status is not None:
                item["lastHttpStatusCode"] = last_status
        items.append(item)
    path = state_dir / FOLDER / dead_letter_blob(function, now, str(uuid.uuid4()))
    _write_atomically(path, json.dumps(items, indent=2).encode())
    return path


@dataclass(frozen=True)
class RetryPolicy:
    """Event Grid's retry policy for the local deliveries: attempts and time to live, a pause between tries.

    Event Grid's defaults (30 attempts, 24 h), with a fixed short pause instead of its backoff
    schedule (10 s, 30 s, 1 min, 5 min, ... hourly): locally a failure is a function to fix, not an
    outage to ride out, and a test wants the dead letter in seconds.
    """

    max_attempts: int = 30
    time_to_live: float = 24 * 3600.0
    pause: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.time_to_live <= 0 or self.pause < 0:
            raise ValueError(f"a retry policy needs max_attempts >= 1, time_to_live > 0, pause >= 0: {self}")


class DeliveryFailed(Exception):
    """One delivery attempt failed; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def outcome_of(status: int | None) -> str:
    """``lastDeliveryOutcome`` for an HTTP status (Event Grid's words), or a failure to connect."""
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 408: "TimedOut"}
    if status is None:
        return "GenericError"
    return names.get(status, "Busy" if status in (429, 503) else "GenericError")


@dataclass
class _Tries:
    first: datetime
    started: float
    attempts: int = 0
    last: datetime | None = None
    status: int | None = None
    last_try: float | None = None


class Retries:
    """The attempts of deliveries retried by a loop of their own (the landing watcher), by key."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._tries: dict[str, _Tries] = {}

    def failed(self, key: str, status: int | None) -> str | None:
        """Count a failed attempt; the dead-letter reason once the policy is spent, else ``None``."""
        now = datetime.now(UTC)
        tries = self._tries.setdefault(key, _Tries(first=now, started=self._clock()))
        tries.attempts += 1
        tries.last, tries.status, tries.last_try = now, status, self._clock()
        if tries.attempts >= self.policy.max_attempts:
            return MAX_DELIVERY_ATTEMPTS
        if self._clock() - tries.started + self.policy.pause >= self.policy.time_to_live:
            return TIME_TO_LIVE_EXCEEDED
        return None

    def due(self, key: str) -> bool:
        """Whether ``key``'s next attempt may go now (the policy's pause since its last failure)."""
        tries = self._tries.get(key)
        return tries is None or tries.last_try is None or self._clock() - tries.last_try >= self.policy.pause

    def forget(self, key: str) -> None:
        """Delivered (or dead-lettered): start afresh next time."""
        self._tries.pop(key, None)

    def dead_letter(
        self, key: str, reason: str, state_dir: Path, function: str, events: Sequence[Mapping[str, Any]]
    ) -> Path:
        """Write the dead letter of ``key``'s delivery and forget it."""
        tries = self._tries.pop(key)
        return write_dead_letter(
            state_dir,
            function,
            events,
            reason=reason,
            attempts=tries.attempts,
            last_outcome=outcome_of(tries.status),
            last_status=tries.status,
            first_attempt=tries.first,
            last_attempt=tries.last or tries.first,
        )


def deliver_with_retries(
    deliver: Callable[[], None],
    state_dir: Path,
    function: str,
    events: Sequence[Mapping[str, Any]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Path | None:
    """Call ``deliver`` until it succeeds or the policy is spent, then dead-letter ``events``.

    ``deliver`` raises :class:`DeliveryFailed` for a failed attempt. Returns ``None`` when
    delivered, else the dead-letter file written (reason ``MaxDeliveryAttemptsExceeded`` or
    ``TimeToLiveExceeded``, whichever came first, as Event Grid decides).
    """
    retries = Retries(policy, clock=clock)
    while True:
        try:
            deliver()
            return None
        except DeliveryFailed as exc:
            reason = retries.failed("delivery", exc.status)
        if reason is not None:
            return retries.dead_letter("delivery", reason, state_dir, function, events)
        sleep(policy.pause)
