"""The queues Signalbox chains its work over, read from ``queues.json``.

``queues.json`` is the single definition: the code, the local queues and the Bicep
templates in ``infra/`` (``loadJsonContent``) all read it, so they cannot drift.
This module stays import-light because ``function_app`` imports it at indexing time.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

QUEUES_FILE = Path(__file__).with_name("queues.json")

_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_iso_duration(text: str) -> timedelta:
    """Parse the ISO 8601 durations Service Bus uses (``PT1M``, ``P7D``, ``P1DT2H``)."""
    match = _ISO_DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration (e.g. PT5M, P1D): {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(**parts)


@dataclass(frozen=True)
class QueueSpec:
    """One queue and the Service Bus settings it is created with."""

    name: str
    purpose: str
    requires_session: bool
    max_delivery_count: int
    lock_duration: timedelta
    default_message_ttl: timedelta
    duplicate_detection_window: timedelta
    dead_lettering_on_expiration: bool


def load_queue_specs(path: Path = QUEUES_FILE) -> dict[str, QueueSpec]:
    """Read the queue definitions; an error names the queue and the field."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    specs: dict[str, QueueSpec] = {}
    for index, entry in enumerate(raw["queues"]):
        where = f"{path.name}: queues[{index}]"
        try:
            spec = QueueSpec(
                name=entry["name"],
                purpose=entry["purpose"],
                requires_session=bool(entry["requiresSession"]),
                max_delivery_count=int(entry["maxDeliveryCount"]),
                lock_duration=parse_iso_duration(entry["lockDuration"]),
                default_message_ttl=parse_iso_duration(entry["defaultMessageTimeToLive"]),
                duplicate_detection_window=parse_iso_duration(entry["duplicateDetectionHistoryTimeWindow"]),
                dead_lettering_on_expiration=bool(entry["deadLetteringOnMessageExpiration"]),
            )
        except KeyError as missing:
            raise ValueError(f"{where}: missing field {missing}") from None
        except ValueError as bad:
            raise ValueError(f"{where}: {bad}") from None
        if spec.name in specs:
            raise ValueError(f"{where}: queue {spec.name!r} defined twice")
        specs[spec.name] = spec
    return specs


# SIGNALBOX_QUEUES_FILE points at another definition (tests use short lock durations).
QUEUES: dict[str, QueueSpec] = load_queue_specs(Path(os.environ.get("SIGNALBOX_QUEUES_FILE") or QUEUES_FILE))

TRAIN = "train"
POLL_RUN = "poll-run"
EVALUATE = "evaluate"
PROMOTE = "promote"
DEPLOY = "deploy"

for _name in (TRAIN, POLL_RUN, EVALUATE, PROMOTE, DEPLOY):
    if _name not in QUEUES:
        raise ValueError(f"{QUEUES_FILE.name}: queue {_name!r} is used by the code but not defined")
