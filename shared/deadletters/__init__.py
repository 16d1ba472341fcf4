"""Dead letters: list, show, replay and purge the dead-letter sub-queues, over a small port.

The same functions serve the admin HTTP functions (``functions/operations.py``) and the
``signalbox dlq`` command, on the local queues or on Azure Service Bus. The ports live in
:mod:`shared.deadletters.ports`, the parsing of requests in :mod:`shared.deadletters.requests`
and the JSON views in :mod:`shared.deadletters.views`.

Replay is "send, then complete". A replay is a NEW message: the same body, correlation id,
session id, subject and content type, the application properties without the dead-letter
ones, ``signalbox.replay_count`` one higher and a message id derived from the original
message id and that count. A new id because the queues' duplicate detection (windows up to
a day) would silently drop a replay that reused the original id; a *deterministic* id
because a crash between the send and the complete leaves the dead letter in place, and
replaying it again sends the same id, which duplicate detection drops: at worst one
duplicate (once the window has passed), never a loss. The dead letter is completed only
after the send succeeded. A message whose replay count reached ``max_replays`` is skipped,
so a message that keeps failing ends in the dead-letter queue instead of looping.

This package imports only the standard library (the function app imports it at invocation).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Literal

from shared.deadletters.ports import (
    ORIGINAL_MESSAGE_ID,
    REPLAY_COUNT,
    DeadLetter,
    DeadLetterPorts,
    DeadLetterSessions,
    DeadLetterStore,
    ReplayMessage,
    ReplaySender,
    replay_count_of,
)
from shared.errors import InvalidInput

__all__ = [
    "ALL_QUEUES",
    "DEAD_LETTER_PROPERTIES",
    "DEFAULT_MAX_REPLAYS",
    "FILTER_FIELDS",
    "ORIGINAL_MESSAGE_ID",
    "REPLAY_COUNT",
    "SCAN_LIMIT",
    "ConfirmationRequired",
    "DeadLetter",
    "DeadLetterPorts",
    "DeadLetterSessions",
    "DeadLetterStore",
    "Filters",
    "Outcome",
    "PurgeReport",
    "ReplayMessage",
    "ReplayReport",
    "ReplaySender",
    "find",
    "list_dead_letters",
    "purge",
    "purge_confirmation",
    "replay",
    "replay_count_of",
    "replay_message",
    "replay_message_id",
    "select",
]

# What Service Bus adds to a dead-lettered message's application properties; never replayed.
DEAD_LETTER_PROPERTIES = frozenset({"deadletterreason", "deadlettererrordescription"})
DEFAULT_MAX_REPLAYS = 3
# How many dead letters of one queue a list, replay or purge looks at.
SCAN_LIMIT = 10_000
# What a purge of every queue (no queue given) must be confirmed with.
ALL_QUEUES = "all"

_MAX_ID_LENGTH = 128
_REPLAY_NAMESPACE = uuid.UUID("0b4d5a39-3f5e-4c1e-9d53-6a1f2f0c7e21")


class ConfirmationRequired(InvalidInput):
    """A purge was asked for without the confirmation it needs; the message says what to type."""


def check_limit_and_since(limit: int | None, since: datetime | None) -> None:
    """A filter's ``limit`` is a whole number ≥ 1 and its ``since`` timezone-aware; ``ValueError`` otherwise."""
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")
    if since is not None and (since.tzinfo is None or since.utcoffset() is None):
        raise ValueError(f"since must be timezone-aware, got {since!r}")


@dataclass(frozen=True)
class Filters:
    """Which dead letters an operation touches; every given criterion must match."""

    queue: str | None = None
    reason: str | None = None
    since: datetime | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        check_limit_and_since(self.limit, self.since)

    def matches(self, dead: DeadLetter) -> bool:
        """Whether one dead letter matches (the limit aside)."""
        if self.queue is not None and dead.queue != self.queue:
            return False
        if self.reason is not None and (dead.reason or "").casefold() != self.reason.casefold():
            return False
        if self.message_id is not None and self.message_id not in (dead.message_id, dead.original_message_id):
            return False
        if self.correlation_id is not None and dead.correlation_id != self.correlation_id:
            return False
        if self.since is not None:
            moment = dead.dead_lettered_time or dead.enqueued_time
            if moment is None or moment < self.since:
                return False
        return True


# The criteria a request may give, in the order the views list them.
FILTER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Filters))


Status = Literal["replayed", "would_replay", "purged", "would_purge", "skipped", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one dead letter in a replay or purge."""

    queue: str
    message_id: str
    sequence_number: int
    status: Status
    detail: str = ""
    new_message_id: str | None = None
    replay_count: int | None = None


@dataclass
class _Report:
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def _with(self, *statuses: Status) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def skipped(self) -> list[Outcome]:
        """Left alone: gone meanwhile, or (replay) at the maximum replay count."""
        return self._with("skipped")

    @property
    def failed(self) -> list[Outcome]:
        """Not done; the dead letter is still there (see each detail)."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """No failure."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        """How many outcomes of each status."""
        out: dict[str, int] = {}
        for outcome in self.outcomes:
            out[outcome.status] = out.get(outcome.status, 0) + 1
        return out


@dataclass
class ReplayReport(_Report):
    """The outcome of a replay (or of its dry run), in the order the dead letters were met."""

    max_replays: int = DEFAULT_MAX_REPLAYS

    @property
    def replayed(self) -> list[Outcome]:
        """Sent anew and removed from the dead-letter queue (dry run: would be)."""
        return self._with("replayed", "would_replay")


@dataclass
class PurgeReport(_Report):
    """The outcome of a purge (or of its dry run)."""

    @property
    def purged(self) -> list[Outcome]:
        """Deleted (dry run: would be)."""
        return self._with("purged", "would_purge")


Progress = Callable[[int, int], None]
# Called with each dead letter replayed and the message that replayed it.
Replayed = Callable[[DeadLetter, ReplayMessage], None]


# -- reading ---------------------------------------------------------------------------------


def _queues(store: DeadLetterStore, queue: str | None) -> list[str]:
    names = list(store.queue_names())
    if queue is None:
        return names
    if queue not in names:
        raise ValueError(f"unknown queue {queue!r}; known queues: {', '.join(names) or '(none)'}")
    return [queue]


def select(store: DeadLetterStore, filters: Filters = Filters(), *, scan_limit: int = SCAN_LIMIT) -> list[DeadLetter]:
    """The dead letters matching ``filters``, queue by queue in sequence order, at most ``filters.limit``.

    Raises ``ValueError`` for a queue the store does not know.
    """
    found: list[DeadLetter] = []
    for queue in _queues(store, filters.queue):
        for dead in store.peek(queue, scan_limit):
            if filters.matches(dead):
                found.append(dead)
                if filters.limit is not None and len(found) >= filters.limit:
                    return found
    return found


def list_dead_letters(
    store: DeadLetterStore, filters: Filters = Filters(), *, scan_limit: int = SCAN_LIMIT
) -> list[DeadLetter]:
    """``list [QUEUE]``: the dead letters of one queue, or of every queue."""
    return select(store, filters, scan_limit=scan_limit)


def find(
    store: DeadLetterStore, message_id: str, *, queue: str | None = None, scan_limit: int = SCAN_LIMIT
) -> DeadLetter:
    """``show MESSAGE_ID``: the dead letter with this message id (the first, by queue then sequence).

    Raises ``LookupError`` when no dead-letter queue holds it.
    """
    for q in _queues(store, queue):
        for dead in store.peek(q, scan_limit):
            if dead.message_id == message_id:
                return dead
    where = f"queue {queue!r}" if queue else "any queue"
    raise LookupError(f"no dead letter with message id {message_id!r} in {where}")


# -- replay ----------------------------------------------------------------------------------


def replay_message_id(original_message_id: str, replay_count: int) -> str:
    """The id of replay number ``replay_count`` of a message: the same inputs give the same id."""
    if replay_count < 1:
        raise ValueError(f"replay_count must be at least 1, got {replay_count}")
    readable = f"{original_message_id}:replay-{replay_count}"
    if len(readable) <= _MAX_ID_LENGTH:
        return readable
    digest = uuid.uuid5(_REPLAY_NAMESPACE, f"{original_message_id}\x00{replay_count}")
    return f"{digest}:replay-{replay_count}"


def replay_message(dead: DeadLetter) -> ReplayMessage:
    """The new message that replays ``dead`` (see the module docstring)."""
    count = dead.replay_count + 1
    original = dead.original_message_id
    properties: dict[str, str | int | float | bool] = {
        key: value
        for key, value in dead.application_properties.items()
        if key.casefold() not in DEAD_LETTER_PROPERTIES and isinstance(value, str | int | float | bool)
    }
    properties[REPLAY_COUNT] = count
    properties[ORIGINAL_MESSAGE_ID] = original
    return ReplayMessage(
        body=dead.body,
        message_id=replay_message_id(original, count),
        correlation_id=dead.correlation_id,
        session_id=dead.session_id,
        subject=dead.subject,
        content_type=dead.content_type,
        application_properties=properties,
    )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _release_quietly(store: DeadLetterStore, dead: DeadLetter) -> str:
    try:
        store.release(dead.queue, dead.sequence_number)
    except Exception as exc:  # the lock then lapses by itself; say so, do not hide the first error
        return f"; releasing its lock failed too ({_error(exc)}), it is available again once the lock expires"
    return ""


def replay(
    store: DeadLetterStore,
    sender: ReplaySender,
    filters: Filters = Filters(),
    *,
    dry_run: bool = False,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    progress: Progress | None = None,
    scan_limit: int = SCAN_LIMIT,
    on_replayed: Replayed | None = None,
) -> ReplayReport:
    """Send the selected dead letters again, then remove them from the dead-letter queue.

    ``dry_run`` reports what would move and moves nothing. A dead letter whose replay count
    reached ``max_replays`` is skipped. A failed send leaves the dead letter where it was;
    a failed complete (after a successful send) too, and replaying it again is safe.
    ``progress(done, total)`` is called after each dead letter, ``on_replayed(dead, message)`` after
    each one sent and removed (the model's history records it).
    """
    if isinstance(max_replays, bool) or not isinstance(max_replays, int) or max_replays < 0:
        raise ValueError(f"max_replays must be a whole number of at least 0, got {max_replays!r}")
    candidates = select(store, filters, scan_limit=scan_limit)
    report = ReplayReport(dry_run=dry_run, max_replays=max_replays)
    try:
        for done, dead in enumerate(candidates, start=1):
            report.outcomes.append(
                _replay_one(store, sender, dead, dry_run=dry_run, max_replays=max_replays, on_replayed=on_replayed)
            )
            if progress is not None:
                progress(done, len(candidates))
    finally:
        if not dry_run:
            store.release_all()
    return report


def _replay_one(
    store: DeadLetterStore,
    sender: ReplaySender,
    dead: DeadLetter,
    *,
    dry_run: bool,
    max_replays: int,
    on_replayed: Replayed | None = None,
) -> Outcome:
    def outcome(status: Status, detail: str = "", message: ReplayMessage | None = None) -> Outcome:
        return Outcome(
            queue=dead.queue,
            message_id=dead.message_id,
            sequence_number=dead.sequence_number,
            status=status,
            detail=detail,
            new_message_id=message.message_id if message else None,
            replay_count=dead.replay_count + 1 if message else None,
        )

    if dead.replay_count >= max_replays:
        return outcome(
            "skipped",
            f"replayed {dead.replay_count} time(s) already, the maximum is {max_replays}: it stays in the "
            "dead-letter queue (fix the cause, then raise --max-replays, or purge it)",
        )
    if dry_run:
        return outcome("would_replay", message=replay_message(dead))
    try:
        locked = store.lock(dead.queue, dead.sequence_number)
    except Exception as exc:
        return outcome("failed", f"could not lock the dead letter: {_error(exc)}")
    if locked is None:
        return outcome("skipped", "no longer in the dead-letter queue (replayed, purged or locked by another run)")
    message = replay_message(locked)
    try:
        accepted = sender.send(locked.queue, message)
    except Exception as exc:
        released = _release_quietly(store, locked)
        return outcome("failed", f"send failed, the dead letter stays in place: {_error(exc)}{released}")
    try:
        store.complete(locked.queue, locked.sequence_number)
    except Exception as exc:
        return outcome(
            "failed",
            f"sent as {message.message_id} but the dead letter could not be removed ({_error(exc)}); "
            "it stays in the dead-letter queue, and replaying it again is safe: the same message id is "
            "dropped by duplicate detection",
            message,
        )
    detail = "already sent by an earlier run: duplicate detection dropped the resend" if accepted is False else ""
    if on_replayed is not None:
        on_replayed(locked, message)
    return outcome("replayed", detail, message)


# -- purge -----------------------------------------------------------------------------------


def purge_confirmation(filters: Filters) -> str:
    """What a purge must be confirmed with: the queue name, or ``all`` for every queue."""
    return filters.queue or ALL_QUEUES


def purge(
    store: DeadLetterStore,
    filters: Filters = Filters(),
    *,
    confirm: str | None,
    dry_run: bool = False,
    progress: Progress | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> PurgeReport:
    """Delete the selected dead letters for good.

    Needs ``confirm`` equal to :func:`purge_confirmation` (the queue name, or ``all``) unless
    ``dry_run``; raises :class:`ConfirmationRequired` otherwise, before touching anything.
    """
    expected = purge_confirmation(filters)
    if not dry_run and confirm != expected:
        what = f"queue {filters.queue!r}" if filters.queue else "every queue"
        got = "none was given" if not confirm else f"got {confirm!r}"
        raise ConfirmationRequired(
            f"purging the dead letters of {what} deletes them for good: confirm with {expected!r} ({got})"
        )
    candidates = select(store, filters, scan_limit=scan_limit)
    report = PurgeReport(dry_run=dry_run)
    try:
        for done, dead in enumerate(candidates, start=1):
            report.outcomes.append(_purge_one(store, dead, dry_run=dry_run))
            if progress is not None:
                progress(done, len(candidates))
    finally:
        if not dry_run:
            store.release_all()
    return report


def _purge_one(store: DeadLetterStore, dead: DeadLetter, *, dry_run: bool) -> Outcome:
    def outcome(status: Status, detail: str = "") -> Outcome:
        return Outcome(dead.queue, dead.message_id, dead.sequence_number, status, detail)

    if dry_run:
        return outcome("would_purge")
    try:
        locked = store.lock(dead.queue, dead.sequence_number)
    except Exception as exc:
        return outcome("failed", f"could not lock the dead letter: {_error(exc)}")
    if locked is None:
        return outcome("skipped", "no longer in the dead-letter queue (replayed, purged or locked by another run)")
    try:
        store.complete(locked.queue, locked.sequence_number)
    except Exception as exc:
        return outcome("failed", f"could not delete it: {_error(exc)}{_release_quietly(store, locked)}")
    return outcome("purged")
