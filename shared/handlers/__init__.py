"""Handlers: one plain function per inbound event or command, over the ports in ``Services``.

Ingress handlers (``ingress``) turn an authenticated event into exactly one command per cause;
pipeline handlers (``training``, ``evaluation``, ``deployment``) do one step of the lifecycle and
send the next command. Every step is idempotent: a redelivered message finds the registry
already moved and does nothing. ``PIPELINE`` maps each queue to its handler; the Service Bus
triggers and the tests share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from shared import queues
from shared.handlers.deployment import deploy, smoke_frame
from shared.handlers.evaluation import evaluate, promote
from shared.handlers.ingress import (
    code_pushed,
    drift_alert,
    drift_detected,
    job_notified,
    land_blob,
    new_version,
    refuse_event,
    request_approval_decision,
    run_finished,
    workspace_event,
)
from shared.handlers.reconcile import reconcile, reconcile_command
from shared.handlers.training import poll_run, train

if TYPE_CHECKING:
    from shared.contracts import Envelope
    from shared.services import Services

PipelineHandler = Callable[["Envelope", "Services"], object]


def promote_queue(envelope: Envelope, svc: Services) -> object:
    """The promote queue carries promotions and, in the same model session, reconciliation sweeps."""
    if envelope.command.kind == "reconcile":
        return reconcile_command(envelope, svc)
    return promote(envelope, svc)


PIPELINE: Mapping[str, PipelineHandler] = {
    queues.TRAIN: train,
    queues.POLL_RUN: poll_run,
    queues.EVALUATE: evaluate,
    queues.PROMOTE: promote_queue,
    queues.DEPLOY: deploy,
}

__all__ = [
    "PIPELINE",
    "PipelineHandler",
    "code_pushed",
    "deploy",
    "drift_alert",
    "drift_detected",
    "evaluate",
    "job_notified",
    "land_blob",
    "new_version",
    "poll_run",
    "promote",
    "promote_queue",
    "reconcile",
    "reconcile_command",
    "refuse_event",
    "request_approval_decision",
    "run_finished",
    "smoke_frame",
    "train",
    "workspace_event",
]
