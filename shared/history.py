"""A model's history: the append-only record of what happened to it, kept in the registry.

Every stage change, alias move, approval, deployment, rollback, hold, release and dead-letter
replay is one entry: what, who, why, when, and the correlation id and cause (the message id)
that link it to the lifecycle that made it. The handlers record entries where things happen;
``signalbox history``, ``GET /api/history/{model}`` and the ops page read them, newest first.

Storage is the Registry port's ``append_history``/``history`` (MLflow: one run per entry in the
model's history experiment, see ``shared.adapters.mlflow.registry``). Each entry's ``id`` is
derived from its cause and content, so a redelivered message that records the same entry again
is shown once; its ``key`` (time, then a sequence) sorts entries and is unique.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import InvalidInput, SignalboxError, TransientError

if TYPE_CHECKING:
    from shared.contracts import Envelope
    from shared.deadletters.ports import DeadLetter, ReplayMessage
    from shared.services import Services

Kind = Literal["evaluation", "stage", "alias", "approval", "deployment", "rollback", "hold", "release", "replay"]

# A tag value everywhere takes 5,000 bytes (MLflow's guarantee); 1,000 characters keeps any text within it.
MAX_TEXT = 1000
# Who did what the pipeline did by itself.
SIGNALBOX = "signalbox"

log = logging.getLogger("signalbox.history")
_NAMESPACE = uuid.UUID("3c1f6a0e-9b2d-4c7e-8a51-d2e4f7a9b013")
_sequence = itertools.count()


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


@dataclass(frozen=True)
class Entry:
    """One thing that happened to a model."""

    kind: Kind
    what: str
    who: str = SIGNALBOX
    why: str = ""
    version: str | None = None
    correlation_id: str | None = None
    cause: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def fields(self, at: datetime) -> dict[str, str]:
        """The entry as the registry stores it (flat strings), stamped ``at``."""
        identity = f"{self.cause}\x00{self.kind}\x00{self.what}\x00{self.version}"
        entry_id = str(uuid.uuid5(_NAMESPACE, identity))
        moment = at.astimezone(UTC)
        fields = {
            "id": entry_id,
            "key": f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z-{next(_sequence) % 10**8:08d}-{entry_id[:8]}",
            "at": moment.isoformat(),
            "kind": self.kind,
            "what": _text(self.what),
            "who": _text(self.who),
            "why": _text(self.why),
        }
        optional = {"version": self.version, "correlation_id": self.correlation_id, "cause": self.cause}
        fields.update({k: _text(v) for k, v in optional.items() if v})
        if self.detail:
            detail = json.dumps(dict(self.detail), sort_keys=True, default=str, separators=(",", ":"))
            if len(detail) <= MAX_TEXT:  # a detail too long to keep whole is left out, never cut into bad JSON
                fields["detail"] = detail
        return fields


def of(envelope: Envelope) -> dict[str, str]:
    """The correlation id and cause of entries a handler records for ``envelope``."""
    return {"correlation_id": envelope.correlation_id, "cause": envelope.message_id}


def record(svc: Services, model_name: str, *entries: Entry) -> None:
    """Append entries to the model's history, in order.

    A transient failure is raised (the command is retried and records the same entries, which
    reads show once). Any other failure is logged and swallowed: the stage tags are the system of
    record, and a history store the identity cannot write must not stop a deployment.
    """
    at = svc.clock()
    for entry in entries:
        try:
            svc.registry.append_history(model_name, entry.fields(at))
        except TransientError:
            raise
        except SignalboxError as exc:
            log.warning("history of %s: entry %r not recorded: %s", model_name, entry.what, exc)
            return


def read(svc: Services, model_name: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """The model's entries at or after ``since``, newest first, each recorded once."""
    found = svc.registry.history(model_name, since)
    seen: set[str] = set()
    entries = []
    # Oldest first, so an entry recorded again by a redelivery is shown where it first happened.
    for raw in sorted(found, key=lambda e: e.get("key", "")):
        entry_id = raw.get("id") or raw.get("key", "")
        if entry_id in seen:
            continue
        seen.add(entry_id)
        try:
            detail = json.loads(raw["detail"]) if raw.get("detail") else {}
        except ValueError:
            detail = {}
        entries.append(
            {
                "at": raw.get("at"),
                "kind": raw.get("kind"),
                "what": raw.get("what"),
                "who": raw.get("who"),
                "why": raw.get("why") or None,
                "version": raw.get("version"),
                "correlation_id": raw.get("correlation_id"),
                "cause": raw.get("cause"),
                "detail": detail,
                "id": entry_id,
                "key": raw.get("key"),
            }
        )
    entries.reverse()
    return entries


_SINCE = re.compile(r"(\d{1,6})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``7d``, ``12h``, ``30m``, ``2w`` before ``now``, or an ISO 8601 time (UTC when it has no offset)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    matched = _SINCE.fullmatch(text)
    if matched:
        return now - timedelta(**{_UNITS[matched.group(2)]: int(matched.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"since: expected a duration like 7d, 12h, 30m, 2w or an ISO 8601 time, got {text[:40]!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def stage_moves(
    model_name: str, moves: Sequence[tuple[str, str | None, str]], *, who: str, why: str, link: Mapping[str, str]
) -> list[Entry]:
    """Entries for stage changes ``(version, old stage, new stage)``."""
    return [
        Entry(
            "stage",
            f"v{version} {old or 'none'} → {new}",
            who=who,
            why=why,
            version=version,
            detail={"from": old, "to": new},
            **link,
        )
        for version, old, new in moves
        if old != new
    ]


def replayed(svc: Services, dead: DeadLetter, message: ReplayMessage, *, who: str, reason: str | None = None) -> None:
    """Record a dead-letter replay in the history of the replayed command's model (never raises: it was sent)."""
    from shared.contracts import parse_envelope

    try:
        envelope = parse_envelope(message.body)
    except InvalidInput:
        return  # not a command (a malformed body): no model to record it for
    command = envelope.command
    version = getattr(command, "version", None) or getattr(command, "to_version", None)
    entry = Entry(
        "replay",
        f"{command.kind} replayed from the {dead.queue} dead-letter queue",
        who=who,
        why=(f"{reason} — " if reason else "")
        + f"dead-lettered: {dead.reason or 'no reason'}: {dead.description or ''}".rstrip(": "),
        version=version,
        correlation_id=envelope.correlation_id,
        cause=message.message_id,
        detail={"queue": dead.queue, "original_message_id": dead.message_id, "replay_message_id": message.message_id},
    )
    try:
        record(svc, command.model_name, entry)
    except Exception as exc:  # the replay was sent: a history failure must not report it as failed
        log.warning("history of %s: replay of %s not recorded: %s", command.model_name, dead.message_id, exc)
