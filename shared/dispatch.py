"""Run one queue message through its pipeline handler; retry transient failures later, with backoff.

Service Bus has no backoff of its own for Functions triggers: an abandoned message comes back at
once, and ``maxDeliveryCount`` is spent in well under a second. So a ``TransientError`` is not
abandoned: the same command is sent again, scheduled ``retry_delay`` later, with its retry count,
and the original completes. After ``SIGNALBOX_RETRY_MAX_ATTEMPTS`` retries the failure becomes a
``PermanentError`` that dead-letters with the last error as its reason.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared import domain, observability
from shared.contracts import parse_envelope
from shared.domain import Outcome
from shared.errors import PermanentError, TransientError
from shared.handlers import PIPELINE

if TYPE_CHECKING:
    from shared.contracts import Envelope
    from shared.services import Services

log = logging.getLogger("signalbox.dispatch")


def run_command(queue: str, body: bytes | str, properties: Mapping[str, object], svc: Services) -> object:
    """Parse the queue message (``ContractError`` naming the field) and run the queue's handler."""
    envelope = parse_envelope(body, queue=queue)
    with observability.hop(queue, envelope, properties):
        try:
            return PIPELINE[queue](envelope, svc)
        except TransientError as exc:
            return retry_later(envelope, exc, svc)


def retry_later(envelope: Envelope, error: TransientError, svc: Services) -> Outcome:
    """Send the command again after a backoff, or give up (``PermanentError``) after the last retry."""
    settings = svc.settings
    retry = envelope.retry + 1
    if retry > settings.retry_max_attempts:
        raise PermanentError(
            f"{envelope.command.kind} gave up after {envelope.retry} retries of a transient failure: {error}"
        ) from error
    spread = random.random()  # noqa: S311 - jitter, not a secret
    delay = domain.retry_delay(retry, settings.retry_initial_seconds, settings.retry_max_seconds, spread)
    svc.bus.send(envelope.model_copy(update={"retry": retry}), scheduled_at=svc.clock() + delay)
    log.warning(
        "%s of %s: transient failure, retry %d of %d in %.0f s: %s",
        envelope.command.kind,
        envelope.command.model_name,
        retry,
        settings.retry_max_attempts,
        delay.total_seconds(),
        error,
    )
    return Outcome.RETRYING
