"""Durable local queues in one SQLite file, with Azure Service Bus semantics.

Peek-lock with lock expiry and renewal, MaxDeliveryCount and the dead-letter
sub-queue, scheduled enqueue, time to live, duplicate detection and sessions
(FIFO, one message in flight per session) behave as they do on Service Bus, so
the local host exercises the same failure paths as Azure.

Several threads and processes may share one file: each thread (of each process)
keeps its own connection, and every read-modify-write runs in ``BEGIN IMMEDIATE``
so that two receivers can never lock the same message.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.queues import QUEUES, QueueSpec

__all__ = [
    "LocalQueues",
    "MessageLockLost",
    "OutboundMessage",
    "QueueError",
    "ReceivedMessage",
    "SessionIdRequired",
    "UnknownQueue",
]

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"
TTL_EXPIRED_DESCRIPTION = "The message expired and was dead lettered."

# Service Bus rejects longer message and session ids; failing here keeps local runs honest.
_MAX_ID_LENGTH = 128
_BUSY_TIMEOUT_SECONDS = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# What a peeked, unlocked message reports as locked_until (Service Bus reports DateTime.MinValue).
_NOT_LOCKED = datetime.min.replace(tzinfo=UTC)
# Connections a forked child inherited: kept referenced so they are never used or closed there.
_INHERITED: list[sqlite3.Connection] = []

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS sequences (
    queue TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    queue TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    session_id TEXT,
    correlation_id TEXT,
    subject TEXT,
    content_type TEXT,
    properties TEXT NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    scheduled_at INTEGER,
    expires_at INTEGER NOT NULL,
    locked_until INTEGER,
    lock_token TEXT,
    last_error TEXT,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    dl_reason TEXT,
    dl_description TEXT,
    dl_at INTEGER,
    PRIMARY KEY (queue, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_lock ON messages (lock_token) WHERE lock_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (queue, session_id, seq) WHERE dead_lettered = 0;
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
-- Each send first drops the queue's expired ids: without this index that scanned every id in the window.
CREATE INDEX IF NOT EXISTS dedup_by_expiry ON dedup (queue, expires_at);
COMMIT;
"""


class QueueError(Exception):
    """Base class of the local queues' errors."""


class UnknownQueue(QueueError):
    """The queue is not defined in the queue specs."""


class SessionIdRequired(QueueError):
    """A message's session_id does not match whether its queue requires sessions."""


class MessageLockLost(QueueError):
    """The lock token is unknown or its lock has expired."""


@dataclass(frozen=True)
class OutboundMessage:
    """A message to send; ``scheduled_enqueue_time`` must be timezone-aware."""

    body: bytes | str
    message_id: str
    session_id: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    content_type: str | None = "application/json"
    application_properties: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    scheduled_enqueue_time: datetime | None = None
    time_to_live: timedelta | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """A received (locked) or peeked message; peeked ones have an empty ``lock_token``."""

    queue: str
    sequence_number: int
    message_id: str
    body: bytes
    session_id: str | None
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    application_properties: dict[str, Any]
    delivery_count: int
    enqueued_time: datetime
    scheduled_enqueue_time: datetime | None
    expires_at: datetime
    locked_until: datetime
    lock_token: str
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    dead_lettered_at: datetime | None = None


@dataclass(frozen=True)
class _Row:
    """A validated message ready to insert."""

    message_id: str
    body: bytes
    session_id: str | None
    correlation_id: str | None
    subject: str | None
    content_type: str | None
    properties: str
    scheduled_at: datetime | None
    time_to_live: timedelta | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _aware_utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got {moment!r}")
    return moment.astimezone(UTC)


def _max_delivery_description(delivery_count: int, error: str | None) -> str:
    text = f"Message could not be consumed after {delivery_count} delivery attempts."
    return f"{text} Last error: {error}" if error else text


class LocalQueues:
    """Service Bus queues kept in one SQLite file, shared by threads and processes."""

    def __init__(
        self,
        path: Path | str,
        specs: Mapping[str, QueueSpec] = QUEUES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """Open (creating if needed) the queue file at ``path``."""
        self.path = Path(path)
        self.specs: Mapping[str, QueueSpec] = dict(specs)
        self._clock = clock
        self._closed = False
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            # WAL lets readers and the one writer proceed together, and it persists in the file.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def send(self, queue: str, message: OutboundMessage) -> bool:
        """Enqueue one message; ``False`` when duplicate detection drops it."""
        return self.send_many(queue, [message])[0]

    def send_many(self, queue: str, messages: Sequence[OutboundMessage]) -> list[bool]:
        """Enqueue messages in one transaction; each flag is ``False`` if dropped as a duplicate."""
        spec = self._spec(queue)
        rows = [self._validate(spec, message) for message in messages]
        if not rows:
            return []
        with self._transaction() as conn:
            now = self._now()
            now_us = _to_us(now)
            conn.execute("DELETE FROM dedup WHERE queue = ? AND expires_at <= ?", (queue, now_us))
            return [self._insert(conn, spec, row, now) for row in rows]

    def receive(self, queue: str, *, max_messages: int = 1) -> list[ReceivedMessage]:
        """Peek-lock up to ``max_messages`` messages (one per session); ``[]`` if none is available."""
        spec = self._spec(queue)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        with self._transaction() as conn:
            now = self._now()
            now_us = _to_us(now)
            self._sweep(conn, spec, now_us)
            if spec.requires_session:
                # A session with a message in flight is blocked: its next message waits,
                # so each session is processed strictly in order, one message at a time.
                heads = conn.execute(
                    """
                    SELECT MIN(seq) AS seq FROM messages
                    WHERE queue = ? AND dead_lettered = 0 AND enqueued_at <= ?
                    GROUP BY session_id
                    HAVING MAX(COALESCE(locked_until, 0) > ?) = 0
                    ORDER BY seq LIMIT ?
                    """,
                    (queue, now_us, now_us, max_messages),
                ).fetchall()
                seqs = [head["seq"] for head in heads]
                rows = [self._row(conn, queue, seq) for seq in seqs]
            else:
                rows = conn.execute(
                    """
                    SELECT * FROM messages
                    WHERE queue = ? AND dead_lettered = 0 AND enqueued_at <= ?
                      AND (locked_until IS NULL OR locked_until <= ?)
                    ORDER BY seq LIMIT ?
                    """,
                    (queue, now_us, now_us, max_messages),
                ).fetchall()
            locked_until = now + spec.lock_duration
            received = []
            for row in rows:
                token = str(uuid.uuid4())
                conn.execute(
                    """
                    UPDATE messages SET delivery_count = delivery_count + 1, locked_until = ?, lock_token = ?
                    WHERE queue = ? AND seq = ?
                    """,
                    (_to_us(locked_until), token, queue, row["seq"]),
                )
                count = row["delivery_count"] + 1
                received.append(
                    self._message(queue, row, delivery_count=count, locked_until=locked_until, lock_token=token)
                )
            return received

    def renew_lock(self, queue: str, lock_token: str) -> datetime:
        """Extend the lock by the queue's lock duration from now; return the new ``locked_until``."""
        spec = self._spec(queue)
        with self._transaction() as conn:
            now = self._now()
            row = self._locked(conn, queue, lock_token, now)
            locked_until = now + spec.lock_duration
            conn.execute(
                "UPDATE messages SET locked_until = ? WHERE queue = ? AND seq = ?",
                (_to_us(locked_until), queue, row["seq"]),
            )
            return locked_until

    def complete(self, queue: str, lock_token: str) -> None:
        """Settle the locked message: delete it from the queue."""
        self._spec(queue)
        with self._transaction() as conn:
            row = self._locked(conn, queue, lock_token, self._now())
            conn.execute("DELETE FROM messages WHERE queue = ? AND seq = ?", (queue, row["seq"]))

    def abandon(self, queue: str, lock_token: str, *, error: str | None = None) -> None:
        """Release the lock now; dead-letter the message once MaxDeliveryCount is reached."""
        spec = self._spec(queue)
        with self._transaction() as conn:
            now = self._now()
            row = self._locked(conn, queue, lock_token, now)
            last_error = error if error is not None else row["last_error"]
            if row["delivery_count"] >= spec.max_delivery_count:
                description = _max_delivery_description(row["delivery_count"], last_error)
                self._dead_letter_row(conn, queue, row["seq"], MAX_DELIVERY_COUNT_EXCEEDED, description, _to_us(now))
                return
            # Keep the error: if a later delivery's consumer dies with its lock, the
            # MaxDeliveryCountExceeded description can still say what went wrong.
            conn.execute(
                """
                UPDATE messages SET locked_until = NULL, lock_token = NULL, last_error = ?
                WHERE queue = ? AND seq = ?
                """,
                (last_error, queue, row["seq"]),
            )

    def dead_letter(self, queue: str, lock_token: str, *, reason: str, description: str) -> None:
        """Move the locked message to the queue's dead-letter sub-queue."""
        self._spec(queue)
        with self._transaction() as conn:
            now = self._now()
            row = self._locked(conn, queue, lock_token, now)
            self._dead_letter_row(conn, queue, row["seq"], reason, description, _to_us(now))

    def lock_dead_letter(self, queue: str, sequence_number: int) -> ReceivedMessage | None:
        """Peek-lock one dead-lettered message by sequence number, as a dead-letter receiver would.

        The lock lasts the queue's lock duration. ``None`` when the message is not in the
        dead-letter sub-queue (settled meanwhile) or another holder's lock on it is live.
        The delivery count is left as the main queue's attempts made it.
        """
        spec = self._spec(queue)
        with self._transaction() as conn:
            now = self._now()
            now_us = _to_us(now)
            row = conn.execute(
                """
                SELECT * FROM messages
                WHERE queue = ? AND seq = ? AND dead_lettered = 1
                  AND (locked_until IS NULL OR locked_until <= ?)
                """,
                (queue, sequence_number, now_us),
            ).fetchone()
            if row is None:
                return None
            token = str(uuid.uuid4())
            locked_until = now + spec.lock_duration
            conn.execute(
                "UPDATE messages SET locked_until = ?, lock_token = ? WHERE queue = ? AND seq = ?",
                (_to_us(locked_until), token, queue, sequence_number),
            )
            return self._message(
                queue, row, delivery_count=row["delivery_count"], locked_until=locked_until, lock_token=token
            )

    def complete_dead_letter(self, queue: str, lock_token: str) -> None:
        """Settle a dead letter locked by :meth:`lock_dead_letter`: delete it for good."""
        self._spec(queue)
        with self._transaction() as conn:
            row = self._locked_dead_letter(conn, queue, lock_token, self._now())
            conn.execute("DELETE FROM messages WHERE queue = ? AND seq = ?", (queue, row["seq"]))

    def release_dead_letter(self, queue: str, lock_token: str) -> None:
        """Give back the lock on a dead letter; it stays in the dead-letter sub-queue as it was."""
        self._spec(queue)
        with self._transaction() as conn:
            row = self._locked_dead_letter(conn, queue, lock_token, self._now())
            conn.execute(
                "UPDATE messages SET locked_until = NULL, lock_token = NULL WHERE queue = ? AND seq = ?",
                (queue, row["seq"]),
            )

    def peek(self, queue: str, *, dead_letter: bool = False, limit: int = 100) -> list[ReceivedMessage]:
        """Read messages in sequence order without locking them (scheduled and locked ones included)."""
        spec = self._spec(queue)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._transaction() as conn:
            now_us = _to_us(self._now())
            self._sweep(conn, spec, now_us)
            rows = conn.execute(
                "SELECT * FROM messages WHERE queue = ? AND dead_lettered = ? ORDER BY seq LIMIT ?",
                (queue, int(dead_letter), limit),
            ).fetchall()
        return [
            self._message(
                queue,
                row,
                delivery_count=row["delivery_count"],
                locked_until=(
                    _from_us(row["locked_until"])
                    if row["locked_until"] is not None and row["locked_until"] > now_us
                    else _NOT_LOCKED
                ),
                lock_token="",
            )
            for row in rows
        ]

    def counts(self, queue: str) -> dict[str, int]:
        """Count messages: ``active`` (available now), ``scheduled``, ``locked`` and ``dead_letter``."""
        spec = self._spec(queue)
        with self._transaction() as conn:
            now_us = _to_us(self._now())
            self._sweep(conn, spec, now_us)
            row = conn.execute(
                """
                SELECT
                    TOTAL(dead_lettered = 0 AND enqueued_at <= :now
                          AND (locked_until IS NULL OR locked_until <= :now)) AS active,
                    TOTAL(dead_lettered = 0 AND enqueued_at > :now) AS scheduled,
                    TOTAL(dead_lettered = 0 AND locked_until > :now) AS locked,
                    TOTAL(dead_lettered = 1) AS dead_letter
                FROM messages WHERE queue = :queue
                """,
                {"now": now_us, "queue": queue},
            ).fetchone()
        return {key: int(row[key]) for key in ("active", "scheduled", "locked", "dead_letter")}

    def close(self) -> None:
        """Refuse further calls; the file stays as it is (other threads' connections close with them)."""
        self._closed = True
        self._discard()

    def _spec(self, queue: str) -> QueueSpec:
        if self._closed:
            raise QueueError(f"local queues at {self.path} are closed")
        spec = self.specs.get(queue)
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "(none)"
            raise UnknownQueue(f"unknown queue {queue!r}; known queues: {known}")
        return spec

    def _now(self) -> datetime:
        return _aware_utc(self._clock(), "the clock's time")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
        # In WAL mode NORMAL survives a crashed (even kill -9'd) process; only power loss
        # can drop the last commits, which a local development queue can afford.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread, reused: sqlite3 connections must not cross threads, and
        # opening one per call cost more than the call (and closing the last one checkpoints
        # the WAL every time). A forked child must not use its parent's connection.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid != os.getpid():
            _INHERITED.append(conn)  # not even closed here: closing it would touch the parent's file state
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
            self._local.pid = os.getpid()
        return conn

    def _discard(self) -> None:
        # After a failure whose transaction state is unknown, the next call starts afresh.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads
            # then writes could let two receivers pick the same message, or fail with
            # SQLITE_BUSY without waiting in WAL mode.
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._discard()
            raise
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except BaseException:
                self._discard()
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._discard()  # closing rolls back whatever the failed COMMIT left open
            raise

    def _validate(self, spec: QueueSpec, message: OutboundMessage) -> _Row:
        if not isinstance(message.message_id, str) or not message.message_id:
            raise ValueError(f"message_id must be a non-empty string, got {message.message_id!r}")
        if len(message.message_id) > _MAX_ID_LENGTH:
            raise ValueError(f"message_id is longer than {_MAX_ID_LENGTH} characters: {message.message_id!r}")
        if spec.requires_session and not message.session_id:
            raise SessionIdRequired(
                f"The SessionId was not set on message {message.message_id!r}, and it cannot be sent to the "
                f"entity {spec.name!r}. Entities that have session support enabled can only receive messages "
                "that have the SessionId set to a valid value."
            )
        if not spec.requires_session and message.session_id is not None:
            raise SessionIdRequired(
                f"message {message.message_id!r} sets session_id {message.session_id!r}, but queue {spec.name!r} "
                "does not require sessions; send it without a session_id"
            )
        if message.session_id is not None and len(message.session_id) > _MAX_ID_LENGTH:
            raise ValueError(f"session_id is longer than {_MAX_ID_LENGTH} characters: {message.session_id!r}")
        if isinstance(message.body, str):
            body = message.body.encode("utf-8")
        elif isinstance(message.body, bytes | bytearray | memoryview):
            body = bytes(message.body)
        else:
            raise TypeError(f"body must be bytes or str, got {type(message.body).__name__}")
        for key, value in message.application_properties.items():
            if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
                raise TypeError(
                    f"application property {key!r} of message {message.message_id!r} must map a string to "
                    f"str, int, float or bool, got {type(value).__name__}"
                )
        scheduled = (
            _aware_utc(message.scheduled_enqueue_time, "scheduled_enqueue_time")
            if message.scheduled_enqueue_time is not None
            else None
        )
        if message.time_to_live is not None and message.time_to_live <= timedelta(0):
            raise ValueError(f"time_to_live must be positive, got {message.time_to_live}")
        return _Row(
            message_id=message.message_id,
            body=body,
            session_id=message.session_id,
            correlation_id=message.correlation_id,
            subject=message.subject,
            content_type=message.content_type,
            properties=json.dumps(dict(message.application_properties)),
            scheduled_at=scheduled,
            time_to_live=message.time_to_live,
        )

    def _insert(self, conn: sqlite3.Connection, spec: QueueSpec, row: _Row, now: datetime) -> bool:
        window = spec.duplicate_detection_window
        if window > timedelta(0):
            seen = conn.execute(
                "SELECT 1 FROM dedup WHERE queue = ? AND message_id = ? AND expires_at > ?",
                (spec.name, row.message_id, _to_us(now)),
            ).fetchone()
            if seen is not None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO dedup (queue, message_id, expires_at) VALUES (?, ?, ?)",
                (spec.name, row.message_id, _to_us(now + window)),
            )
        seq = conn.execute(
            """
            INSERT INTO sequences (queue, last) VALUES (?, 1)
            ON CONFLICT (queue) DO UPDATE SET last = last + 1
            RETURNING last
            """,
            (spec.name,),
        ).fetchone()[0]
        # Service Bus stamps a scheduled message as enqueued when it activates, and its
        # time to live runs from then; a message's TTL cannot exceed the queue's.
        enqueued = max(now, row.scheduled_at) if row.scheduled_at is not None else now
        ttl = min(row.time_to_live, spec.default_message_ttl) if row.time_to_live else spec.default_message_ttl
        conn.execute(
            """
            INSERT INTO messages (queue, seq, message_id, body, session_id, correlation_id, subject,
                                  content_type, properties, enqueued_at, scheduled_at, expires_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                spec.name,
                seq,
                row.message_id,
                row.body,
                row.session_id,
                row.correlation_id,
                row.subject,
                row.content_type,
                row.properties,
                _to_us(enqueued),
                _to_us(row.scheduled_at) if row.scheduled_at is not None else None,
                _to_us(enqueued + ttl),
            ),
        )
        return True

    def _sweep(self, conn: sqlite3.Connection, spec: QueueSpec, now_us: int) -> None:
        # A message still under lock is left alone even if expired: its receiver owns
        # it until the lock ends, as on Service Bus.
        if spec.dead_lettering_on_expiration:
            conn.execute(
                """
                UPDATE messages SET dead_lettered = 1, dl_reason = ?, dl_description = ?, dl_at = ?,
                                    locked_until = NULL, lock_token = NULL
                WHERE queue = ? AND dead_lettered = 0 AND expires_at <= ?
                  AND (locked_until IS NULL OR locked_until <= ?)
                """,
                (TTL_EXPIRED, TTL_EXPIRED_DESCRIPTION, now_us, spec.name, now_us, now_us),
            )
        else:
            conn.execute(
                """
                DELETE FROM messages
                WHERE queue = ? AND dead_lettered = 0 AND expires_at <= ?
                  AND (locked_until IS NULL OR locked_until <= ?)
                """,
                (spec.name, now_us, now_us),
            )
        # A consumer that died holding the lock never abandoned; once its lock lapses the
        # delivery still counts, so a message at MaxDeliveryCount goes to the dead-letter queue.
        exhausted = conn.execute(
            """
            SELECT seq, delivery_count, last_error FROM messages
            WHERE queue = ? AND dead_lettered = 0 AND locked_until <= ? AND delivery_count >= ?
            """,
            (spec.name, now_us, spec.max_delivery_count),
        ).fetchall()
        for row in exhausted:
            description = _max_delivery_description(row["delivery_count"], row["last_error"])
            self._dead_letter_row(conn, spec.name, row["seq"], MAX_DELIVERY_COUNT_EXCEEDED, description, now_us)

    @staticmethod
    def _dead_letter_row(
        conn: sqlite3.Connection, queue: str, seq: int, reason: str, description: str, now_us: int
    ) -> None:
        conn.execute(
            """
            UPDATE messages SET dead_lettered = 1, dl_reason = ?, dl_description = ?, dl_at = ?,
                                locked_until = NULL, lock_token = NULL
            WHERE queue = ? AND seq = ?
            """,
            (reason, description, now_us, queue, seq),
        )

    @staticmethod
    def _row(conn: sqlite3.Connection, queue: str, seq: int) -> sqlite3.Row:
        row: sqlite3.Row = conn.execute("SELECT * FROM messages WHERE queue = ? AND seq = ?", (queue, seq)).fetchone()
        return row

    @staticmethod
    def _locked(conn: sqlite3.Connection, queue: str, lock_token: str, now: datetime) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM messages WHERE queue = ? AND lock_token = ? AND dead_lettered = 0",
            (queue, lock_token),
        ).fetchone()
        if row is None or row["locked_until"] is None or row["locked_until"] <= _to_us(now):
            raise MessageLockLost(
                f"the lock {lock_token!r} on queue {queue!r} is unknown or has expired; "
                "the message was settled or is available to receivers again"
            )
        return row

    @staticmethod
    def _locked_dead_letter(conn: sqlite3.Connection, queue: str, lock_token: str, now: datetime) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM messages WHERE queue = ? AND lock_token = ? AND dead_lettered = 1",
            (queue, lock_token),
        ).fetchone()
        if row is None or row["locked_until"] is None or row["locked_until"] <= _to_us(now):
            raise MessageLockLost(
                f"the lock {lock_token!r} on a dead letter of queue {queue!r} is unknown or has expired; "
                "the dead letter was settled or is available to others again"
            )
        return row

    @staticmethod
    def _message(
        queue: str, row: sqlite3.Row, *, delivery_count: int, locked_until: datetime, lock_token: str
    ) -> ReceivedMessage:
        return ReceivedMessage(
            queue=queue,
            sequence_number=row["seq"],
            message_id=row["message_id"],
            body=bytes(row["body"]),
            session_id=row["session_id"],
            correlation_id=row["correlation_id"],
            subject=row["subject"],
            content_type=row["content_type"],
            application_properties=json.loads(row["properties"]),
            delivery_count=delivery_count,
            enqueued_time=_from_us(row["enqueued_at"]),
            scheduled_enqueue_time=_from_us(row["scheduled_at"]) if row["scheduled_at"] is not None else None,
            expires_at=_from_us(row["expires_at"]),
            locked_until=locked_until,
            lock_token=lock_token,
            dead_letter_reason=row["dl_reason"],
            dead_letter_error_description=row["dl_description"],
            dead_lettered_at=_from_us(row["dl_at"]) if row["dl_at"] is not None else None,
        )
