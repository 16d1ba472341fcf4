"""Structured logs and traces that follow one lifecycle across every hop.

Every log record carries ``correlation_id``, ``message_id`` and ``hop`` (a record factory
reads them from context variables, so any logger works, including the Functions worker's
handler, which sends record attributes to Application Insights as custom dimensions).
Each hop runs in an OpenTelemetry span; the W3C ``traceparent`` travels in the message's
application properties, so the spans of one lifecycle form one trace. With
``APPLICATIONINSIGHTS_CONNECTION_STRING`` set, the Azure Monitor exporter sends them;
without it nothing is exported.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.contracts import Envelope

TRACEPARENT = "traceparent"
_FIELDS = ("correlation_id", "message_id", "hop", "model_name")
_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "signalbox_log_context", default=None
)
_installed = threading.Lock()
_done = False

log = logging.getLogger("signalbox.observability")


def install() -> None:
    """Add the lifecycle fields to every log record; start the Azure Monitor exporter if configured."""
    global _done
    with _installed:
        if _done:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            fields = _context.get() or {}
            for name in _FIELDS:
                if not hasattr(record, name):
                    setattr(record, name, fields.get(name, "-"))
            return record

        logging.setLogRecordFactory(factory)
        if os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(logger_name="signalbox")
            log.info("Azure Monitor exporter configured")
        _done = True


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to put on an outgoing message."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


@contextlib.contextmanager
def hop(name: str, envelope: Envelope, properties: Mapping[str, object] | None = None) -> Iterator[None]:
    """Run one hop: log fields from the envelope and a span continuing the sender's trace."""
    fields = {
        "correlation_id": envelope.correlation_id,
        "message_id": envelope.message_id,
        "hop": name,
        "model_name": envelope.command.model_name,
    }
    token = _context.set(fields)
    try:
        with _span(name, envelope, properties or {}):
            yield
    finally:
        _context.reset(token)


@contextlib.contextmanager
def _span(name: str, envelope: Envelope, properties: Mapping[str, object]) -> Iterator[None]:
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        yield
        return
    parent = str(properties.get(TRACEPARENT) or properties.get("Diagnostic-Id") or "")
    context = propagate.extract({TRACEPARENT: parent}) if parent else None
    tracer = trace.get_tracer("signalbox")
    attributes = {
        "signalbox.hop": name,
        "signalbox.correlation_id": envelope.correlation_id,
        "messaging.message.id": envelope.message_id,
        "signalbox.model": envelope.command.model_name,
        "signalbox.environment": envelope.environment,
    }
    with tracer.start_as_current_span(f"signalbox {name}", context=context, attributes=attributes) as span:
        try:
            yield
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
