"""A FunctionApp for the local host's own tests: records what each trigger saw.

Each invocation appends a JSON line to $TEST_RECORD_FILE. Service Bus bodies are JSON
instructions: {"id": ..., "sleep": seconds, "fail": bool}.
"""

import json
import os
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
_lock = threading.Lock()


def _record(**fields: object) -> None:
    with _lock, open(os.environ["TEST_RECORD_FILE"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"t": time.time(), "pid": os.getpid(), **fields}) + "\n")


def _work(message: func.ServiceBusMessage, trigger: str) -> None:
    body = json.loads(message.get_body())
    _record(
        trigger=trigger,
        event="start",
        id=body["id"],
        session=message.session_id,
        delivery=message.delivery_count,
        message_id=message.message_id,
    )
    time.sleep(float(body.get("sleep", 0)))
    if body.get("fail"):
        raise RuntimeError(f"instructed to fail: {body['id']}")
    _record(trigger=trigger, event="end", id=body["id"], session=message.session_id, delivery=message.delivery_count)


@app.service_bus_queue_trigger(arg_name="message", queue_name="%WORK_QUEUE%", connection="ServiceBusConnection")
def work(message: func.ServiceBusMessage) -> None:
    _work(message, "work")


@app.service_bus_queue_trigger(
    arg_name="message", queue_name="promote", connection="ServiceBusConnection", is_sessions_enabled=True
)
def ordered(message: func.ServiceBusMessage) -> None:
    _work(message, "ordered")


@app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
def tick(timer: func.TimerRequest) -> None:
    _record(trigger="tick", event="fired", past_due=timer.past_due)


@app.route(route="items/{id:int}", methods=["GET", "POST"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"id": int(req.route_params["id"]), "method": req.method, "q": req.params.get("q")}),
        mimetype="application/json",
    )


@app.route(route="open", auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> str:
    return "open"


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret internals must not leak")


@app.event_grid_trigger(arg_name="event")
def grid(event: func.EventGridEvent) -> None:
    # The worker binds a CloudEvent on a CloudEvents subscription, whatever this annotation says (and it
    # must be one class: the worker refuses to load a Union, which check_input_type_annotation rejects).
    data = event.get_json()
    kind = event.type if isinstance(event, func.CloudEvent) else event.event_type
    _record(trigger="grid", event="got", id=event.id, type=kind, bound=type(event).__name__)
    if isinstance(data, dict) and data.get("fail"):
        raise RuntimeError("grid failure")
