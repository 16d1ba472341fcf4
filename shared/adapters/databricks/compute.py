"""The ``Compute`` port over Databricks Jobs (databricks-sdk ``WorkspaceClient``, Jobs API 2.2).

``training.job`` in the catalogue names an existing Databricks job, by id (digits) or by its
exact name (resolved with ``jobs/list?name=``; it must match exactly one job). ``launch`` starts
a run with ``run-now`` and returns at once; the poller reads it back with ``runs/get``.

Conventions between Signalbox and the job:

- **Job parameters** (``job_parameters`` of ``run-now``): the catalogue's ``training.parameters``,
  then ``model_name`` and ``data_uri`` (omitted when there is none), then every Signalbox tag
  (correlation id, environment, reason, commit, ...) under its ``signalbox.`` name, e.g.
  ``signalbox.correlation_id``. Later entries win on a clash. Declare them on the job (the
  ``signalbox.*`` ones with an empty default) so tasks can read them as ``{{job.parameters.NAME}}``
  or widgets; Databricks may refuse parameters a job does not define.
- **Results**: the training task ends with
  ``dbutils.notebook.exit(json.dumps({"mlflow_run_id": ..., "model_version": ...}))``.
  On success the exit value of the last task that returned one (``runs/get-output``,
  ``notebook_output.result``) becomes ``RunStatus.outputs`` (values as strings, ``null``s
  dropped), always with ``databricks_run_id``; a run with no exit value gives
  ``{"databricks_run_id": RUN_ID}`` only.
- **Idempotency**: the request's ``idempotency_key`` is the run's ``idempotency_token``, so a
  redelivered command gets the same run back; a key over 64 characters (the API's limit) is
  replaced by its SHA-256 hex digest, so distinct keys never collapse into one run.
- **Capacity failures**: a run that ends with ``MAX_CONCURRENT_RUNS_EXCEEDED``,
  ``WORKSPACE_RUN_LIMIT_EXCEEDED``, ``CLUSTER_REQUEST_LIMIT_EXCEEDED``,
  ``MAX_JOB_QUEUE_SIZE_EXCEEDED``, ``CLOUD_FAILURE`` or ``INTERNAL_ERROR`` (or whose termination
  type is ``CLOUD_FAILURE`` / ``INTERNAL_ERROR``; with only the deprecated ``state``, a
  ``life_cycle_state`` of ``INTERNAL_ERROR`` or ``SKIPPED``) reads ``failed`` with
  ``RunStatus.retryable``. Its idempotency token still names the failed run, so a relaunch must
  use another key: ``retry_key(key, attempt)``.

Errors: what the SDK raises becomes ``TransientError`` (429, 5xx, timeouts, connection errors,
conflicts) or ``PermanentError`` (401, 403, 404, bad requests) saying what to fix. The SDK retries
429/503 and connection errors by itself until ``retry_timeout_seconds`` (300 s by default in the
SDK) runs out; the client built here keeps that budget short (20 s), because a Service Bus
redelivery is the better retry and a function must not hold its message lock waiting.

Credentials: the configured token, else the SDK's own chain, else the Azure managed identity
(``shared.adapters.databricks.auth``: the SDK's chain has none).

Nothing here imports databricks-sdk at module level: importing the function app stays fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from itertools import islice
from typing import TYPE_CHECKING, Any

from shared.errors import PermanentError, TransientError
from shared.ports import JobRequest, RunState, RunStatus

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.jobs import Run, RunTask

__all__ = [
    "DEFAULT_HTTP_TIMEOUT_SECONDS",
    "DEFAULT_RETRY_TIMEOUT_SECONDS",
    "RETRYABLE_CODES",
    "TAG_PREFIX",
    "DatabricksCompute",
    "client_secrets",
    "databricks_client",
    "retry_key",
    "run_retryable",
    "sdk_errors",
    "translate_error",
]

log = logging.getLogger("signalbox.compute.databricks")

DEFAULT_RETRY_TIMEOUT_SECONDS = 20
DEFAULT_HTTP_TIMEOUT_SECONDS = 60.0
TAG_PREFIX = "signalbox."

_IDEMPOTENCY_TOKEN_MAX = 64
_PARAMETER_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_NOT_PARAMETER_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_DIGITS = re.compile(r"^[0-9]+$")
_MAX_MESSAGE = 500
# Enough to name the duplicates in the error without paging through a large workspace.
_MAX_NAME_MATCHES = 10
# A task's output is one request each; a job whose tasks return nothing should not cost a
# request per task on every successful poll.
_MAX_OUTPUT_LOOKUPS = 10
# Attributes of the SDK config whose values are secrets: never echoed in errors.
_SECRET_ATTRIBUTES = ("token", "password", "client_secret", "azure_client_secret", "google_credentials")

_PENDING_STATES = {"QUEUED", "PENDING", "BLOCKED", "WAITING", "WAITING_FOR_RETRY"}
_RUNNING_STATES = {"RUNNING", "TERMINATING"}
_SUCCESS_CODES = {"SUCCESS", "SUCCESS_WITH_FAILURES"}
_CANCEL_CODES = {"USER_CANCELED", "CANCELED"}
# Termination codes (Jobs API 2.2 ``status.termination_details.code``) of runs that failed for
# want of capacity or through the platform, not through the job: a new run may succeed.
RETRYABLE_CODES = frozenset(
    {
        "MAX_CONCURRENT_RUNS_EXCEEDED",
        "WORKSPACE_RUN_LIMIT_EXCEEDED",
        "CLUSTER_REQUEST_LIMIT_EXCEEDED",
        "MAX_JOB_QUEUE_SIZE_EXCEEDED",
        "CLOUD_FAILURE",
        "INTERNAL_ERROR",
    }
)
# ``termination_details.type``: the platform's or the cloud's fault, whatever the code.
_RETRYABLE_TYPES = {"INTERNAL_ERROR", "CLOUD_FAILURE"}
# Deprecated ``state.life_cycle_state`` values of the same kind (SKIPPED: another run was active).
_RETRYABLE_LIFECYCLES = {"INTERNAL_ERROR", "SKIPPED"}


# -- client and errors (shared with the serving adapter) -------------------------------------


def databricks_client(
    *,
    host: str | None,
    token: str | None,
    retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
    http_timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
    azure_credential: TokenCredential | None = None,
) -> WorkspaceClient:
    """A ``WorkspaceClient`` with a short retry budget.

    With a token: that token. Without one: the SDK's own resolution (``DATABRICKS_TOKEN``, OAuth,
    a config profile, ``az login``), then the Azure managed identity (``azure_credential``, else
    ``ManagedIdentityCredential`` with ``AZURE_CLIENT_ID``), which the SDK's chain lacks.
    """
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    options: dict[str, Any] = {}
    if not token:
        from shared.adapters.databricks.auth import DefaultThenManagedIdentity

        options["credentials_strategy"] = DefaultThenManagedIdentity(azure_credential)
    try:
        config = Config(
            host=host,
            token=token or None,
            retry_timeout_seconds=retry_timeout_seconds,
            http_timeout_seconds=http_timeout_seconds,
            product="signalbox",
            product_version="0.1.0",
            **options,
        )
    except ValueError as exc:
        message = _scrub(str(exc), [token] if token else [])
        raise PermanentError(
            f"cannot configure the Databricks client: {message}; set DATABRICKS_HOST and DATABRICKS_TOKEN, "
            "or give the app's managed identity (AZURE_CLIENT_ID) access to the workspace"
        ) from None
    return WorkspaceClient(config=config)


def client_secrets(client: Any, *extra: str | None) -> tuple[str, ...]:
    """The secret values a client was configured with, to keep them out of error texts."""
    config = getattr(client, "config", None)
    values = [getattr(config, name, None) for name in _SECRET_ATTRIBUTES] if config is not None else []
    if config is not None and getattr(config, "auth_type", None) == "azure-msi":
        # The managed identity's current access token (cached: no request); none, nothing to hide.
        with suppress(Exception):
            values.append(config.oauth_token().access_token)
    return tuple(v for v in (*values, *extra) if isinstance(v, str) and v)


class LazyWorkspace:
    """Builds the ``WorkspaceClient`` on first use: the SDK resolves host metadata over the
    network when a client is made, which must not happen at start-up (cold start, offline tests)."""

    def __init__(
        self,
        *,
        host: str | None = None,
        token: str | None = None,
        client: Any = None,
        retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
        http_timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
        azure_credential: TokenCredential | None = None,
    ) -> None:
        self._given = client
        self._options = {
            "host": host,
            "token": token,
            "retry_timeout_seconds": retry_timeout_seconds,
            "http_timeout_seconds": http_timeout_seconds,
            "azure_credential": azure_credential,
        }
        self._token = token
        self._lock = threading.Lock()

    @property
    def _client(self) -> WorkspaceClient:
        if self._given is None:
            with self._lock:
                if self._given is None:
                    self._given = databricks_client(**self._options)  # type: ignore[arg-type]
        return self._given

    @property
    def _secrets(self) -> Iterable[str]:
        # Read when an error is translated: the client (and a managed identity's token) may only
        # exist by then, having been built inside the very block that failed.
        return _Secrets(self)

    def _current_secrets(self) -> tuple[str, ...]:
        return (
            client_secrets(self._given, self._token)
            if self._given is not None
            else tuple(v for v in (self._token,) if v)
        )


class _Secrets:
    """The secrets of a ``LazyWorkspace`` as they are when iterated."""

    def __init__(self, workspace: LazyWorkspace) -> None:
        self._workspace = workspace

    def __iter__(self) -> Iterator[str]:
        return iter(self._workspace._current_secrets())


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _short(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_cause(exc: BaseException) -> BaseException:
    """The error behind the SDK's retry wrapper (a ``TimeoutError`` or ``RuntimeError`` from ``retried``)."""
    from databricks.sdk.errors import DatabricksError

    seen = 0
    while (
        isinstance(exc, TimeoutError | RuntimeError)
        and not isinstance(exc, DatabricksError)
        and exc.__cause__ is not None
        and seen < 5
    ):
        exc = exc.__cause__
        seen += 1
    return exc


def translate_error(
    exc: BaseException, *, action: str, not_found: str, secrets: Iterable[str]
) -> TransientError | PermanentError | None:
    """The Signalbox error for an SDK or network failure; None when ``exc`` is neither (a bug: re-raise it)."""
    import requests
    from databricks.sdk import errors as dbx

    secrets = tuple(secrets)
    cause = _root_cause(exc)
    detail = _short(_scrub(str(cause) or type(cause).__name__, secrets))
    gave_up = cause is not exc  # the SDK retried until its budget ran out
    if isinstance(cause, dbx.TooManyRequests):
        return TransientError(f"{action}: throttled by Databricks (429): {detail}")
    if isinstance(cause, dbx.TemporarilyUnavailable | dbx.InternalError | dbx.DeadlineExceeded | dbx.Cancelled):
        return TransientError(f"{action}: Databricks is unavailable or failed ({type(cause).__name__}): {detail}")
    if isinstance(cause, dbx.ResourceConflict):
        return TransientError(f"{action}: conflicts with a change in progress: {detail}")
    if isinstance(cause, dbx.Unauthenticated):
        return PermanentError(
            f"{action}: Databricks rejected the credentials: {detail}; check DATABRICKS_TOKEN "
            "(or the managed identity's access to the workspace)"
        )
    if isinstance(cause, dbx.PermissionDenied):
        return PermanentError(
            f"{action}: permission denied: {detail}; grant the identity Signalbox runs as access to it"
        )
    if isinstance(cause, dbx.NotFound) or (
        isinstance(cause, dbx.InvalidParameterValue) and "does not exist" in str(cause).lower()
    ):
        return PermanentError(f"{not_found} ({detail})")
    if isinstance(cause, dbx.BadRequest | dbx.NotImplemented):
        return PermanentError(f"{action}: Databricks rejected the request: {detail}")
    if isinstance(cause, dbx.DatabricksError):
        # Unmapped statuses (502, an HTML page from a gateway) are infrastructure, not configuration.
        return TransientError(f"{action}: unexpected answer from Databricks: {detail}")
    if isinstance(cause, requests.ConnectionError | requests.Timeout | TimeoutError | ConnectionError):
        return TransientError(f"{action}: Databricks unreachable ({type(cause).__name__}): {detail}")
    if gave_up:
        return TransientError(f"{action}: gave up after retries: {detail}")
    return None


@contextmanager
def sdk_errors(action: str, *, not_found: str, secrets: Iterable[str]) -> Iterator[None]:
    """Translate SDK and network errors raised inside the block into ``TransientError`` / ``PermanentError``."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:
        translated = translate_error(exc, action=action, not_found=not_found, secrets=secrets)
        if translated is None:
            raise
        raise translated from exc


def _value(enum_or_none: Any) -> str | None:
    """An SDK enum's wire value (the SDK maps values it does not know to None)."""
    value = getattr(enum_or_none, "value", enum_or_none)
    return value if isinstance(value, str) else None


# -- the adapter ------------------------------------------------------------------------------


class DatabricksCompute(LazyWorkspace):
    """Runs training and scoring jobs as Databricks job runs."""

    backend = "databricks"

    def _errors(self, action: str, not_found: str) -> AbstractContextManager[None]:
        return sdk_errors(action, not_found=not_found, secrets=self._secrets)

    # -- Compute ---------------------------------------------------------------------------

    def launch(self, job: JobRequest) -> str:
        """Start a run of the job (by id or exact name) without waiting; returns its run id."""
        reference = job.job_reference.strip()
        job_id = self._job_id(reference)
        parameters = job_parameters(job)
        token = idempotency_token(job.idempotency_key)
        with self._errors(
            f"run Databricks job {reference}",
            not_found=f"Databricks job {reference} not found: check training.job in the catalogue",
        ):
            waiter = self._client.jobs.run_now(job_id, job_parameters=parameters, idempotency_token=token)
        run_id = waiter.response.run_id if waiter.response is not None else None
        if run_id is None:
            raise TransientError(f"Databricks accepted a run of job {reference} but returned no run id")
        log.info("started Databricks job %s (id %s) for %s: run %s", reference, job_id, job.model_name, run_id)
        return str(run_id)

    def status(self, run_id: str) -> RunStatus:
        """Where the run is; on success, the outputs from its notebook exit value."""
        number = _run_number(run_id)
        with self._errors(
            f"read Databricks run {run_id}",
            not_found=f"Databricks run {run_id} not found (deleted, or older than the 60 days runs are kept)",
        ):
            run = self._client.jobs.get_run(number)
        state, message = run_state(run)
        retryable = state == "failed" and run_retryable(run)
        if state == "failed" and not retryable:
            detail = self._failed_task_error(run)
            if detail:
                message = f"{message}; {detail}" if message else detail
        if state != "succeeded":
            return RunStatus(run_id, state, message=_short(message) if message else None, retryable=retryable)
        outputs, problem = self._outputs(run, run_id)
        return RunStatus(run_id, "succeeded", message=problem, outputs=outputs)

    def cancel(self, run_id: str) -> None:
        """Ask Databricks to cancel the run (asynchronously); no effect once it has ended."""
        number = _run_number(run_id)
        with self._errors(
            f"cancel Databricks run {run_id}",
            not_found=f"Databricks run {run_id} not found, so it cannot be cancelled",
        ):
            self._client.jobs.cancel_run(number)
        log.info("asked Databricks to cancel run %s", run_id)

    # -- helpers ---------------------------------------------------------------------------

    def _job_id(self, reference: str) -> int:
        if _DIGITS.match(reference):
            return int(reference)
        if not reference:
            raise PermanentError("training.job is empty: name a Databricks job by id or exact name")
        with self._errors(
            f"look up Databricks job {reference!r}",
            not_found=f"no Databricks job named {reference!r}: check training.job in the catalogue",
        ):
            found = list(islice(self._client.jobs.list(name=reference), _MAX_NAME_MATCHES))
        # The API filters by exact, case-insensitive name; checking again guards older workspaces.
        matches = [
            j
            for j in found
            if j.job_id is not None
            and (j.settings is None or j.settings.name is None or j.settings.name.casefold() == reference.casefold())
        ]
        if not matches:
            raise PermanentError(
                f"no Databricks job named {reference!r}: check training.job in the catalogue "
                "(a job id or the exact name)"
            )
        if len(matches) > 1:
            ids = ", ".join(str(j.job_id) for j in matches)
            raise PermanentError(
                f"{len(matches)} Databricks jobs are named {reference!r} (ids {ids}): "
                "put the job id in training.job in the catalogue"
            )
        job_id = matches[0].job_id
        assert job_id is not None  # filtered above
        return job_id

    def _outputs(self, run: Run, run_id: str) -> tuple[dict[str, str], str | None]:
        """The notebook exit value of the last task that returned one, parsed; and a problem, if any."""
        outputs: dict[str, str] = {}
        problem: str | None = None
        result = self._notebook_result(run, run_id)
        if result is not None:
            try:
                data = json.loads(result)
            except ValueError:
                data = None
            if isinstance(data, dict):
                for key, value in data.items():
                    if value is None:
                        continue
                    outputs[str(key)] = value if isinstance(value, str) else json.dumps(value)
            else:
                problem = (
                    "the notebook exit value is not a JSON object; end the training task with "
                    'dbutils.notebook.exit(json.dumps({"mlflow_run_id": ..., "model_version": ...}))'
                )
        outputs["databricks_run_id"] = run_id
        return outputs, problem

    def _notebook_result(self, run: Run, run_id: str) -> str | None:
        tasks = list(run.tasks or [])
        if tasks:
            ordered = sorted(enumerate(tasks), key=lambda pair: (pair[1].end_time or 0, pair[0]), reverse=True)
            candidates = [task.run_id for _, task in ordered if task.run_id is not None]
        else:
            candidates = [run.run_id or _run_number(run_id)]  # a single-task run of the 2.0 API
        for task_run in candidates[:_MAX_OUTPUT_LOOKUPS]:
            with self._errors(
                f"read the output of Databricks run {run_id}",
                not_found=f"the output of Databricks run {run_id} (task run {task_run}) is gone",
            ):
                output = self._client.jobs.get_run_output(task_run)
            notebook = output.notebook_output
            if notebook is not None and notebook.result:
                return notebook.result
        return None

    def _failed_task_error(self, run: Run) -> str | None:
        """The first failed task's error, from its run output: the run's own message rarely says why."""
        failed = [task for task in (run.tasks or []) if _task_failed(task) and task.run_id is not None]
        if not failed:
            return None
        task = failed[0]
        assert task.run_id is not None
        try:
            output = self._client.jobs.get_run_output(task.run_id)
        except Exception as exc:  # only an embellishment of the message: the status stands without it
            log.debug("no output for failed task %s: %s", task.task_key, type(exc).__name__)
            return None
        error = output.error
        if not error:
            return None
        return f"task {task.task_key}: {_scrub(error, self._secrets)}"


def run_state(run: Run) -> tuple[RunState, str | None]:
    """A run's state and message, from ``status`` (Jobs API 2.2) or else the deprecated ``state``."""
    status = run.status
    v2 = _value(status.state) if status is not None else None
    if status is not None and v2 is not None:
        if v2 in _PENDING_STATES:
            queued = status.queue_details.message if status.queue_details is not None else None
            return "pending", queued
        if v2 in _RUNNING_STATES:
            return "running", None
        if v2 == "TERMINATED":
            details = status.termination_details
            code = _value(details.code) if details is not None else None
            message = details.message if details is not None else None
            if code in _SUCCESS_CODES:
                return "succeeded", message if code != "SUCCESS" else None
            if code in _CANCEL_CODES:
                return "cancelled", message or code
            return "failed", f"{code or 'UNKNOWN'}: {message}" if message else (code or "terminated without a code")
    legacy = run.state
    if legacy is None:
        return "pending", "Databricks reported no state yet"
    lifecycle = _value(legacy.life_cycle_state)
    result = _value(legacy.result_state)
    message = legacy.state_message or None
    if lifecycle in _PENDING_STATES:
        return "pending", message
    if lifecycle in _RUNNING_STATES:
        return "running", None
    if lifecycle == "TERMINATED":
        if result in _SUCCESS_CODES:
            return "succeeded", None
        if result == "CANCELED":
            return "cancelled", message or "CANCELED"
        return "failed", f"{result or 'UNKNOWN'}: {message}" if message else (result or "terminated without a result")
    if lifecycle in ("SKIPPED", "INTERNAL_ERROR"):
        return "failed", f"{lifecycle}: {message}" if message else lifecycle
    return "pending", message  # a state this SDK does not know yet: keep polling


def run_retryable(run: Run) -> bool:
    """Whether a failed run failed for want of capacity or through the platform (a new run may succeed)."""
    status = run.status
    details = status.termination_details if status is not None else None
    if details is not None and (_value(details.code) or _value(details.type)):
        return _value(details.code) in RETRYABLE_CODES or _value(details.type) in _RETRYABLE_TYPES
    legacy = run.state
    return legacy is not None and _value(legacy.life_cycle_state) in _RETRYABLE_LIFECYCLES


def _task_failed(task: RunTask) -> bool:
    if task.status is not None and task.status.termination_details is not None:
        code = _value(task.status.termination_details.code)
        return code is not None and code not in _SUCCESS_CODES and code not in _CANCEL_CODES and code != "SKIPPED"
    if task.state is not None:
        return _value(task.state.result_state) in ("FAILED", "TIMEDOUT")
    return False


def job_parameters(job: JobRequest) -> dict[str, str]:
    """The ``job_parameters`` of the run: catalogue parameters, then model_name/data_uri, then ``signalbox.*`` tags."""
    parameters: dict[str, str] = {}
    for key, value in job.parameters.items():
        if not _PARAMETER_KEY.match(key):
            raise PermanentError(
                f"training.parameters: {key!r} cannot be a Databricks job parameter "
                "(letters, digits, '_', '-' and '.' only)"
            )
        parameters[key] = str(value)
    parameters["model_name"] = job.model_name
    if job.data_uri:
        parameters["data_uri"] = job.data_uri
    for key, value in job.tags.items():
        name = key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key
        parameters[_NOT_PARAMETER_CHARS.sub("_", name)] = str(value)
    return parameters


def retry_key(key: str, attempt: int) -> str:
    """The idempotency key of relaunch ``attempt`` (1, 2, ...) of a request: a new run, itself idempotent."""
    if attempt < 1:
        return key
    return f"{key}#retry-{attempt}"


def idempotency_token(key: str | None) -> str | None:
    """The run's idempotency token: the key itself, or its SHA-256 hex digest when over 64 characters."""
    if not key:
        return None
    if len(key) <= _IDEMPOTENCY_TOKEN_MAX:
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _run_number(run_id: str) -> int:
    if not _DIGITS.match(run_id.strip()):
        raise PermanentError(f"{run_id!r} is not a Databricks run id (digits expected)")
    return int(run_id.strip())
