"""What every handler module shares: opening a lifecycle, looking up a model, the challenger alias."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import domain
from shared.contracts import Envelope
from shared.errors import UnknownModel

if TYPE_CHECKING:
    from shared.catalogue import ModelEntry
    from shared.services import Services

log = logging.getLogger("signalbox")


def start(svc: Services, command: object, cause: str, environment: str | None = None) -> Envelope:
    """The first command of a lifecycle, caused by ``cause``, in the environment given or configured."""
    return Envelope.start(command, cause=cause, environment=environment or svc.settings.environment, now=svc.clock())


def known_model(svc: Services, name: str) -> ModelEntry | None:
    """The catalogue entry, or None (logged) for a model Signalbox does not manage."""
    try:
        return svc.catalogue.get(name)
    except UnknownModel as exc:
        log.warning("ignored: %s", exc)
        return None


def drop_challenger(svc: Services, model_name: str, version: str) -> bool:
    """Remove the challenger alias if it points at this version; whether it did."""
    if svc.registry.alias_version(model_name, domain.CHALLENGER) == version:
        svc.registry.delete_alias(model_name, domain.CHALLENGER)
        return True
    return False
