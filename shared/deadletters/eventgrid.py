"""Event Grid's own dead letters: list, show, replay and purge the events a subscription gave up on.

Event Grid retries a delivery (``infra/modules/subscriptions.bicep``: 30 attempts / 24 h), then
writes the event to the subscription's dead-letter container: a blob named
``[<TOPIC>/]<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<guid>.json`` (the subscription in upper case, the
date and hour in UTC, not zero-padded), holding a JSON array of the events. Each is the event as
it was delivered plus what Event Grid adds: ``deadLetterReason``, ``deliveryAttempts``,
``lastDeliveryOutcome``, ``lastHttpStatusCode`` (when there was one), ``publishTime`` and
``lastDeliveryAttemptTime`` (Event Grid schema, camelCase); a CloudEvents 1.0 subscription writes
the same attributes in lower case as CloudEvents extension attributes (``deadletterreason``, ...),
flat beside ``id``, ``source``, ``type`` and ``data`` (Microsoft's "Event Grid message delivery and
retry", "Delivery event formats"). Locally the host writes the same format under
``STATE_DIR/eventgrid-deadletters/<function>/<yyyy>/<m>/<d>/<h>/<guid>.json``.

A replay POSTs the original event (without the dead-letter attributes) to the function it was
meant for through the Event Grid webhook the service itself uses
(``/runtime/webhooks/EventGrid?functionName=NAME``, ``aeg-event-type: Notification``), and removes
it from its blob only after the function answered 2xx. Loop protection as for queue replays: a
replay count per subscription and event id kept beside the dead letters (written before the
delivery, so a crash over-counts rather than loops), an event at ``max_replays`` is skipped, and an
event that dead-letters again comes back with its count. A blob is leased (locally: locked) while a
run settles its events, so two runs never both replay one.

Standard library only: the function app imports it at invocation.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from shared.deadletters import ALL_QUEUES, DEFAULT_MAX_REPLAYS, SCAN_LIMIT, ConfirmationRequired, check_limit_and_since

__all__ = [
    "DEAD_LETTER_FIELDS",
    "EVENTGRID",
    "SUBSCRIPTION_FUNCTIONS",
    "Delivery",
    "EventGridDeadLetter",
    "EventGridDeadLetterStore",
    "EventGridFilters",
    "EventGridOutcome",
    "EventGridReport",
    "HttpEventGridDelivery",
    "StoredBlob",
    "count",
    "dead_letter_blob",
    "find",
    "function_for",
    "parse_blob",
    "parse_blob_name",
    "purge",
    "replay",
    "select",
]

EVENTGRID: Literal["eventgrid"] = "eventgrid"
# What Event Grid adds to a dead-lettered event (compared case-insensitively); never replayed.
DEAD_LETTER_FIELDS = frozenset(
    {
        "deadletterreason",
        "deliveryattempts",
        "lastdeliveryoutcome",
        "lasthttpstatuscode",
        "publishtime",
        "lastdeliveryattempttime",
    }
)
# The subscriptions infra creates (subscriptions.bicep, workspace.bicep) → the function each calls.
# Matched case-insensitively; a name ending in -<environment> (workspace-events-dev) by its start.
SUBSCRIPTION_FUNCTIONS: Mapping[str, str] = {
    "landing-events": "landing_events",
    "drift-alerts": "alert_events",
    "workspace-events": "workspace_events",
}
REPLAYS_PREFIX = "signalbox-replays/"  # the replay counts, beside the dead letters in the same container
_DATE_PARTS = re.compile(r"^\d{1,4}$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Schema = Literal["eventgrid", "cloudevents"]


def function_for(subscription: str) -> str | None:
    """The function a subscription delivers to: infra's names, or the subscription named after it (local)."""
    lowered = subscription.lower()
    for name, function in SUBSCRIPTION_FUNCTIONS.items():
        if lowered == name or lowered.startswith(name + "-"):
            return function
    return subscription if _FUNCTION_NAME.match(subscription) else None


class BlobName(NamedTuple):
    """What a dead-letter blob's name says."""

    topic: str | None
    subscription: str
    hour: datetime | None


def parse_blob_name(name: str) -> BlobName | None:
    """``[TOPIC/]SUBSCRIPTION/yyyy/m/d/h/guid.json`` → its parts; ``None`` for a blob that is no dead letter."""
    if name.startswith(REPLAYS_PREFIX) or not name.endswith(".json"):
        return None
    parts = name.split("/")
    if len(parts) >= 6 and all(_DATE_PARTS.match(p) for p in parts[-5:-1]):
        year, month, day, hour = (int(p) for p in parts[-5:-1])
        try:
            moment: datetime | None = datetime(year, month, day, hour, tzinfo=UTC)
        except ValueError:
            moment = None
        return BlobName("/".join(parts[:-6]) or None, parts[-6], moment)
    if len(parts) >= 2:  # not Event Grid's layout: the first folder still names the subscription
        return BlobName(None, parts[0], None)
    return None


def dead_letter_blob(subscription: str, at: datetime, guid: str) -> str:
    """The blob name Event Grid gives a dead letter (date and hour UTC, not zero-padded)."""
    at = at.astimezone(UTC)
    return f"{subscription}/{at.year}/{at.month}/{at.day}/{at.hour}/{guid}.json"


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    # Event Grid writes 7 fractional digits; fromisoformat takes up to 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class EventGridDeadLetter:
    """One event Event Grid dead-lettered: where it is, what it was, why it was given up."""

    blob: str
    index: int
    subscription: str
    topic: str | None
    function: str | None
    schema: Schema
    event: Mapping[str, Any]  # as delivered, without the dead-letter attributes
    reason: str | None
    delivery_attempts: int | None
    last_delivery_outcome: str | None
    last_http_status_code: int | None
    publish_time: datetime | None
    last_delivery_attempt_time: datetime | None
    blob_time: datetime | None
    replay_count: int = 0

    @property
    def event_id(self) -> str:
        """The event's own id."""
        return str(self.event.get("id", ""))

    @property
    def event_type(self) -> str | None:
        """``eventType`` (Event Grid schema) or ``type`` (CloudEvents)."""
        value = self.event.get("eventType" if self.schema == EVENTGRID else "type")
        return str(value) if value is not None else None

    @property
    def subject(self) -> str | None:
        """The event's subject."""
        value = self.event.get("subject")
        return str(value) if value is not None else None

    @property
    def dead_lettered_time(self) -> datetime | None:
        """When it was dead-lettered: the blob's time, else the last delivery attempt, else the publish time."""
        return self.blob_time or self.last_delivery_attempt_time or self.publish_time

    @property
    def key(self) -> str:
        """What its replay count is kept under: the function (else the subscription, upper case) and the event id."""
        return f"{self.function or self.subscription.upper()}/{self.event_id}"


def parse_blob(
    name: str, data: bytes, *, blob_time: datetime | None = None, replay_counts: Mapping[str, int] | None = None
) -> list[EventGridDeadLetter]:
    """The dead letters in one blob (a JSON array of events, or one event); ``ValueError`` if it holds none."""
    parsed_name = parse_blob_name(name)
    if parsed_name is None:
        raise ValueError(f"{name}: not a dead-letter blob name ([TOPIC/]SUBSCRIPTION/yyyy/m/d/h/guid.json)")
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{name}: not JSON: {exc}") from None
    items = content if isinstance(content, list) else [content]
    found = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"{name}: item {index} is not an event (a JSON object with an id)")
        lowered = {key.lower(): value for key, value in item.items()}
        schema: Schema = "cloudevents" if "specversion" in lowered or "deadletterreason" in item else EVENTGRID
        event = {key: value for key, value in item.items() if key.lower() not in DEAD_LETTER_FIELDS}
        dead = EventGridDeadLetter(
            blob=name,
            index=index,
            subscription=parsed_name.subscription,
            topic=parsed_name.topic,
            function=function_for(parsed_name.subscription),
            schema=schema,
            event=event,
            reason=str(lowered["deadletterreason"]) if lowered.get("deadletterreason") is not None else None,
            delivery_attempts=_int(lowered.get("deliveryattempts")),
            last_delivery_outcome=(
                str(lowered["lastdeliveryoutcome"]) if lowered.get("lastdeliveryoutcome") is not None else None
            ),
            last_http_status_code=_int(lowered.get("lasthttpstatuscode")),
            publish_time=_moment(lowered.get("publishtime")),
            last_delivery_attempt_time=_moment(lowered.get("lastdeliveryattempttime")),
            blob_time=blob_time,
        )
        count = (replay_counts or {}).get(dead.key, 0)
        found.append(dead if not count else _with_count(dead, count))
    return found


def _with_count(dead: EventGridDeadLetter, count: int) -> EventGridDeadLetter:
    from dataclasses import replace as _replace

    return _replace(dead, replay_count=count)


# -- the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlob:
    """A blob of the dead-letter container: its name and when it was last written."""

    name: str
    last_modified: datetime | None


class EventGridDeadLetterStore(Protocol):
    """The dead-letter container (Azure: a blob container; locally: a folder) and the replay counts."""

    where: str  # for messages: the container URL (without query) or the folder

    def blobs(self) -> Iterator[StoredBlob]:
        """Every dead-letter blob (the replay counts left out), in name order."""
        ...

    def read(self, name: str) -> bytes | None:
        """A blob's content; ``None`` when it is gone."""
        ...

    def lock(self, name: str) -> str | None:
        """Lease a blob for this run (a minute); the lease id, or ``None`` when gone or leased by another run."""
        ...

    def replace(self, name: str, data: bytes, lease: str) -> None:
        """Rewrite a leased blob (the events still dead-lettered)."""
        ...

    def delete(self, name: str, lease: str) -> None:
        """Delete a leased blob."""
        ...

    def release(self, name: str, lease: str) -> None:
        """Give the lease back."""
        ...

    def replay_counts(self) -> dict[str, int]:
        """Every replay count kept, by :attr:`EventGridDeadLetter.key` (one listing)."""
        ...

    def replay_count(self, key: str) -> int:
        """One replay count (0 when none is kept)."""
        ...

    def set_replay_count(self, key: str, count: int) -> None:
        """Keep a replay count."""
        ...


class Delivery(Protocol):
    """Delivers an event to a function as Event Grid does."""

    def deliver(self, function: str, event: Mapping[str, Any], schema: Schema) -> int:
        """POST it; the HTTP status the function app answered (raises ``OSError`` when unreachable)."""
        ...


class HttpEventGridDelivery:
    """POSTs to ``{base_url}/runtime/webhooks/EventGrid?functionName=NAME`` with a key, as Event Grid does.

    ``key``: the Event Grid system key (``eventgrid_extension``) or the admin (master) key, which the
    Functions host accepts for system endpoints too.
    """

    def __init__(self, base_url: str, key: str | None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout = timeout

    def deliver(self, function: str, event: Mapping[str, Any], schema: Schema) -> int:
        from urllib.parse import quote

        url = f"{self.base_url}/runtime/webhooks/EventGrid?functionName={quote(function, safe='')}"
        headers = {"aeg-event-type": "Notification"}
        if schema == EVENTGRID:
            body, headers["Content-Type"] = json.dumps([dict(event)]).encode(), "application/json"
        else:
            body, headers["Content-Type"] = json.dumps(dict(event)).encode(), "application/cloudevents+json"
        if self._key:
            headers["x-functions-key"] = self._key
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
        if not url.startswith(("http://", "https://")):
            raise OSError(f"the function app URL must be http(s), got {self.base_url!r}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except urllib.error.URLError as exc:
            raise OSError(f"cannot reach the function app at {self.base_url}: {exc.reason}") from None


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventGridFilters:
    """Which Event Grid dead letters an operation touches; every given criterion must match."""

    function: str | None = None  # the function, or the subscription (case-insensitive)
    reason: str | None = None
    since: datetime | None = None
    event_id: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        check_limit_and_since(self.limit, self.since)

    def matches(self, dead: EventGridDeadLetter) -> bool:
        """Whether one dead letter matches (the limit aside)."""
        if self.function is not None and self.function.casefold() not in (
            (dead.function or "").casefold(),
            dead.subscription.casefold(),
        ):
            return False
        if self.reason is not None and (dead.reason or "").casefold() != self.reason.casefold():
            return False
        if self.event_id is not None and dead.event_id != self.event_id:
            return False
        if self.since is not None:
            moment = dead.dead_lettered_time
            if moment is None or moment < self.since:
                return False
        return True


def _scan(store: EventGridDeadLetterStore, scan_limit: int) -> Iterator[EventGridDeadLetter]:
    counts = store.replay_counts()
    for seen, blob in enumerate(store.blobs()):
        if seen >= scan_limit:
            return
        data = store.read(blob.name)
        if data is None:
            continue  # settled by another run since the listing
        try:
            yield from parse_blob(blob.name, data, blob_time=blob.last_modified, replay_counts=counts)
        except ValueError:
            continue  # not a dead letter Event Grid wrote; left alone


def select(
    store: EventGridDeadLetterStore, filters: EventGridFilters = EventGridFilters(), *, scan_limit: int = SCAN_LIMIT
) -> list[EventGridDeadLetter]:
    """The dead letters matching ``filters``, blob by blob in name order, at most ``filters.limit``."""
    found: list[EventGridDeadLetter] = []
    for dead in _scan(store, scan_limit):
        if filters.matches(dead):
            found.append(dead)
            if filters.limit is not None and len(found) >= filters.limit:
                break
    return found


def count(store: EventGridDeadLetterStore, *, scan_limit: int = SCAN_LIMIT) -> int:
    """How many events are dead-lettered (the ops page's figure)."""
    return sum(1 for _ in _scan(store, scan_limit))


def find(
    store: EventGridDeadLetterStore, event_id: str, *, function: str | None = None, scan_limit: int = SCAN_LIMIT
) -> EventGridDeadLetter:
    """``show EVENT_ID``: the first dead letter with this event id; ``LookupError`` when there is none."""
    found = select(store, EventGridFilters(function=function, event_id=event_id, limit=1), scan_limit=scan_limit)
    if not found:
        where = f"function {function!r}" if function else "the Event Grid dead letters"
        raise LookupError(f"no dead-lettered event with id {event_id!r} in {where} ({store.where})")
    return found[0]


# -- replay and purge ------------------------------------------------------------------------------

Status = Literal["replayed", "would_replay", "purged", "would_purge", "skipped", "failed"]


@dataclass(frozen=True)
class EventGridOutcome:
    """What happened to one dead-lettered event."""

    function: str | None
    subscription: str
    event_id: str
    blob: str
    status: Status
    detail: str = ""
    replay_count: int | None = None
    http_status: int | None = None


@dataclass
class EventGridReport:
    """The outcome of a replay or purge (or its dry run), in the order the dead letters were met."""

    dry_run: bool
    max_replays: int | None = None
    outcomes: list[EventGridOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[EventGridOutcome]:
        """Not done; the dead letter is still there."""
        return [o for o in self.outcomes if o.status == "failed"]

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


Progress = Callable[[int, int], None]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _outcome(dead: EventGridDeadLetter, status: Status, detail: str = "", **extra: Any) -> EventGridOutcome:
    return EventGridOutcome(dead.function, dead.subscription, dead.event_id, dead.blob, status, detail, **extra)


def _by_blob(found: Iterable[EventGridDeadLetter]) -> dict[str, list[EventGridDeadLetter]]:
    groups: dict[str, list[EventGridDeadLetter]] = {}
    for dead in found:
        groups.setdefault(dead.blob, []).append(dead)
    return groups


def _settle(
    store: EventGridDeadLetterStore,
    blob: str,
    wanted: Sequence[EventGridDeadLetter],
    act: Callable[[EventGridDeadLetter], EventGridOutcome],
    done_status: Status,
) -> list[EventGridOutcome]:
    """Lease ``blob``, ``act`` on each wanted event still in it, write back what stays, release."""
    try:
        lease = store.lock(blob)
    except Exception as exc:
        return [_outcome(d, "failed", f"could not lease the dead-letter blob: {_error(exc)}") for d in wanted]
    if lease is None:
        detail = "no longer dead-lettered (replayed, purged or leased by another run)"
        return [_outcome(d, "skipped", detail) for d in wanted]
    outcomes: list[EventGridOutcome] = []
    try:
        try:
            data = store.read(blob)
            current = parse_blob(blob, data) if data is not None else []
            raw = json.loads(data) if data is not None else []
        except Exception as exc:  # rewritten meanwhile into something that is no dead letter, or unreadable
            return [_outcome(d, "failed", f"could not read the dead-letter blob again: {_error(exc)}") for d in wanted]
        items = raw if isinstance(raw, list) else [raw]
        removed: set[int] = set()
        for dead in wanted:
            now = next((c for c in current if c.index == dead.index and c.event_id == dead.event_id), None)
            if now is None:
                outcomes.append(_outcome(dead, "skipped", "no longer in its dead-letter blob"))
                continue
            try:
                # Read again under the lease: another run may have replayed it since the listing.
                now = _with_count(now, store.replay_count(now.key))
            except Exception as exc:
                outcomes.append(_outcome(dead, "failed", f"could not read its replay count: {_error(exc)}"))
                continue
            outcome = act(now)
            if outcome.status == done_status:
                removed.add(now.index)
            outcomes.append(outcome)
        if removed:
            remaining = [item for index, item in enumerate(items) if index not in removed]
            try:
                if remaining:
                    store.replace(blob, json.dumps(remaining).encode(), lease)
                else:
                    store.delete(blob, lease)
            except Exception as exc:
                note = (
                    f"; but removing it from {blob} failed ({_error(exc)}): it is still listed, and replaying it "
                    "again delivers it again (the functions drop a repeated event by its cause)"
                )
                outcomes = [
                    EventGridOutcome(**{**o.__dict__, "status": "failed", "detail": o.detail + note})
                    if o.status == done_status
                    else o
                    for o in outcomes
                ]
    finally:
        # A deleted blob has no lease to release; a lease lapses by itself.
        with contextlib.suppress(Exception):
            store.release(blob, lease)
    return outcomes


def replay(
    store: EventGridDeadLetterStore,
    delivery: Delivery,
    filters: EventGridFilters = EventGridFilters(),
    *,
    dry_run: bool = False,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    progress: Progress | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> EventGridReport:
    """Deliver the selected dead-lettered events to their functions again; remove each the function accepted.

    ``dry_run`` reports what would be delivered and delivers nothing. An event whose replay count
    reached ``max_replays`` is skipped; an event with no known function fails (naming its subscription).
    """
    if isinstance(max_replays, bool) or not isinstance(max_replays, int) or max_replays < 0:
        raise ValueError(f"max_replays must be a whole number of at least 0, got {max_replays!r}")
    candidates = select(store, filters, scan_limit=scan_limit)
    report = EventGridReport(dry_run=dry_run, max_replays=max_replays)
    total, done = len(candidates), 0

    def check(dead: EventGridDeadLetter) -> EventGridOutcome | None:
        if dead.replay_count >= max_replays:
            return _outcome(
                dead,
                "skipped",
                f"replayed {dead.replay_count} time(s) already, the maximum is {max_replays}: it stays dead-lettered "
                "(fix the cause, then raise --max-replays, or purge it)",
            )
        if dead.function is None:
            return _outcome(
                dead, "failed", f"no function is known for subscription {dead.subscription!r}; it stays dead-lettered"
            )
        return None

    def deliver(dead: EventGridDeadLetter) -> EventGridOutcome:
        refused = check(dead)  # again: another run may have replayed it meanwhile
        if refused is not None:
            return refused
        assert dead.function is not None
        number = dead.replay_count + 1
        try:
            store.set_replay_count(dead.key, number)  # before delivering: a crash over-counts, never loops
        except Exception as exc:
            return _outcome(dead, "failed", f"could not record the replay count, nothing delivered: {_error(exc)}")
        try:
            status = delivery.deliver(dead.function, dead.event, dead.schema)
        except Exception as exc:
            detail = f"delivery failed, it stays dead-lettered: {_error(exc)}"
            return _outcome(dead, "failed", detail, replay_count=number)
        if not 200 <= status < 300:
            return _outcome(
                dead,
                "failed",
                f"the function answered {status}, it stays dead-lettered (replay {number} counted)",
                replay_count=number,
                http_status=status,
            )
        return _outcome(dead, "replayed", replay_count=number, http_status=status)

    for blob, group in _by_blob(candidates).items():
        if dry_run:
            for dead in group:
                refused = check(dead)
                report.outcomes.append(refused or _outcome(dead, "would_replay", replay_count=dead.replay_count + 1))
        else:
            pending = []
            for dead in group:
                refused = check(dead)
                if refused is not None:
                    report.outcomes.append(refused)
                else:
                    pending.append(dead)
            if pending:
                report.outcomes.extend(_settle(store, blob, pending, deliver, "replayed"))
        done += len(group)
        if progress is not None:
            progress(done, total)
    return report


def purge_confirmation(filters: EventGridFilters) -> str:
    """What an Event Grid purge must be confirmed with: the function's name, or ``all``."""
    return filters.function or ALL_QUEUES


def purge(
    store: EventGridDeadLetterStore,
    filters: EventGridFilters = EventGridFilters(),
    *,
    confirm: str | None,
    dry_run: bool = False,
    progress: Progress | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> EventGridReport:
    """Delete the selected dead-lettered events for good.

    Needs ``confirm`` equal to :func:`purge_confirmation` (the function's name, or ``all``) unless
    ``dry_run``; raises :class:`ConfirmationRequired` otherwise, before touching anything.
    """
    expected = purge_confirmation(filters)
    if not dry_run and confirm != expected:
        got = "none was given" if not confirm else f"got {confirm!r}"
        raise ConfirmationRequired(
            f"purging Event Grid dead letters deletes them for good: confirm with {expected!r} ({got})"
        )
    candidates = select(store, filters, scan_limit=scan_limit)
    report = EventGridReport(dry_run=dry_run)
    total, done = len(candidates), 0
    for blob, group in _by_blob(candidates).items():
        if dry_run:
            report.outcomes.extend(_outcome(d, "would_purge") for d in group)
        else:
            report.outcomes.extend(_settle(store, blob, group, lambda d: _outcome(d, "purged"), "purged"))
        done += len(group)
        if progress is not None:
            progress(done, total)
    return report


# -- views -----------------------------------------------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def filters_view(filters: EventGridFilters) -> dict[str, Any]:
    """The criteria given (times in ISO 8601), with the source."""
    out: dict[str, Any] = {"source": EVENTGRID}
    for name in ("function", "reason", "since", "event_id", "limit"):
        value = getattr(filters, name)
        if value is not None:
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def summary(dead: EventGridDeadLetter) -> dict[str, Any]:
    """The ``list`` view of one dead-lettered event."""
    return {
        "source": EVENTGRID,
        "event_id": dead.event_id,
        "function": dead.function,
        "subscription": dead.subscription,
        "event_type": dead.event_type,
        "subject": dead.subject,
        "reason": dead.reason,
        "delivery_attempts": dead.delivery_attempts,
        "last_delivery_outcome": dead.last_delivery_outcome,
        "last_http_status_code": dead.last_http_status_code,
        "publish_time": _time(dead.publish_time),
        "dead_lettered_time": _time(dead.dead_lettered_time),
        "replay_count": dead.replay_count,
    }


def detail(dead: EventGridDeadLetter) -> dict[str, Any]:
    """The ``show`` view: the summary, where it is kept, and the event as it will be replayed."""
    return {
        **summary(dead),
        "topic": dead.topic,
        "blob": dead.blob,
        "index": dead.index,
        "schema": dead.schema,
        "last_delivery_attempt_time": _time(dead.last_delivery_attempt_time),
        "event": dict(dead.event),
    }


def listing(filters: EventGridFilters, found: Sequence[EventGridDeadLetter]) -> dict[str, Any]:
    """The answer of ``list --source eventgrid``."""
    return {"filters": filters_view(filters), "count": len(found), "dead_letters": [summary(d) for d in found]}


def outcome_view(outcome: EventGridOutcome) -> dict[str, Any]:
    """One event's outcome."""
    out: dict[str, Any] = {
        "source": EVENTGRID,
        "function": outcome.function,
        "subscription": outcome.subscription,
        "event_id": outcome.event_id,
        "blob": outcome.blob,
        "status": outcome.status,
    }
    if outcome.replay_count is not None:
        out["replay_count"] = outcome.replay_count
    if outcome.http_status is not None:
        out["http_status"] = outcome.http_status
    if outcome.detail:
        out["detail"] = outcome.detail
    return out


def report_view(filters: EventGridFilters, result: EventGridReport) -> dict[str, Any]:
    """The answer of ``replay`` / ``purge`` with ``source: eventgrid``."""
    out: dict[str, Any] = {
        "filters": filters_view(filters),
        "dry_run": result.dry_run,
        "counts": result.counts(),
        "outcomes": [outcome_view(o) for o in result.outcomes],
    }
    if result.max_replays is not None:
        out["max_replays"] = result.max_replays
    return out


# -- requests --------------------------------------------------------------------------------------

FILTER_FIELDS = ("source", "function", "reason", "since", "event_id", "message_id", "queue", "limit")


def parse_filters(data: Mapping[str, Any], *, now: datetime, extra: Iterable[str] = ()) -> EventGridFilters:
    """Filters from a JSON body or query string with ``source=eventgrid``; ``ValueError`` names a bad field.

    ``queue`` and ``message_id`` are accepted as the queue requests' spellings of ``function`` and ``event_id``.
    """
    from shared.deadletters.requests import _optional_text, _whole, parse_since

    allowed = set(FILTER_FIELDS) | set(extra)
    unknown = sorted(set(data) - allowed)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown field(s) {names} for source eventgrid; expected {', '.join(sorted(allowed))}")
    function = _optional_text(data, "function") or _optional_text(data, "queue")
    event_id = _optional_text(data, "event_id") or _optional_text(data, "message_id")
    since_text = _optional_text(data, "since")
    limit = data.get("limit")
    return EventGridFilters(
        function=function,
        reason=_optional_text(data, "reason"),
        since=parse_since(since_text, now=now) if since_text else None,
        event_id=event_id,
        limit=None if limit is None or limit == "" else _whole(limit, "limit", 1),
    )


def source_of(data: Mapping[str, Any]) -> str:
    """The ``source`` field: ``queues`` (the default) or ``eventgrid``; ``ValueError`` otherwise."""
    value = data.get("source") or "queues"
    if value not in ("queues", EVENTGRID):
        raise ValueError(f"source must be queues or eventgrid, got {value!r}")
    return str(value)


def overview_count(store: EventGridDeadLetterStore | None) -> dict[str, Any]:
    """The ops overview's fields: ``eventgrid_dead_letters`` (a count, ``None`` when unreadable) and why not.

    Nothing when no store is wired (a test's services).
    """
    if store is None:
        return {}
    try:
        return {"eventgrid_dead_letters": count(store)}
    except Exception as exc:  # the page still shows the rest
        return {
            "eventgrid_dead_letters": None,
            "eventgrid_dead_letters_error": f"Event Grid dead letters unavailable: {type(exc).__name__}: {exc}",
        }
