"""Event Grid deliveries to the local host: reading a delivery and the subscription validation handshake.

The Functions host's Event Grid extension splits a delivery (an Event Grid schema array or object, or
CloudEvents 1.0 in structured mode) into its events and hands each JSON object, as sent, to the worker,
whose ``azure.functions`` converter binds it (see ``signalbox.localhost.triggers.invoke_event_grid``).
:func:`parse_delivery` does the splitting and, unlike the extension, also checks each event's envelope
the way Event Grid checks it when the event is published, so a hand-made delivery that Event Grid could
never send is answered 400 with the field that is wrong instead of reaching the function.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.events import CLOUDEVENTS_SPECVERSION, InboundEvent, InvalidEvent, parse_time

__all__ = ["SUBSCRIPTION_VALIDATION_TYPE", "DeliveredEvent", "parse_delivery", "validation_code"]

SUBSCRIPTION_VALIDATION_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"

_CLOUDEVENTS_SINGLE = "application/cloudevents+json"
_CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"


@dataclass(frozen=True)
class DeliveredEvent:
    """One event of a delivery: the JSON object as Event Grid sent it, and its checked envelope."""

    raw: dict[str, Any]
    event: InboundEvent


def parse_delivery(body: bytes | str, *, content_type: str | None = None) -> list[DeliveredEvent]:
    """Split an HTTP delivery from Event Grid into its events, checking each one's envelope.

    Accepts the Event Grid schema (an array of events, or a single object) and CloudEvents 1.0 in structured
    mode: ``application/cloudevents+json`` (one event), ``application/cloudevents-batch+json`` (an array),
    or any JSON body whose events carry ``specversion``.
    """
    if isinstance(body, bytes):
        try:
            # utf-8-sig: a BOM from a hand-made request must not make valid JSON unreadable.
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidEvent("body", "not valid UTF-8") from None
    else:
        text = body
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise InvalidEvent("body", "not valid JSON") from None

    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == _CLOUDEVENTS_SINGLE and not isinstance(document, dict):
        raise InvalidEvent("body", f"{_CLOUDEVENTS_SINGLE} must be one JSON object")
    if media_type == _CLOUDEVENTS_BATCH and not isinstance(document, list):
        raise InvalidEvent("body", f"{_CLOUDEVENTS_BATCH} must be a JSON array")

    if isinstance(document, dict):
        items: list[Any] = [document]
    elif isinstance(document, list):
        items = document
    else:
        raise InvalidEvent("body", "not a JSON object or array")
    if not items:
        raise InvalidEvent("body", "empty array: no events")

    cloudevents_only = media_type in (_CLOUDEVENTS_SINGLE, _CLOUDEVENTS_BATCH)
    delivered: list[DeliveredEvent] = []
    for index, item in enumerate(items):
        where = f"event[{index}]"
        if not isinstance(item, dict):
            raise InvalidEvent(where, "not a JSON object")
        if cloudevents_only or "specversion" in item:
            event = _parse_cloudevent(item, where)
        else:
            event = _parse_eventgrid_event(item, where)
        delivered.append(DeliveredEvent(raw=item, event=event))
    return delivered


def validation_code(delivered: Iterable[DeliveredEvent]) -> str | None:
    """The ``data.validationCode`` of a ``Microsoft.EventGrid.SubscriptionValidationEvent`` delivered, else None."""
    for item in delivered:
        event = item.event
        if event.type.casefold() == SUBSCRIPTION_VALIDATION_TYPE.casefold() and isinstance(event.data, Mapping):
            code = _lookup(event.data, "validationCode")
            if isinstance(code, str) and code:
                return code
    return None


def _parse_eventgrid_event(item: Mapping[str, Any], where: str) -> InboundEvent:
    event_time = _required_text(item, "eventTime", where)
    parsed_time = parse_time(event_time)
    if parsed_time is None:
        raise InvalidEvent(f"{where}.eventTime", f"not an ISO 8601 time: {event_time!r}")
    if "data" not in item:
        raise InvalidEvent(f"{where}.data", "missing")
    return InboundEvent(
        id=_required_text(item, "id", where),
        type=_required_text(item, "eventType", where),
        source=_optional_text(item, "topic", where) or "",
        subject=_required_text(item, "subject", where, allow_empty=True),
        time=parsed_time,
        data=item["data"],
        data_version=_optional_text(item, "dataVersion", where),
        schema="eventgrid",
    )


def _parse_cloudevent(item: Mapping[str, Any], where: str) -> InboundEvent:
    specversion = _required_text(item, "specversion", where)
    if specversion != CLOUDEVENTS_SPECVERSION:
        raise InvalidEvent(f"{where}.specversion", f"unsupported CloudEvents version {specversion!r} (only 1.0)")
    time_text = _optional_text(item, "time", where)
    parsed_time = None
    if time_text is not None:
        parsed_time = parse_time(time_text)
        if parsed_time is None:
            raise InvalidEvent(f"{where}.time", f"not an ISO 8601 time: {time_text!r}")
    data = item.get("data")
    if "data" not in item and "data_base64" in item:
        encoded = _required_text(item, "data_base64", where, allow_empty=True)
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise InvalidEvent(f"{where}.data_base64", "not valid base64") from None
    return InboundEvent(
        id=_required_text(item, "id", where),
        type=_required_text(item, "type", where),
        source=_required_text(item, "source", where),
        subject=_optional_text(item, "subject", where) or "",
        time=parsed_time,
        data=data,
        data_version=None,
        schema="cloudevents",
    )


def _required_text(item: Mapping[str, Any], name: str, where: str, *, allow_empty: bool = False) -> str:
    if name not in item or item[name] is None:
        raise InvalidEvent(f"{where}.{name}", "missing")
    value = item[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}.{name}", "not a string")
    if not value and not allow_empty:
        raise InvalidEvent(f"{where}.{name}", "empty")
    return value


def _optional_text(item: Mapping[str, Any], name: str, where: str) -> str | None:
    value = item.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidEvent(f"{where}.{name}", "not a string")
    return value


def _lookup(data: Mapping[str, Any], name: str) -> Any:
    """``data[name]`` matched case-insensitively (None when absent)."""
    if name in data:
        return data[name]
    folded = name.casefold()
    for key, value in data.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser would accept them silently.
    raise ValueError(f"{name} is not JSON")
