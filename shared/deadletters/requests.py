"""Dead-letter requests: a JSON body or a query string (admin functions) or the command line's
arguments, read into :class:`~shared.deadletters.Filters` and the options of each operation.

Every function raises ``ValueError`` with a message that names the field and what it accepts
(the admin functions answer it as a 400, ``signalbox dlq`` exits 2). Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.deadletters import DEFAULT_MAX_REPLAYS, FILTER_FIELDS, Filters

__all__ = ["parse_confirm", "parse_filters", "parse_flag", "parse_max_replays", "parse_since"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime) -> datetime:
    """A moment: ISO 8601 with a time zone (``2026-11-23T10:00:00Z``), or an age before ``now``.

    Ages: ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` or an ISO 8601 duration (``PT1H``).
    """
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2).lower()]: float(relative.group(1))})
    if text.upper().startswith("P"):
        from shared.queues import parse_iso_duration

        try:
            return now - parse_iso_duration(text.upper())
        except ValueError as exc:
            raise ValueError(f"since: {exc}") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since: expected a time like 2026-11-23T10:00:00Z or an age like 15m, 2h, 1d, got {text!r}"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"since: give a time zone (e.g. 2026-11-23T10:00:00Z), got {text!r}")
    return moment.astimezone(UTC)


def _optional_text(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _whole(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_filters(data: Mapping[str, Any], *, now: datetime, extra: Iterable[str] = ()) -> Filters:
    """Filters from a JSON body or query string; ``ValueError`` names a bad or unknown field.

    ``extra`` names further fields the caller reads itself (e.g. ``dry_run``).
    """
    allowed = set(FILTER_FIELDS) | set(extra)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(allowed))}")
    since_text = _optional_text(data, "since")
    limit = data.get("limit")
    return Filters(
        queue=_optional_text(data, "queue"),
        reason=_optional_text(data, "reason"),
        since=parse_since(since_text, now=now) if since_text else None,
        message_id=_optional_text(data, "message_id"),
        correlation_id=_optional_text(data, "correlation_id"),
        limit=None if limit is None or limit == "" else _whole(limit, "limit", 1),
    )


def parse_flag(data: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A boolean field (JSON true/false, or "true"/"false" in a query string)."""
    value = data.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be true or false, got {value!r}")


def parse_max_replays(data: Mapping[str, Any]) -> int:
    """The ``max_replays`` field (default :data:`~shared.deadletters.DEFAULT_MAX_REPLAYS`)."""
    value = data.get("max_replays")
    return DEFAULT_MAX_REPLAYS if value is None else _whole(value, "max_replays", 0)


def parse_confirm(data: Mapping[str, Any]) -> str | None:
    """The ``confirm`` field of a purge (the queue name, or ``all``); ``None`` when not given.

    Whether it is the right one is the purge's own check (:func:`~shared.deadletters.purge`).
    """
    confirm = data.get("confirm")
    if confirm is not None and not isinstance(confirm, str):
        raise ValueError("confirm must be a string: the queue name, or all")
    return confirm
