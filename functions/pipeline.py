"""Pipeline: one Service Bus trigger per queue, each running that queue's handler (``shared.handlers.PIPELINE``).

A transient failure is retried later by a scheduled re-send (``shared.dispatch``); any other
exception abandons the message, and after the queue's MaxDeliveryCount it is dead-lettered with
the error. Promote and deploy use sessions (session id = model name) so one model's stage
changes never interleave.
"""

from __future__ import annotations

import azure.functions as func

from shared import queues, runtime

bp = func.Blueprint()

CONNECTION = "ServiceBusConnection"


def _run(queue: str, message: func.ServiceBusMessage) -> None:
    from shared.dispatch import run_command

    run_command(queue, message.get_body(), message.application_properties, runtime.services())


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.TRAIN, connection=CONNECTION)
def train(message: func.ServiceBusMessage) -> None:
    """Launch training (or a rule-based model's scoring job)."""
    _run(queues.TRAIN, message)


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.POLL_RUN, connection=CONNECTION)
def poll_run(message: func.ServiceBusMessage) -> None:
    """Check a running job; reschedule or move on."""
    _run(queues.POLL_RUN, message)


@bp.service_bus_queue_trigger(arg_name="message", queue_name=queues.EVALUATE, connection=CONNECTION)
def evaluate(message: func.ServiceBusMessage) -> None:
    """Challenger against champion."""
    _run(queues.EVALUATE, message)


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name=queues.PROMOTE, connection=CONNECTION, is_sessions_enabled=True
)
def promote(message: func.ServiceBusMessage) -> None:
    """Stage tags and approval, one model at a time."""
    _run(queues.PROMOTE, message)


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name=queues.DEPLOY, connection=CONNECTION, is_sessions_enabled=True
)
def deploy(message: func.ServiceBusMessage) -> None:
    """Blue/green deployment with smoke test and rollback, one model at a time."""
    _run(queues.DEPLOY, message)
