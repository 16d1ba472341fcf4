"""Pipeline: one Service Bus trigger per queue, each running one handler.

An exception abandons the message (the Python worker's behaviour); after the queue's
MaxDeliveryCount it is dead-lettered with the error. Promote and deploy use sessions
(session id = model name) so one model's stage changes never interleave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func

from shared import queues, runtime

if TYPE_CHECKING:
    from shared.contracts import Envelope

bp = func.Blueprint()

CONNECTION = "ServiceBusConnection"


def _envelope(message: func.ServiceBusMessage, queue: str) -> Envelope:
    """The command in a queue message; ``ContractError`` naming the field when it is invalid."""
    from shared.contracts import parse_envelope

    return parse_envelope(message.get_body(), queue=queue)


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.TRAIN, connection=CONNECTION)
def train(message: func.ServiceBusMessage) -> None:
    """Launch training (or a rule-based model's scoring job)."""
    from shared import handlers, observability

    envelope = _envelope(message, queues.TRAIN)
    with observability.hop("train", envelope, message.application_properties):
        handlers.train(envelope, runtime.services())


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.POLL_RUN, connection=CONNECTION)
def poll_run(message: func.ServiceBusMessage) -> None:
    """Check a running job; reschedule or move on."""
    from shared import handlers, observability

    envelope = _envelope(message, queues.POLL_RUN)
    with observability.hop("poll_run", envelope, message.application_properties):
        handlers.poll_run(envelope, runtime.services())


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.EVALUATE, connection=CONNECTION)
def evaluate(message: func.ServiceBusMessage) -> None:
    """Challenger against champion."""
    from shared import handlers, observability

    envelope = _envelope(message, queues.EVALUATE)
    with observability.hop("evaluate", envelope, message.application_properties):
        handlers.evaluate(envelope, runtime.services())


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name=queues.PROMOTE, connection=CONNECTION, is_sessions_enabled=True
)
def promote(message: func.ServiceBusMessage) -> None:
    """Stage tags and approval, one model at a time."""
    from shared import handlers, observability

    envelope = _envelope(message, queues.PROMOTE)
    with observability.hop("promote", envelope, message.application_properties):
        handlers.promote(envelope, runtime.services())


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name=queues.DEPLOY, connection=CONNECTION, is_sessions_enabled=True
)
def deploy(message: func.ServiceBusMessage) -> None:
    """Blue/green deployment with smoke test and rollback, one model at a time."""
    from shared import handlers, observability

    envelope = _envelope(message, queues.DEPLOY)
    with observability.hop("deploy", envelope, message.application_properties):
        handlers.deploy(envelope, runtime.services())
