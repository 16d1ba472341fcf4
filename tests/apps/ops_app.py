"""A FunctionApp for the dead-letter tests: the operations blueprint and a poisonable queue trigger.

``work`` appends a JSON line to $TEST_RECORD_FILE per invocation (with the message's
``signalbox.replay_count``), and fails while the file $TEST_FAIL_FLAG exists or when the
body says ``"fail": true`` — "fixing the cause" is deleting the flag file.
"""

import json
import os
import threading
import time
from pathlib import Path

import azure.functions as func

from functions import operations

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(operations.bp)
_lock = threading.Lock()


def _record(**fields: object) -> None:
    with _lock, open(os.environ["TEST_RECORD_FILE"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"t": time.time(), **fields}) + "\n")


@app.service_bus_queue_trigger(arg_name="message", queue_name="%WORK_QUEUE%", connection="ServiceBusConnection")
def work(message: func.ServiceBusMessage) -> None:
    body = json.loads(message.get_body())
    properties = message.application_properties or {}
    common = {
        "id": body["id"],
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "delivery": message.delivery_count,
        "replay_count": properties.get("signalbox.replay_count", 0),
    }
    _record(event="start", **common)
    flag = os.environ.get("TEST_FAIL_FLAG")
    if body.get("fail") or (flag and Path(flag).exists()):
        raise RuntimeError(f"the cause is not fixed yet: {body['id']}")
    _record(event="end", **common)


@app.route(route="ping", methods=["GET"])
def ping(req: func.HttpRequest) -> str:
    """A function-key endpoint, to tell the function key from the admin key."""
    return "pong"
