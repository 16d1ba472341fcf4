"""A FunctionApp for the Event Grid dead-letter tests: the operations blueprint and a failing landing_events.

``landing_events`` (an Event Grid trigger, named as the real one so the subscription mapping holds)
appends a JSON line to $TEST_RECORD_FILE per invocation and raises while the file $TEST_FAIL_FLAG
exists — "fixing the cause" is deleting the flag file. A raise is a 500 to Event Grid, which retries.
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


@app.event_grid_trigger(arg_name="event")
def landing_events(event: func.EventGridEvent) -> None:
    _record(event="start", id=event.id, type=event.event_type, subject=event.subject)
    flag = os.environ.get("TEST_FAIL_FLAG")
    if flag and Path(flag).exists():
        raise RuntimeError(f"the cause is not fixed yet: {event.id}")
    _record(event="end", id=event.id, type=event.event_type, subject=event.subject)
