"""Dead-letter views: the JSON the admin functions answer and ``signalbox dlq --json`` prints.

The command line's text tables are drawn from these same dicts (``signalbox/dlq.py``), so the
local and the through-the-host ways print the same thing. Standard library only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from shared.deadletters import FILTER_FIELDS, DeadLetter, Filters, Outcome, PurgeReport, ReplayReport

__all__ = ["detail", "filters_view", "listing", "outcome_view", "report", "report_view", "summary"]

_SHORT_DESCRIPTION = 100


def _time(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _short(text: str | None, width: int = _SHORT_DESCRIPTION) -> str | None:
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def filters_view(filters: Filters) -> dict[str, Any]:
    """The criteria given (times in ISO 8601)."""
    out: dict[str, Any] = {}
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def summary(dead: DeadLetter) -> dict[str, Any]:
    """The ``list`` view of a dead letter (the description shortened)."""
    return {
        "message_id": dead.message_id,
        "queue": dead.queue,
        "sequence_number": dead.sequence_number,
        "reason": dead.reason,
        "description": _short(dead.description),
        "enqueued_time": _time(dead.enqueued_time),
        "dead_lettered_time": _time(dead.dead_lettered_time),
        "delivery_count": dead.delivery_count,
        "correlation_id": dead.correlation_id,
        "replay_count": dead.replay_count,
    }


def detail(dead: DeadLetter) -> dict[str, Any]:
    """The ``show`` view: everything, the body as text (or base64 when it is not UTF-8)."""
    try:
        body: str = dead.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(dead.body).decode("ascii"), "base64"
    return {
        **summary(dead),
        "description": dead.description,
        "session_id": dead.session_id,
        "subject": dead.subject,
        "content_type": dead.content_type,
        "original_message_id": dead.original_message_id,
        "application_properties": dict(dead.application_properties),
        "body": body,
        "body_encoding": encoding,
    }


def listing(filters: Filters, found: Sequence[DeadLetter]) -> dict[str, Any]:
    """The answer of ``list``: the filters, the count and each dead letter's summary."""
    return {"filters": filters_view(filters), "count": len(found), "dead_letters": [summary(d) for d in found]}


def outcome_view(outcome: Outcome) -> dict[str, Any]:
    """One dead letter's outcome (the new message id and replay count only for a replay)."""
    out: dict[str, Any] = {
        "queue": outcome.queue,
        "message_id": outcome.message_id,
        "sequence_number": outcome.sequence_number,
        "status": outcome.status,
    }
    if outcome.new_message_id is not None:
        out["new_message_id"] = outcome.new_message_id
        out["replay_count"] = outcome.replay_count
    if outcome.detail:
        out["detail"] = outcome.detail
    return out


def report_view(result: ReplayReport | PurgeReport) -> dict[str, Any]:
    """A replay or purge report: dry run, counts per status, each outcome (a replay: its max replays)."""
    out: dict[str, Any] = {
        "dry_run": result.dry_run,
        "counts": result.counts(),
        "outcomes": [outcome_view(o) for o in result.outcomes],
    }
    if isinstance(result, ReplayReport):
        out["max_replays"] = result.max_replays
    return out


def report(filters: Filters, result: ReplayReport | PurgeReport) -> dict[str, Any]:
    """The answer of ``replay`` and ``purge``: the filters, then the report."""
    return {"filters": filters_view(filters), **report_view(result)}
