"""The Databricks adapters drive the real databricks-sdk against a local fake of the REST API.

The fake (a ThreadingHTTPServer on 127.0.0.1) records every request the SDK sends and answers
with scripted responses shaped like the documented Jobs API 2.2 and Serving Endpoints API 2.0
ones, so these tests check the wire: paths, job parameters, idempotency tokens, served entities
and traffic, and how each error status is classified.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import domain, handlers
from shared.adapters.databricks.compute import DatabricksCompute, retry_key
from shared.adapters.databricks.serving import (
    DatabricksServing,
    EntitySizing,
    check_endpoint_name,
    served_entity_name,
    sizing_from_catalogue,
)
from shared.adapters.local.net import free_port
from shared.catalogue import load_catalogue
from shared.contracts import DeployVersion, Envelope
from shared.errors import PermanentError, TransientError
from shared.ports import Deployment, JobRequest, ScoringFrame
from tests.fakes import FakeBus, FakeRegistry, services

TOKEN = "dapi-test-5f3c9a1e7b2d4c6e8f0a"
JOB = 123
RUN = 456
TASK_RUN = 457
MODEL = "iris-classifier"
ENDPOINT = "iris"
REPO = Path(__file__).resolve().parents[2]

Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Responder = Callable[["Call"], Reply]


@dataclass(frozen=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


class FakeDatabricks:
    """A local Databricks REST API: scripted replies per (method, path), every request recorded."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._scripts: dict[tuple[str, str], list[Reply] | Responder] = {}
        self._lock = threading.Lock()
        # Modern workspaces answer the SDK's host-metadata probe made while it builds its config.
        self.reply("GET", "/.well-known/databricks-config", (200, {"workspace_id": "1234567890"}))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = Call(
                    method=self.command,
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    body=json.loads(raw) if raw else None,
                    headers=dict(self.headers.items()),
                )
                reply = fake._answer(call)
                status, body = reply[0], reply[1]
                headers = reply[2] if len(reply) > 2 else {}  # type: ignore[misc]
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, method: str, path: str, *replies: Reply | Responder) -> None:
        """Answer (method, path) with these replies in turn, the last one from then on; or with a function."""
        if len(replies) == 1 and callable(replies[0]):
            self._scripts[(method, path)] = replies[0]
        else:
            self._scripts[(method, path)] = list(replies)  # type: ignore[arg-type]

    def _answer(self, call: Call) -> Reply:
        with self._lock:
            self.calls.append(call)
            script = self._scripts.get((call.method, call.path))
            if script is None:
                return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{call.path}'"}
            if callable(script):
                return script(call)
            return script.pop(0) if len(script) > 1 else script[0]

    def sent(self, method: str, path: str) -> list[Call]:
        """The requests received for (method, path), oldest first."""
        return [c for c in self.calls if c.method == method and c.path == path]

    def api_calls(self) -> list[tuple[str, str]]:
        """Every request but the SDK's host-metadata probe, as (method, path)."""
        return [(c.method, c.path) for c in self.calls if not c.path.startswith("/.well-known/")]


@pytest.fixture(autouse=True)
def _isolated_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient Databricks or proxy configuration reaches the SDK."""
    import os

    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_")) or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks()
    yield server
    server.close()


@pytest.fixture
def compute(fake: FakeDatabricks) -> DatabricksCompute:
    # A one-second retry budget: the SDK's own 429/503 retries end fast in tests.
    return DatabricksCompute(host=fake.url, token=TOKEN, retry_timeout_seconds=1)


@pytest.fixture
def serving(fake: FakeDatabricks) -> DatabricksServing:
    return DatabricksServing(host=fake.url, token=TOKEN, retry_timeout_seconds=1)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return status, {"error_code": code, "message": message}, headers or {}


# -- Jobs API shapes -----------------------------------------------------------------------------

RUN_NOW = "/api/2.2/jobs/run-now"
RUNS_GET = "/api/2.2/jobs/runs/get"
RUNS_OUTPUT = "/api/2.2/jobs/runs/get-output"
RUNS_CANCEL = "/api/2.2/jobs/runs/cancel"
JOBS_LIST = "/api/2.2/jobs/list"


def job_request(reference: str = str(JOB), **changes: Any) -> JobRequest:
    fields: dict[str, Any] = {
        "model_name": MODEL,
        "purpose": "train",
        "job_reference": reference,
        "data_uri": "abfss://landing@acct.dfs.core.windows.net/iris/batch.csv",
        "parameters": {"max_iter": "200", "model_name": "overridden-by-signalbox"},
        "tags": {
            domain.CORRELATION_ID: "corr-1",
            domain.ENVIRONMENT: "staging",
            "signalbox.reason": "landing",
            "owner team": "ml",
        },
        "idempotency_key": "7f1d2c3b-0000-5000-8000-00000000abcd",
    }
    fields.update(changes)
    return JobRequest(**fields)


def task(
    key: str, run_id: int, *, lifecycle: str = "TERMINATED", result: str | None = "SUCCESS", end: int = 2
) -> dict[str, Any]:
    v2 = {"TERMINATED": "TERMINATED", "RUNNING": "RUNNING", "PENDING": "PENDING"}[lifecycle]
    body: dict[str, Any] = {
        "task_key": key,
        "run_id": run_id,
        "start_time": 1,
        "end_time": end if lifecycle == "TERMINATED" else 0,
        "state": {"life_cycle_state": lifecycle, "state_message": ""},
        "status": {"state": v2},
    }
    if result:
        body["state"]["result_state"] = result
        code = {"SUCCESS": "SUCCESS", "FAILED": "RUN_EXECUTION_ERROR", "CANCELED": "USER_CANCELED"}[result]
        body["status"]["termination_details"] = {
            "code": code,
            "type": "SUCCESS" if code == "SUCCESS" else "CLIENT_ERROR",
        }
    return body


def run(
    status: str,
    *,
    code: str | None = None,
    message: str = "",
    lifecycle: str | None = None,
    result: str | None = None,
    tasks: list[dict[str, Any]] | None = None,
    queue_message: str | None = None,
) -> dict[str, Any]:
    """A ``runs/get`` answer with both the 2.2 ``status`` and the deprecated ``state``."""
    body: dict[str, Any] = {
        "job_id": JOB,
        "run_id": RUN,
        "number_in_job": RUN,
        "run_name": "train iris",
        "run_page_url": f"https://adb-1.azuredatabricks.net/?o=1#job/{JOB}/run/{RUN}",
        "state": {"life_cycle_state": lifecycle or status, "state_message": message},
        "status": {"state": status},
        "tasks": tasks if tasks is not None else [task("train", TASK_RUN)],
    }
    if result:
        body["state"]["result_state"] = result
    if code:
        body["status"]["termination_details"] = {"code": code, "message": message, "type": "CLIENT_ERROR"}
    if queue_message:
        body["status"]["queue_details"] = {"code": "ACTIVE_RUNS_LIMIT_REACHED", "message": queue_message}
    return body


def notebook_exit(result: str | None) -> dict[str, Any]:
    """A ``runs/get-output`` answer for a notebook task."""
    body: dict[str, Any] = {"metadata": {"run_id": TASK_RUN, "job_id": JOB}, "notebook_output": {}}
    if result is not None:
        body["notebook_output"] = {"result": result, "truncated": False}
    return body


# -- compute: launch ---------------------------------------------------------------------------------


def test_launch_by_job_id_sends_parameters_tags_and_idempotency_token(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN, "number_in_job": RUN}))

    assert compute.launch(job_request()) == str(RUN)

    assert fake.api_calls() == [("POST", RUN_NOW)]  # no lookup for an id, and no waiting on the run
    (call,) = fake.sent("POST", RUN_NOW)
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.body == {
        "job_id": JOB,
        "idempotency_token": "7f1d2c3b-0000-5000-8000-00000000abcd",
        "job_parameters": {
            "max_iter": "200",
            "model_name": MODEL,  # Signalbox's own values win over a catalogue parameter of the same name
            "data_uri": "abfss://landing@acct.dfs.core.windows.net/iris/batch.csv",
            "signalbox.correlation_id": "corr-1",
            "signalbox.environment": "staging",
            "signalbox.reason": "landing",
            "signalbox.owner_team": "ml",  # prefixed, and made a valid parameter name
        },
    }


def test_launch_without_data_or_key_omits_them_and_long_keys_are_hashed(
    fake: FakeDatabricks, compute: DatabricksCompute
):
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN}))
    compute.launch(job_request(data_uri=None, idempotency_key=None, tags={}, parameters={}))
    compute.launch(job_request(idempotency_key="k" * 70))
    compute.launch(job_request(idempotency_key="k" * 64 + "other"))

    first, long_key, other_long_key = (c.body for c in fake.sent("POST", RUN_NOW))
    assert first == {"job_id": JOB, "job_parameters": {"model_name": MODEL}}
    assert re.fullmatch(r"[0-9a-f]{64}", long_key["idempotency_token"])
    assert long_key["idempotency_token"] != other_long_key["idempotency_token"]  # no collapse by truncation


def test_a_catalogue_parameter_that_cannot_be_a_job_parameter_is_refused_before_any_request(
    fake: FakeDatabricks, compute: DatabricksCompute
):
    with pytest.raises(PermanentError, match=r"training\.parameters: 'max iter'"):
        compute.launch(job_request(parameters={"max iter": "3"}))
    assert fake.api_calls() == []


def test_launch_by_name_resolves_exactly_one_job(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply(
        "GET",
        JOBS_LIST,
        (200, {"jobs": [{"job_id": 777, "settings": {"name": "Train Iris"}, "created_time": 1}], "has_more": False}),
    )
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN}))

    assert compute.launch(job_request("train iris")) == str(RUN)

    (lookup,) = fake.sent("GET", JOBS_LIST)
    assert lookup.query["name"] == "train iris"
    assert fake.sent("POST", RUN_NOW)[0].body["job_id"] == 777


def test_launch_by_name_with_no_match_names_the_job(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("GET", JOBS_LIST, (200, {"has_more": False}))
    with pytest.raises(PermanentError, match=r"no Databricks job named 'train iris'.*training.job"):
        compute.launch(job_request("train iris"))
    assert fake.sent("POST", RUN_NOW) == []


def test_launch_by_name_with_two_matches_asks_for_the_id(fake: FakeDatabricks, compute: DatabricksCompute):
    jobs = [{"job_id": 777, "settings": {"name": "train iris"}}, {"job_id": 778, "settings": {"name": "train iris"}}]
    fake.reply("GET", JOBS_LIST, (200, {"jobs": jobs, "has_more": False}))
    with pytest.raises(PermanentError, match=r"2 Databricks jobs are named 'train iris' \(ids 777, 778\)"):
        compute.launch(job_request("train iris"))
    assert fake.sent("POST", RUN_NOW) == []


# -- compute: status and cancel ------------------------------------------------------------------------


def test_a_run_goes_pending_running_succeeded_with_outputs_from_the_notebook_exit(
    fake: FakeDatabricks, compute: DatabricksCompute
):
    fake.reply(
        "GET",
        RUNS_GET,
        (200, run("QUEUED", lifecycle="QUEUED", queue_message="Queued: the job has 1 active run", tasks=[])),
        (200, run("RUNNING", tasks=[task("train", TASK_RUN, lifecycle="RUNNING", result=None)])),
        (
            200,
            run(
                "TERMINATED",
                code="SUCCESS",
                result="SUCCESS",
                tasks=[task("prepare", 455, end=1), task("train", TASK_RUN, end=5), task("notify", 458, end=3)],
            ),
        ),
    )
    exit_value = json.dumps({"mlflow_run_id": "a1b2c3", "model_version": 7, "note": None, "metrics": {"f1": 0.9}})
    fake.reply(
        "GET",
        RUNS_OUTPUT,
        lambda call: (200, notebook_exit(exit_value if call.query["run_id"] == str(TASK_RUN) else None)),
    )

    queued = compute.status(str(RUN))
    assert (queued.state, queued.message, queued.finished) == ("pending", "Queued: the job has 1 active run", False)
    assert compute.status(str(RUN)).state == "running"
    done = compute.status(str(RUN))

    assert done.state == "succeeded" and done.message is None
    assert done.outputs == {
        "mlflow_run_id": "a1b2c3",
        "model_version": "7",
        "metrics": '{"f1": 0.9}',
        "databricks_run_id": str(RUN),
    }
    assert [c.query["run_id"] for c in fake.sent("GET", RUNS_GET)] == [str(RUN)] * 3
    # The task that finished last is asked first: the parent run of a multi-task job has no output.
    assert [c.query["run_id"] for c in fake.sent("GET", RUNS_OUTPUT)] == [str(TASK_RUN)]


def test_a_run_without_an_exit_value_gives_only_its_databricks_run_id(fake: FakeDatabricks, compute: DatabricksCompute):
    # The deprecated ``state`` alone, as older workspaces answer.
    legacy = run("TERMINATED", result="SUCCESS", tasks=[])
    del legacy["status"]
    fake.reply("GET", RUNS_GET, (200, legacy))
    fake.reply("GET", RUNS_OUTPUT, (200, notebook_exit(None)))

    status = compute.status(str(RUN))

    assert (status.state, status.outputs) == ("succeeded", {"databricks_run_id": str(RUN)})
    assert fake.sent("GET", RUNS_OUTPUT)[0].query["run_id"] == str(RUN)  # a single-task run answers itself


def test_an_exit_value_that_is_not_json_is_reported(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("GET", RUNS_GET, (200, run("TERMINATED", code="SUCCESS", result="SUCCESS")))
    fake.reply("GET", RUNS_OUTPUT, (200, notebook_exit("done!")))
    status = compute.status(str(RUN))
    assert status.state == "succeeded" and status.outputs == {"databricks_run_id": str(RUN)}
    assert status.message is not None and "not a JSON object" in status.message


def test_a_failed_run_says_why_with_the_failed_tasks_error(fake: FakeDatabricks, compute: DatabricksCompute):
    message = "Task train failed with message: Workload failed, see run output for details."
    fake.reply(
        "GET",
        RUNS_GET,
        (
            200,
            run(
                "TERMINATED",
                code="RUN_EXECUTION_ERROR",
                message=message,
                lifecycle="TERMINATED",
                result="FAILED",
                tasks=[task("prepare", 455), task("train", TASK_RUN, result="FAILED")],
            ),
        ),
    )
    fake.reply(
        "GET",
        RUNS_OUTPUT,
        (200, {"error": "ValueError: the landed file has no rows", "error_trace": "Traceback ...", "metadata": {}}),
    )

    status = compute.status(str(RUN))

    assert status.state == "failed" and status.finished and not status.retryable  # the job's own failure
    assert status.message == f"RUN_EXECUTION_ERROR: {message}; task train: ValueError: the landed file has no rows"
    assert [c.query["run_id"] for c in fake.sent("GET", RUNS_OUTPUT)] == [str(TASK_RUN)]


CAPACITY_FAILURES = [
    # (termination code, termination type, deprecated life_cycle_state, message), as runs/get reports them
    (
        "MAX_CONCURRENT_RUNS_EXCEEDED",
        "CLIENT_ERROR",
        "SKIPPED",
        "Skipping this run because the limit of 1 maximum concurrent runs has been reached.",
    ),
    (
        "WORKSPACE_RUN_LIMIT_EXCEEDED",
        "CLIENT_ERROR",
        "SKIPPED",
        "The workspace has reached the quota for the maximum number of concurrent active runs.",
    ),
    ("CLOUD_FAILURE", "CLOUD_FAILURE", "INTERNAL_ERROR", "Azure VM quota exceeded for Standard_DS3_v2."),
    ("INTERNAL_ERROR", "INTERNAL_ERROR", "INTERNAL_ERROR", "An unexpected error occurred in the Jobs service."),
]


def capacity_run(code: str, kind: str, lifecycle: str, message: str) -> dict[str, Any]:
    body = run("TERMINATED", code=code, message=message, lifecycle=lifecycle, tasks=[])
    body["status"]["termination_details"]["type"] = kind
    return body


@pytest.mark.parametrize(("code", "kind", "lifecycle", "message"), CAPACITY_FAILURES)
def test_a_capacity_failure_is_failed_and_retryable(
    fake: FakeDatabricks, compute: DatabricksCompute, code: str, kind: str, lifecycle: str, message: str
):
    fake.reply("GET", RUNS_GET, (200, capacity_run(code, kind, lifecycle, message)))

    status = compute.status(str(RUN))

    assert status.state == "failed" and status.finished and status.retryable
    assert status.message == f"{code}: {message}"
    assert fake.sent("GET", RUNS_OUTPUT) == []  # nothing of the job ran: no task output to read


def test_a_capacity_failure_seen_through_the_deprecated_state_alone_is_retryable(
    fake: FakeDatabricks, compute: DatabricksCompute
):
    body = run("TERMINATED", lifecycle="INTERNAL_ERROR", message="Cluster launch failed: cloud provider error")
    del body["status"]  # an older API answer
    fake.reply("GET", RUNS_GET, (200, body))
    status = compute.status(str(RUN))
    assert status.state == "failed" and status.retryable
    assert status.message == "INTERNAL_ERROR: Cluster launch failed: cloud provider error"

    body = run("TERMINATED", lifecycle="TERMINATED", result="FAILED", message="Workload failed")
    del body["status"]
    fake.reply("GET", RUNS_GET, (200, body))
    assert not compute.status(str(RUN)).retryable


def test_a_relaunch_after_a_capacity_failure_starts_a_new_run(fake: FakeDatabricks, compute: DatabricksCompute):
    runs_by_token: dict[str, int] = {}

    def run_now(call: Call) -> Reply:
        # The documented idempotency: a token seen before returns its run, launching nothing.
        run_id = runs_by_token.setdefault(call.body["idempotency_token"], RUN + 2 * len(runs_by_token))
        return 200, {"run_id": run_id, "number_in_job": run_id}

    fake.reply("POST", RUN_NOW, run_now)
    request = job_request()
    assert compute.launch(request) == str(RUN)
    assert compute.launch(request) == str(RUN)  # a redelivery: the same (failed) run

    relaunch = job_request(idempotency_key=retry_key(request.idempotency_key or "", 1))
    assert compute.launch(relaunch) == str(RUN + 2)
    assert compute.launch(relaunch) == str(RUN + 2)  # the relaunch is itself idempotent
    assert compute.launch(job_request(idempotency_key=retry_key(request.idempotency_key or "", 2))) == str(RUN + 4)
    tokens = [c.body["idempotency_token"] for c in fake.sent("POST", RUN_NOW)]
    assert len(set(tokens)) == 3 and all(len(t) <= 64 for t in tokens)
    assert retry_key("k", 0) == "k"


def test_cancel_asks_databricks_then_the_run_reads_cancelled(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUNS_CANCEL, (200, {}))
    fake.reply(
        "GET",
        RUNS_GET,
        (200, run("TERMINATED", code="USER_CANCELED", message="Run cancelled by signalbox", result="CANCELED")),
    )

    compute.cancel(str(RUN))
    status = compute.status(str(RUN))

    assert fake.sent("POST", RUNS_CANCEL)[0].body == {"run_id": RUN}
    assert (status.state, status.message) == ("cancelled", "Run cancelled by signalbox")
    assert fake.sent("GET", RUNS_OUTPUT) == []


def test_a_run_id_that_is_not_a_databricks_one_is_refused(compute: DatabricksCompute):
    with pytest.raises(PermanentError, match="not a Databricks run id"):
        compute.status("local-abc")


# -- compute: errors ----------------------------------------------------------------------------------------


def test_429_is_transient_and_ends_quickly(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUN_NOW, error(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests", {"Retry-After": "1"}))
    began = time.monotonic()
    with pytest.raises(TransientError, match="throttled"):
        compute.launch(job_request())
    assert time.monotonic() - began < 5
    assert len(fake.sent("POST", RUN_NOW)) >= 1


@pytest.mark.parametrize(
    ("status", "code"), [(500, "INTERNAL_ERROR"), (503, "TEMPORARILY_UNAVAILABLE"), (504, "DEADLINE_EXCEEDED")]
)
def test_server_errors_are_transient(fake: FakeDatabricks, compute: DatabricksCompute, status: int, code: str):
    fake.reply("GET", RUNS_GET, error(status, code, "the jobs service is restarting", {"Retry-After": "0"}))
    began = time.monotonic()
    with pytest.raises(TransientError):
        compute.status(str(RUN))
    assert time.monotonic() - began < 5


def test_a_missing_job_is_permanent_and_names_the_job(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUN_NOW, error(404, "RESOURCE_DOES_NOT_EXIST", "Job 123 does not exist."))
    with pytest.raises(PermanentError, match=r"Databricks job 123 not found: check training.job in the catalogue"):
        compute.launch(job_request())
    # The same as a 400 INVALID_PARAMETER_VALUE, which is how run-now says it.
    fake.reply("POST", RUN_NOW, error(400, "INVALID_PARAMETER_VALUE", "Job 123 does not exist."))
    with pytest.raises(PermanentError, match=r"Databricks job 123 not found"):
        compute.launch(job_request())


def test_a_missing_run_is_permanent(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("GET", RUNS_GET, error(400, "INVALID_PARAMETER_VALUE", "Run 456 does not exist."))
    with pytest.raises(PermanentError, match="Databricks run 456 not found"):
        compute.status(str(RUN))


def test_403_and_401_are_permanent_and_say_what_to_fix(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUN_NOW, error(403, "PERMISSION_DENIED", "User does not have Manage Run permissions on job 123"))
    with pytest.raises(PermanentError, match=r"permission denied.*Manage Run"):
        compute.launch(job_request())
    fake.reply("POST", RUN_NOW, error(401, "UNAUTHENTICATED", "Invalid access token."))
    with pytest.raises(PermanentError, match=r"rejected the credentials.*DATABRICKS_TOKEN"):
        compute.launch(job_request())


def test_an_unreachable_workspace_is_transient(monkeypatch: pytest.MonkeyPatch):
    port = free_port()  # nothing listens there
    compute = DatabricksCompute(host=f"http://127.0.0.1:{port}", token=TOKEN, retry_timeout_seconds=1)
    began = time.monotonic()
    with pytest.raises(TransientError, match="unreachable"):
        compute.status(str(RUN))
    assert time.monotonic() - began < 10


def test_the_token_never_reaches_logs_or_error_texts(fake: FakeDatabricks, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)  # the SDK's request logs included
    compute = DatabricksCompute(host=fake.url, token=TOKEN, retry_timeout_seconds=1)
    serving = DatabricksServing(host=fake.url, token=TOKEN, retry_timeout_seconds=1)
    fake.reply("POST", RUN_NOW, (200, {"run_id": RUN}))
    compute.launch(job_request())
    failures: list[BaseException] = []
    for reply in (
        error(401, "UNAUTHENTICATED", "Invalid access token."),
        error(403, "PERMISSION_DENIED", "no access"),
        error(404, "RESOURCE_DOES_NOT_EXIST", "Run 456 does not exist."),
        error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", {"Retry-After": "0"}),
        error(500, "INTERNAL_ERROR", "boom"),
    ):
        fake.reply("GET", RUNS_GET, reply)
        fake.reply("GET", f"/api/2.0/serving-endpoints/{ENDPOINT}", reply)
        for action in (lambda: compute.status(str(RUN)), lambda: serving.start(ENDPOINT, MODEL, "2")):
            with pytest.raises((TransientError, PermanentError)) as caught:
                action()
            failures.append(caught.value)

    assert fake.sent("POST", RUN_NOW)[0].headers["Authorization"] == f"Bearer {TOKEN}"  # it was used
    assert len(failures) == 10
    for failure in failures:
        assert TOKEN not in str(failure) and TOKEN not in repr(failure)
        assert TOKEN not in str(failure.__cause__)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert TOKEN not in logged and TOKEN[-8:] not in logged


def test_a_credential_echoed_by_the_server_is_scrubbed_from_the_error(fake: FakeDatabricks, compute: DatabricksCompute):
    fake.reply("POST", RUN_NOW, error(400, "INVALID_PARAMETER_VALUE", f"bad request from {TOKEN}"))
    with pytest.raises(PermanentError) as echoed:
        compute.launch(job_request())
    assert TOKEN not in str(echoed.value) and "bad request from ***" in str(echoed.value)


# -- Serving endpoint shapes -------------------------------------------------------------------------------------

ENDPOINTS = "/api/2.0/serving-endpoints"
GET_ENDPOINT = f"{ENDPOINTS}/{ENDPOINT}"
CONFIG = f"{ENDPOINTS}/{ENDPOINT}/config"


def entity(version: str, *, state: str = "DEPLOYMENT_READY", message: str = "", model: str = MODEL) -> dict[str, Any]:
    """A served entity as ``GET /api/2.0/serving-endpoints/{name}`` shows it."""
    return {
        "name": f"{model}-{version}",
        "entity_name": model,
        "entity_version": version,
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
        "creator": "signalbox@example.com",
        "creation_timestamp": 1700000000000,
        "state": {"deployment": state, "deployment_state_message": message},
    }


def endpoint(
    entities: list[dict[str, Any]] | None,
    routes: dict[str, int] | None = None,
    *,
    update: str = "NOT_UPDATING",
    pending: list[dict[str, Any]] | None = None,
    pending_routes: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": ENDPOINT,
        "id": "0123456789abcdef",
        "creator": "signalbox@example.com",
        "state": {"ready": "READY" if entities else "NOT_READY", "config_update": update},
    }
    if entities is not None:
        body["config"] = {
            "config_version": 3,
            "served_entities": entities,
            "traffic_config": {
                "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in (routes or {}).items()]
            },
        }
    if pending is not None:
        body["pending_config"] = {
            "config_version": 4,
            "start_time": 1700000100000,
            "served_entities": pending,
            "traffic_config": {
                "routes": [{"served_model_name": n, "traffic_percentage": p} for n, p in (pending_routes or {}).items()]
            },
        }
    return body


def as_input(version: str, model: str = MODEL) -> dict[str, Any]:
    """A served entity as the adapter sends it back in a config update (no state or creator)."""
    return {
        "name": f"{model}-{version}",
        "entity_name": model,
        "entity_version": version,
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
    }


def routes_of(body: dict[str, Any]) -> dict[str, int]:
    return {r["served_model_name"]: r["traffic_percentage"] for r in body["traffic_config"]["routes"]}


def candidate(version: str, fake: FakeDatabricks) -> Deployment:
    name = f"{MODEL}-{version}"
    return Deployment(
        ENDPOINT, MODEL, version, name, f"{fake.url}/serving-endpoints/{ENDPOINT}/served-models/{name}/invocations"
    )


NOT_FOUND = error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{ENDPOINT}' does not exist.")


# -- serving -------------------------------------------------------------------------------------------------------


def test_served_entity_names_keep_to_the_allowed_characters():
    assert served_entity_name("iris-classifier", "3") == "iris-classifier-3"
    assert served_entity_name("main.ml.churn model", "12") == "main-ml-churn-model-12"
    long = served_entity_name("m" * 80, "123")
    assert len(long) == 63 and long.endswith("-123")


def test_start_on_a_new_endpoint_creates_it_with_all_traffic_on_the_version(
    fake: FakeDatabricks, serving: DatabricksServing
):
    fake.reply("GET", GET_ENDPOINT, NOT_FOUND)
    fake.reply(
        "POST",
        ENDPOINTS,
        (200, endpoint(None, update="IN_PROGRESS", pending=[entity("1", state="DEPLOYMENT_CREATING")])),
    )

    assert serving.current(ENDPOINT) is None
    deployment = serving.start(ENDPOINT, MODEL, "1")

    assert deployment == candidate("1", fake)
    (create,) = fake.sent("POST", ENDPOINTS)
    assert create.body["name"] == ENDPOINT
    assert create.body["config"]["served_entities"] == [as_input("1")]
    assert routes_of(create.body["config"]) == {f"{MODEL}-1": 100}
    assert create.headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.sent("PUT", CONFIG) == []


def test_start_with_a_registry_prefix_serves_the_unity_catalog_model(fake: FakeDatabricks):
    serving = DatabricksServing(host=fake.url, token=TOKEN, registry_prefix="main.ml", workload_type="CPU")
    fake.reply("GET", GET_ENDPOINT, NOT_FOUND)
    fake.reply("POST", ENDPOINTS, (200, endpoint(None, update="IN_PROGRESS", pending=[])))

    deployment = serving.start(ENDPOINT, MODEL, "2")

    served = fake.sent("POST", ENDPOINTS)[0].body["config"]["served_entities"][0]
    assert served["entity_name"] == f"main.ml.{MODEL}" and served["name"] == f"{MODEL}-2"
    assert served["workload_type"] == "CPU"
    assert deployment.slot == f"{MODEL}-2"


def test_new_served_entities_get_their_endpoints_sizing_from_the_catalogue(fake: FakeDatabricks, tmp_path: Path):
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        (REPO / "catalogue.toml")
        .read_text()
        .replace('workload_size = "Small"', 'workload_size = "Large"')
        .replace("scale_to_zero_enabled = true", "scale_to_zero_enabled = false")
    )
    sizing = sizing_from_catalogue(load_catalogue(catalogue))
    assert sizing == {"iris": EntitySizing("Large", False)}  # batch models have no served entity
    serving = DatabricksServing(host=fake.url, token=TOKEN, sizing=sizing)
    fake.reply("GET", GET_ENDPOINT, NOT_FOUND)
    fake.reply("POST", ENDPOINTS, (200, endpoint(None, update="IN_PROGRESS", pending=[])))
    serving.start(ENDPOINT, MODEL, "1")
    created = fake.sent("POST", ENDPOINTS)[0].body["config"]["served_entities"][0]
    assert (created["workload_size"], created["scale_to_zero_enabled"]) == ("Large", False)

    # Beside an entity already serving: that one goes back as it is, the new one gets the endpoint's sizing.
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {f"{MODEL}-1": 100})))
    fake.reply("PUT", CONFIG, (200, endpoint([entity("1")], update="IN_PROGRESS")))
    serving.start(ENDPOINT, MODEL, "2")
    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [
        as_input("1"),
        {**as_input("2"), "workload_size": "Large", "scale_to_zero_enabled": False},
    ]
    # An endpoint the catalogue does not size keeps today's defaults.
    assert DatabricksServing(host=fake.url, token=TOKEN, sizing=sizing)._new_entity(
        "other", "m-1", "m", "1"
    ).as_dict() == {
        "name": "m-1",
        "entity_name": "m",
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
    }


def test_two_models_sizing_one_endpoint_differently_are_refused(tmp_path: Path):
    text = (REPO / "catalogue.toml").read_text()
    copy = (
        text[text.index("[models.iris-classifier]") : text.index("# A batch model")]
        .replace("iris-classifier", "iris-twin")
        .replace('prefix = "iris/"', 'prefix = "twin/"')
        .replace('workload_size = "Small"', 'workload_size = "Medium"')
    )
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(text.replace("signalbox/examples", str(REPO / "signalbox/examples")) + "\n" + copy)
    with pytest.raises(PermanentError, match="serving endpoint iris: models of the catalogue give it different"):
        sizing_from_catalogue(load_catalogue(catalogue))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a" * 64, "is 64 characters; Databricks allows at most 63"),
        ("iris.prod", "letters, digits, '-' and '_' only"),
        ("iris prod", "letters, digits, '-' and '_' only"),
        ("-iris", "starting with a letter or digit"),
        ("iris/../../api", "letters, digits"),
        ("", "is empty"),
    ],
)
def test_an_endpoint_name_databricks_refuses_is_a_permanent_error_before_any_request(
    fake: FakeDatabricks, serving: DatabricksServing, name: str, problem: str
):
    with pytest.raises(PermanentError, match=re.escape(problem)):
        serving.current(name)
    with pytest.raises(PermanentError, match=re.escape(problem)):
        serving.start(name, MODEL, "1")
    assert fake.api_calls() == []


def test_endpoint_names_databricks_accepts_pass(fake: FakeDatabricks, serving: DatabricksServing):
    for name in ("a" * 63, "Iris_Prod-2", "9lives"):
        assert check_endpoint_name(name) == name
    fake.reply("GET", f"{ENDPOINTS}/{'a' * 63}", NOT_FOUND)
    assert serving.current("a" * 63) is None


def test_start_beside_a_serving_version_adds_it_with_no_traffic(fake: FakeDatabricks, serving: DatabricksServing):
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {f"{MODEL}-1": 100})))
    fake.reply("PUT", CONFIG, (200, endpoint([entity("1")], {f"{MODEL}-1": 100}, update="IN_PROGRESS")))

    current = serving.current(ENDPOINT)
    deployment = serving.start(ENDPOINT, MODEL, "2")

    assert current == Deployment(
        ENDPOINT, MODEL, "1", f"{MODEL}-1", f"{fake.url}/serving-endpoints/{ENDPOINT}/invocations"
    )
    assert deployment == candidate("2", fake)
    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [as_input("1"), as_input("2")]
    assert routes_of(update.body) == {f"{MODEL}-1": 100, f"{MODEL}-2": 0}
    assert fake.sent("POST", ENDPOINTS) == []


def test_start_again_is_idempotent_and_waits_for_another_update(fake: FakeDatabricks, serving: DatabricksServing):
    both = [entity("1"), entity("2", state="DEPLOYMENT_CREATING")]
    fake.reply(
        "GET", GET_ENDPOINT, (200, endpoint([entity("1")], {f"{MODEL}-1": 100}, update="IN_PROGRESS", pending=both))
    )
    assert serving.start(ENDPOINT, MODEL, "2") == candidate("2", fake)  # already on its way: a redelivery
    with pytest.raises(TransientError, match="another config update"):
        serving.start(ENDPOINT, MODEL, "3")
    assert fake.sent("PUT", CONFIG) == []


def test_start_drops_unrouted_leftovers_of_the_same_model_only(fake: FakeDatabricks, serving: DatabricksServing):
    served = [entity("1"), entity("2"), entity("5", model="other-model")]
    fake.reply("GET", GET_ENDPOINT, (200, endpoint(served, {f"{MODEL}-1": 0, f"{MODEL}-2": 100, "other-model-5": 0})))
    fake.reply("PUT", CONFIG, (200, endpoint(served, update="IN_PROGRESS")))

    serving.start(ENDPOINT, MODEL, "3")

    (update,) = fake.sent("PUT", CONFIG)
    assert [e["name"] for e in update.body["served_entities"]] == [f"{MODEL}-2", "other-model-5", f"{MODEL}-3"]
    assert routes_of(update.body) == {f"{MODEL}-2": 100, "other-model-5": 0, f"{MODEL}-3": 0}


def test_start_refuses_to_guess_the_traffic_of_an_endpoint_without_routes(
    fake: FakeDatabricks, serving: DatabricksServing
):
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1"), entity("5", model="other-model")], {})))
    with pytest.raises(PermanentError, match="without a traffic config"):
        serving.start(ENDPOINT, MODEL, "2")
    assert fake.sent("PUT", CONFIG) == []


def test_readiness_is_pending_while_updating_then_ready(fake: FakeDatabricks, serving: DatabricksServing):
    old = {f"{MODEL}-1": 100}
    fake.reply(
        "GET",
        GET_ENDPOINT,
        (
            200,
            endpoint(
                [entity("1")],
                old,
                update="IN_PROGRESS",
                pending=[entity("1"), entity("2", state="DEPLOYMENT_CREATING", message="Creating container image")],
                pending_routes={**old, f"{MODEL}-2": 0},
            ),
        ),
        (200, endpoint([entity("1"), entity("2")], {**old, f"{MODEL}-2": 0})),
    )

    pending = serving.readiness(candidate("2", fake))
    ready = serving.readiness(candidate("2", fake))

    assert pending.state == "pending" and "Creating container image" in (pending.message or "")
    assert ready.state == "ready"


def test_readiness_of_a_failed_update_is_failed_with_the_reason(fake: FakeDatabricks, serving: DatabricksServing):
    reason = "Model server failed to load the model: ModuleNotFoundError: No module named 'sklearn'"
    fake.reply(
        "GET",
        GET_ENDPOINT,
        (
            200,
            endpoint(
                [entity("1")],
                {f"{MODEL}-1": 100},
                update="UPDATE_FAILED",
                pending=[entity("1"), entity("2", state="DEPLOYMENT_FAILED", message=reason)],
                pending_routes={f"{MODEL}-1": 100, f"{MODEL}-2": 0},
            ),
        ),
    )
    readiness = serving.readiness(candidate("2", fake))
    assert readiness.state == "failed"
    assert readiness.message is not None and "UPDATE_FAILED" in readiness.message and reason in readiness.message


def test_the_smoke_request_goes_to_the_new_served_entity_alone(fake: FakeDatabricks, serving: DatabricksServing):
    path = f"/serving-endpoints/{ENDPOINT}/served-models/{MODEL}-2/invocations"
    fake.reply("POST", path, (200, {"predictions": [0, 1, 2]}))
    payload = ScoringFrame(("a", "b"), ((1.0, 2.0),))

    assert serving.invoke(candidate("2", fake), payload) == {"predictions": [0, 1, 2]}

    (call,) = fake.sent("POST", path)
    assert call.body == payload.dataframe_split() and call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert fake.sent("POST", f"/serving-endpoints/{ENDPOINT}/invocations") == []


def test_a_smoke_request_the_model_rejects_is_not_transient(fake: FakeDatabricks, serving: DatabricksServing):
    path = f"/serving-endpoints/{ENDPOINT}/served-models/{MODEL}-2/invocations"
    fake.reply("POST", path, error(400, "BAD_REQUEST", "Model is missing inputs ['petal_width']"))
    with pytest.raises(PermanentError, match="petal_width"):
        serving.invoke(candidate("2", fake), ScoringFrame((), ()))


def test_route_moves_all_traffic_to_the_new_entity_and_keeps_both(fake: FakeDatabricks, serving: DatabricksServing):
    both = [entity("1"), entity("2")]
    fake.reply("GET", GET_ENDPOINT, (200, endpoint(both, {f"{MODEL}-1": 100, f"{MODEL}-2": 0})))
    fake.reply("PUT", CONFIG, (200, endpoint(both, {f"{MODEL}-1": 100, f"{MODEL}-2": 0}, update="IN_PROGRESS")))

    serving.route(ENDPOINT, candidate("2", fake))

    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [as_input("1"), as_input("2")]
    assert routes_of(update.body) == {f"{MODEL}-1": 0, f"{MODEL}-2": 100}


def test_stop_removes_the_old_entity_after_the_route(fake: FakeDatabricks, serving: DatabricksServing):
    both = [entity("1"), entity("2")]
    fake.reply("GET", GET_ENDPOINT, (200, endpoint(both, {f"{MODEL}-1": 0, f"{MODEL}-2": 100})))
    fake.reply("PUT", CONFIG, (200, endpoint(both, update="IN_PROGRESS")))

    serving.stop(Deployment(ENDPOINT, MODEL, "1", f"{MODEL}-1", serving.endpoint_url(ENDPOINT)))

    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [as_input("2")]
    assert routes_of(update.body) == {f"{MODEL}-2": 100}


def test_a_rollback_stops_the_candidate_and_leaves_the_old_entity_serving(
    fake: FakeDatabricks, serving: DatabricksServing
):
    both = [entity("1"), entity("2")]
    fake.reply("GET", GET_ENDPOINT, (200, endpoint(both, {f"{MODEL}-1": 100, f"{MODEL}-2": 0})))
    fake.reply("PUT", CONFIG, (200, endpoint(both, update="IN_PROGRESS")))

    serving.stop(candidate("2", fake))

    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [as_input("1")]
    assert routes_of(update.body) == {f"{MODEL}-1": 100}


def test_stop_of_a_candidate_whose_update_failed_changes_nothing(fake: FakeDatabricks, serving: DatabricksServing):
    fake.reply(
        "GET",
        GET_ENDPOINT,
        (
            200,
            endpoint(
                [entity("1")],
                {f"{MODEL}-1": 100},
                update="UPDATE_FAILED",
                pending=[entity("1"), entity("2", state="DEPLOYMENT_FAILED")],
            ),
        ),
    )
    serving.stop(candidate("2", fake))
    assert fake.api_calls() == [("GET", GET_ENDPOINT)]


def test_stop_of_the_only_entity_deletes_the_endpoint(fake: FakeDatabricks, serving: DatabricksServing):
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {f"{MODEL}-1": 100})))
    fake.reply("DELETE", GET_ENDPOINT, (200, {}))
    serving.stop(candidate("1", fake))
    assert fake.api_calls() == [("GET", GET_ENDPOINT), ("DELETE", GET_ENDPOINT)]


def test_stop_during_an_update_changes_nothing_and_asks_to_check_again(
    fake: FakeDatabricks, serving: DatabricksServing
):
    both = [entity("1"), entity("2")]
    routing = endpoint(
        both,
        {f"{MODEL}-1": 100, f"{MODEL}-2": 0},
        update="IN_PROGRESS",
        pending=both,
        pending_routes={f"{MODEL}-1": 0, f"{MODEL}-2": 100},
    )
    applied = endpoint(both, {f"{MODEL}-1": 0, f"{MODEL}-2": 100})
    fake.reply("GET", GET_ENDPOINT, (200, routing), (200, routing), (200, applied))
    fake.reply("PUT", CONFIG, (200, endpoint(both, update="IN_PROGRESS")))
    old = Deployment(ENDPOINT, MODEL, "1", f"{MODEL}-1", serving.endpoint_url(ENDPOINT))

    # The old entity takes no traffic in the update, but leaving now would leave it serving for good.
    with pytest.raises(TransientError, match="config update in progress; iris-classifier-1 is removed once"):
        serving.stop(old)
    with pytest.raises(TransientError, match="config update in progress and it routes traffic to iris-classifier-2"):
        serving.stop(candidate("2", fake))
    assert fake.sent("PUT", CONFIG) == []

    serving.stop(old)  # the update has ended: now it goes
    (update,) = fake.sent("PUT", CONFIG)
    assert update.body["served_entities"] == [as_input("2")] and routes_of(update.body) == {f"{MODEL}-2": 100}


def test_an_update_refused_with_409_is_transient_and_says_an_update_is_in_progress(
    fake: FakeDatabricks, serving: DatabricksServing
):
    both = [entity("1"), entity("2")]
    fake.reply("GET", GET_ENDPOINT, (200, endpoint(both, {f"{MODEL}-1": 0, f"{MODEL}-2": 100})))
    # Another update began between the read and the write: Databricks answers 409.
    fake.reply(
        "PUT",
        CONFIG,
        error(409, "RESOURCE_CONFLICT", f"Endpoint {ENDPOINT} is currently being updated. Please try again later."),
    )
    with pytest.raises(TransientError, match=r"config update in progress \(409 RESOURCE_CONFLICT\); remove"):
        serving.stop(Deployment(ENDPOINT, MODEL, "1", f"{MODEL}-1", serving.endpoint_url(ENDPOINT)))
    with pytest.raises(TransientError, match="config update in progress"):
        serving.route(ENDPOINT, Deployment(ENDPOINT, MODEL, "1", f"{MODEL}-1", serving.endpoint_url(ENDPOINT)))
    assert len(fake.sent("PUT", CONFIG)) == 2


def test_serving_errors_are_translated(fake: FakeDatabricks, serving: DatabricksServing):
    fake.reply("GET", GET_ENDPOINT, error(403, "PERMISSION_DENIED", "User cannot view serving endpoint iris"))
    with pytest.raises(PermanentError, match="permission denied"):
        serving.current(ENDPOINT)
    fake.reply("GET", GET_ENDPOINT, error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", {"Retry-After": "0"}))
    with pytest.raises(TransientError, match="throttled"):
        serving.readiness(candidate("2", fake))
    fake.reply("GET", GET_ENDPOINT, (200, endpoint([entity("1")], {f"{MODEL}-1": 100})))
    fake.reply("PUT", CONFIG, error(409, "RESOURCE_CONFLICT", "Endpoint iris is currently being updated"))
    with pytest.raises(TransientError, match="config update in progress"):
        serving.start(ENDPOINT, MODEL, "2")
    with pytest.raises(PermanentError, match="invalid serving endpoint name"):
        serving.current("iris/../../api")


# -- the deploy handler over the adapter ----------------------------------------------------------------------


class ServingWorkspace:
    """A stateful model of serving endpoints: a config update stays IN_PROGRESS for one read, then applies."""

    def __init__(self, fake: FakeDatabricks) -> None:
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.unread_updates: dict[str, int] = {}
        self.failing_versions: dict[str, str] = {}  # version -> deployment failure message
        self.smoke: list[str] = []
        fake.reply("GET", GET_ENDPOINT, self._get)
        fake.reply("POST", ENDPOINTS, self._create)
        fake.reply("PUT", CONFIG, self._update)
        fake.reply("DELETE", GET_ENDPOINT, self._delete)
        for version in "1234":
            path = f"/serving-endpoints/{ENDPOINT}/served-models/{MODEL}-{version}/invocations"
            fake.reply("POST", path, self._invoke)

    def _pending(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        served = [{**e, "state": {"deployment": "DEPLOYMENT_CREATING"}} for e in config["served_entities"]]
        return {"served_entities": served, "traffic_config": config["traffic_config"], "config_version": 9}

    def _create(self, call: Call) -> Reply:
        name = call.body["name"]
        self.endpoints[name] = {"name": name, "state": {"config_update": "IN_PROGRESS"}}
        self.endpoints[name]["pending_config"] = self._pending(name, call.body["config"])
        self.unread_updates[name] = 1
        return 200, self.endpoints[name]

    def _update(self, call: Call) -> Reply:
        detail = self.endpoints[ENDPOINT]
        if detail["state"]["config_update"] == "IN_PROGRESS":
            return error(409, "RESOURCE_CONFLICT", "Endpoint is currently being updated")
        detail["state"]["config_update"] = "IN_PROGRESS"
        detail["pending_config"] = self._pending(ENDPOINT, call.body)
        self.unread_updates[ENDPOINT] = 1
        return 200, detail

    def _get(self, call: Call) -> Reply:
        detail = self.endpoints.get(ENDPOINT)
        if detail is None:
            return NOT_FOUND
        if detail["state"]["config_update"] == "IN_PROGRESS":
            if self.unread_updates[ENDPOINT] > 0:
                self.unread_updates[ENDPOINT] -= 1
            else:
                self._apply(detail)
        return 200, detail

    def _apply(self, detail: dict[str, Any]) -> None:
        pending = detail.pop("pending_config")
        failures = [e for e in pending["served_entities"] if e["entity_version"] in self.failing_versions]
        if failures:
            for e in failures:
                e["state"] = {
                    "deployment": "DEPLOYMENT_FAILED",
                    "deployment_state_message": self.failing_versions[e["entity_version"]],
                }
            detail["pending_config"] = pending
            detail["state"]["config_update"] = "UPDATE_FAILED"
            return
        for e in pending["served_entities"]:
            e["state"] = {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
        detail["config"] = pending
        detail["state"]["config_update"] = "NOT_UPDATING"

    def _delete(self, call: Call) -> Reply:
        self.endpoints.pop(ENDPOINT, None)
        return 200, {}

    def _invoke(self, call: Call) -> Reply:
        self.smoke.append(call.path.split("/")[-2])
        return 200, {"predictions": [0] * len(call.body["dataframe_split"]["data"])}

    def traffic(self) -> dict[str, int]:
        config = self.endpoints[ENDPOINT]["config"]
        return {r["served_model_name"]: r["traffic_percentage"] for r in config["traffic_config"]["routes"]}


def deploy_until_done(svc: Any, version: str, transient: list[str] | None = None) -> str:
    """Run one DeployVersion and its scheduled readiness checks through the deploy handler.

    A ``TransientError`` puts the message back, as the runtime's scheduled retry does; its text
    goes to ``transient``.
    """
    registry: FakeRegistry = svc.registry
    registry.set_version_tags(
        MODEL, version, {domain.STAGE: domain.Stage.STAGED, domain.APPROVAL: domain.Approval.AUTO}
    )
    bus: FakeBus = svc.bus
    bus.sent.append(
        (
            Envelope.start(
                DeployVersion(model_name=MODEL, version=version), cause=f"test:{version}", environment="dev"
            ),
            None,
        )
    )
    outcome = ""
    retries = 0
    while bus.sent:
        envelope, _ = bus.sent.pop(0)
        assert envelope.command.kind == "deploy"
        try:
            result = handlers.deploy(envelope, svc)
            # The deploy's own outcome; a later "retire" stops the old entity once the update ends.
            if envelope.command.retire_slot and transient is not None:
                transient.append(f"retire: {result}")
            outcome = outcome if envelope.command.retire_slot else result
        except TransientError as exc:
            retries += 1
            assert retries < 10, f"still transient after {retries} deliveries: {exc}"
            if transient is not None:
                transient.append(str(exc))
            bus.sent.append((envelope, None))
    return outcome


def test_the_deploy_handler_runs_blue_green_and_rollback_over_databricks(
    fake: FakeDatabricks, serving: DatabricksServing, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(REPO)  # the catalogue's evaluation dataset (the smoke payload) is repo-relative
    workspace = ServingWorkspace(fake)
    svc = services()
    svc.serving = serving
    for _ in range(3):
        svc.registry.register(MODEL)

    assert deploy_until_done(svc, "1") == "deployed"
    assert workspace.traffic() == {f"{MODEL}-1": 100}

    transient: list[str] = []
    assert deploy_until_done(svc, "2", transient) == "deployed"
    # The old entity's removal met the routing update: the adapter said so, and the handler retired
    # it later (a scheduled message, retried while the update ran) instead of leaving it serving.
    assert transient and transient[-1] == "retire: retired"
    assert all("config update in progress" in t for t in transient[:-1])
    for _ in range(2):  # the removal is an update of its own: it applies on the second read
        serving.current(ENDPOINT)
    assert [e["name"] for e in workspace.endpoints[ENDPOINT]["config"]["served_entities"]] == [f"{MODEL}-2"]
    assert serving.current(ENDPOINT) is not None and serving.current(ENDPOINT).version == "2"  # type: ignore[union-attr]
    assert workspace.traffic()[f"{MODEL}-2"] == 100
    assert workspace.smoke[:2] == [f"{MODEL}-1", f"{MODEL}-2"]

    workspace.failing_versions["3"] = "Container build failed: out of capacity"
    assert deploy_until_done(svc, "3") == "rolled-back"
    record = json.loads(svc.registry.get_version(MODEL, "3").tags[domain.DEPLOYMENT])
    assert "out of capacity" in record["reason"]
    current = serving.current(ENDPOINT)
    assert current is not None and current.version == "2"
    # The failed update never applied: v3 never joined; v1 takes nothing (removed, or left to the next start).
    traffic = workspace.traffic()
    assert traffic[f"{MODEL}-2"] == 100 and set(traffic) <= {f"{MODEL}-1", f"{MODEL}-2"}
    assert svc.registry.stage(MODEL, "2") == "production" and svc.registry.stage(MODEL, "1") == "surpassed"

    # The next successful start takes the leftover away.
    svc.registry.register(MODEL)
    assert deploy_until_done(svc, "4") == "deployed"
    assert serving.current(ENDPOINT).version == "4"  # type: ignore[union-attr]  # (this read applies the route)
    traffic = workspace.traffic()
    assert traffic[f"{MODEL}-4"] == 100 and f"{MODEL}-1" not in traffic and set(traffic) <= {f"{MODEL}-2", f"{MODEL}-4"}


def test_stop_after_route_waits_for_the_routing_update_then_removes_the_old_entity(
    fake: FakeDatabricks, serving: DatabricksServing
):
    """What the deploy handler relies on: a stop re-sent after the routing update ends removes the old entity."""
    workspace = ServingWorkspace(fake)
    first = serving.start(ENDPOINT, MODEL, "1")
    serving.readiness(first)  # the creation applies on the second read
    assert serving.readiness(first).state == "ready"
    second = serving.start(ENDPOINT, MODEL, "2")
    serving.readiness(second)
    assert serving.readiness(second).state == "ready"

    serving.route(ENDPOINT, second)
    with pytest.raises(TransientError, match="config update in progress"):
        serving.stop(first)  # the routing update is running
    assert workspace.traffic() == {f"{MODEL}-1": 100, f"{MODEL}-2": 0}  # nothing changed yet
    serving.stop(first)  # this read sees the routing applied: the old entity goes
    for _ in range(2):  # the removal is an update of its own: it applies on the second read
        serving.current(ENDPOINT)
    assert workspace.endpoints[ENDPOINT]["state"]["config_update"] == "NOT_UPDATING"
    assert workspace.traffic() == {f"{MODEL}-2": 100}
    assert [e["name"] for e in workspace.endpoints[ENDPOINT]["config"]["served_entities"]] == [f"{MODEL}-2"]


def test_while_the_routing_update_applies_current_is_the_entity_it_routes_to(
    fake: FakeDatabricks, serving: DatabricksServing
):
    """A retire re-checked mid-update must not take the old entity, still routed by the active config, for
    one that serves again (it then left the old entity serving for good: found by the chaos run)."""
    workspace = ServingWorkspace(fake)
    first = serving.start(ENDPOINT, MODEL, "1")
    serving.readiness(first)
    assert serving.readiness(first).state == "ready"
    second = serving.start(ENDPOINT, MODEL, "2")
    serving.readiness(second)
    assert serving.readiness(second).state == "ready"

    serving.route(ENDPOINT, second)
    now = serving.current(ENDPOINT)  # the update is still applying
    assert workspace.traffic() == {f"{MODEL}-1": 100, f"{MODEL}-2": 0}  # the active config routes the first
    assert now is not None and (now.slot, now.version) == (f"{MODEL}-2", "2")


def test_the_serving_factory_sizes_endpoints_from_the_catalogue_the_wiring_carries(
    fake: FakeDatabricks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from types import SimpleNamespace

    import shared.adapters.databricks as databricks
    import shared.adapters.databricks.serving  # noqa: F401 - once imported, the factory must still be there

    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        (REPO / "catalogue.toml").read_text().replace('workload_size = "Small"', 'workload_size = "Medium"')
    )
    settings = SimpleNamespace(databricks_host=fake.url, databricks_token=TOKEN, databricks_http_timeout_seconds=5.0)
    wiring: Any = SimpleNamespace(settings=settings, tracking_uri="databricks", registry_uri=None, catalogue=None)
    assert databricks.make_serving(wiring).sizing == {}  # type: ignore[attr-defined]  # today's defaults
    wiring.catalogue = load_catalogue(catalogue)
    assert databricks.make_serving(wiring).sizing == {"iris": EntitySizing("Medium", True)}  # type: ignore[attr-defined]
    assert not databricks.mlflow_sign_in(wiring)  # a token is configured: MLflow keeps it
