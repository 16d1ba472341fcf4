"""Every hop logs its lifecycle ids, and the traces of one lifecycle link across queues."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import observability
from shared.adapters.local.bus import to_message
from shared.contracts import Envelope, EvaluateVersion, TrainModel

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    observability.install()
    yield


def test_log_records_inside_a_hop_carry_the_lifecycle_ids(caplog):
    envelope = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="c", environment="dev")
    with caplog.at_level(logging.INFO, logger="signalbox"):
        with observability.hop("train", envelope):
            logging.getLogger("signalbox.handlers").info("launching")
        logging.getLogger("signalbox").info("outside")
    inside, outside = caplog.records[-2:]
    assert (inside.correlation_id, inside.message_id, inside.hop, inside.model_name) == (
        envelope.correlation_id,
        envelope.message_id,
        "train",
        "m",
    )
    assert outside.correlation_id == "-"


def test_the_next_hop_continues_the_trace_through_the_message():
    EXPORTER.clear()
    first = Envelope.start(TrainModel(model_name="m", reason="landing"), cause="c", environment="dev")
    with observability.hop("train", first):
        second = first.follow(EvaluateVersion(model_name="m", version="1"))
        message = to_message(second)  # what the bus sends carries the trace context
    assert observability.TRACEPARENT in message.application_properties
    with observability.hop("evaluate", second, message.application_properties):
        pass
    train_span, evaluate_span = EXPORTER.get_finished_spans()
    assert evaluate_span.context.trace_id == train_span.context.trace_id
    assert evaluate_span.parent is not None and evaluate_span.parent.span_id == train_span.context.span_id
    assert evaluate_span.attributes["signalbox.correlation_id"] == first.correlation_id


def test_a_failing_hop_marks_its_span_as_an_error():
    EXPORTER.clear()
    envelope = Envelope.start(TrainModel(model_name="m", reason="drift"), cause="x", environment="dev")
    with pytest.raises(RuntimeError), observability.hop("train", envelope):
        raise RuntimeError("boom")
    (span,) = EXPORTER.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
