"""Azure ML compute: training and scoring jobs as Azure ML command jobs (azure-ai-ml ``MLClient``).

A job's ``job_reference`` is the path of a command job spec, the YAML that ``az ml job create``
reads (relative paths resolve against the working directory, the function app's root in Azure)::

    $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
    code: ./src                      # optional; or a registered code asset by its ARM id:
                                     # azureml:/subscriptions/…/workspaces/W/codes/iris-src/versions/1
    command: >-
      python train.py --data ${{inputs.data}} --max-iter ${{inputs.max_iter}}
    environment: azureml:sklearn-env:3
    compute: azureml:cpu-cluster
    inputs:
      data:                          # replaced by the job's data URI; ``type`` is kept (uri_file by default)
        type: uri_file
        path: azureml://datastores/landing/paths/placeholder.csv
      max_iter: 200                  # a default; a job parameter of the same name overrides it

What Signalbox sets on top of the spec:

- ``inputs.data``: the data URI, as a ``uri_file`` input unless the spec declares another type.
- every job parameter ``NAME=VALUE`` as the literal input ``inputs.NAME`` (declared or not), so the
  command reads it as ``${{inputs.NAME}}`` and Studio lists it with the job; names are identifiers.
- tags: the spec's, then the request's, then ``signalbox.model``; the experiment is the model name.
- the job name: ``{model}-{purpose}-{digest}``, the digest derived from the request's idempotency key,
  so a redelivered launch finds the job it already submitted instead of submitting a second one.

The job name is also the job's MLflow run id, which a succeeded status reports as ``mlflow_run_id``.
A local ``code`` folder is uploaded to the workspace's default datastore by the SDK on submission
(the short form ``azureml:NAME:VERSION`` is read as a local path by azure-ai-ml 1.35, hence the ARM id).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from shared.errors import PermanentError, TransientError
from shared.ports import JobRequest, RunState, RunStatus

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

__all__ = ["AzureMLCompute", "azure_errors", "ml_client", "workspace_tracking_uri"]

log = logging.getLogger(__name__)

_STATES: dict[str, RunState] = {
    "NotStarted": "pending",
    "Queued": "pending",
    "Preparing": "pending",
    "Provisioning": "pending",
    "Starting": "pending",
    "Running": "running",
    "Finalizing": "running",
    # A paused job still holds its place; it is neither finished nor failed.
    "Paused": "running",
    # Documented: no heartbeat lately, and "a run can go from NotResponding to any of the previous
    # states": not an end. A job that never recovers is cancelled by the poll's attempt limit.
    "NotResponding": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "Canceled": "cancelled",
    "CancelRequested": "cancelled",
}
# Nothing left to cancel: ended, or a cancellation already under way.
_NOT_CANCELLABLE = frozenset({"Completed", "Failed", "NotResponding", "Canceled", "CancelRequested"})
_TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Run-history error codes of failures Azure ML attributes to itself (capacity, node or service faults),
# not to the job's code or spec (``UserError``): the same job may well succeed when submitted again.
_TRANSIENT_JOB_ERRORS = frozenset({"SystemError", "ServiceError"})
# Resubmissions of a job that failed for such a reason, each a new job named ``{job}-r{n}``.
MAX_RESUBMITS = 2
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATA_TYPES = frozenset({"uri_file", "uri_folder", "mltable"})
_MAX_MESSAGE = 500
# A bearer token or SAS signature must never reach a log line or an exception text, even when a
# service echoes one back.
_SECRETS = re.compile(r"(?i)(bearer\s+|sig=|key=|token=)[^\s&\"',;]+")


def ml_client(
    subscription_id: str, resource_group: str, workspace: str, credential: TokenCredential | None = None
) -> MLClient:
    """An ``MLClient`` for the workspace; ``DefaultAzureCredential`` when no credential is given."""
    from azure.ai.ml import MLClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    # The cloud comes from the environment (AZUREML_CURRENT_CLOUD or ARM_CLOUD_METADATA_URL), as for
    # the az CLI; progress dots and notebook telemetry have no place in a function app.
    return MLClient(
        credential,
        subscription_id=subscription_id,
        resource_group_name=resource_group,
        workspace_name=workspace,
        show_progress=False,
        enable_telemetry=False,
    )


def workspace_tracking_uri(
    subscription_id: str,
    resource_group: str,
    workspace: str,
    *,
    credential: TokenCredential | None = None,
    client: MLClient | None = None,
) -> str:
    """The workspace's MLflow REST base (``https://…/mlflow/v2.0/subscriptions/…``): tracking and registry URI.

    Also makes MLflow's REST calls in this process carry Entra ID tokens (from ``credential``, else
    ``DefaultAzureCredential``) to Azure ML's hosts: see ``shared.adapters.azureml.mlflow_auth``.
    """
    from shared.adapters.azureml import mlflow_auth

    what = f"Azure ML workspace {workspace} (resource group {resource_group}, subscription {subscription_id})"
    with azure_errors(what, workspace):
        ml = client or ml_client(subscription_id, resource_group, workspace, credential)
        uri = ml.workspaces.get(workspace).mlflow_tracking_uri
    if not uri:
        raise PermanentError(f"{what} reports no MLflow tracking URI; set MLFLOW_TRACKING_URI instead")
    try:
        https = mlflow_auth.https_tracking_uri(str(uri))
        mlflow_auth.enable(credential)
    except ValueError as exc:
        raise PermanentError(f"{what}: {exc}") from None
    return https


def redact(text: str) -> str:
    """The text with anything shaped like a bearer token, key or SAS signature masked."""
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


def describe(exc: object) -> str:
    """One short line saying what the service or SDK objected to (an exception or error body), without secrets."""
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if message:
        text = f"{code}: {message}" if code else str(message)
    else:
        text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    # Schema errors arrive as JSON inside text, followed by boilerplate on authoring YAML.
    text = text.replace("\\n", " ").replace('\\"', '"').split(" If you are trying to configure")[0]
    text = " ".join(redact(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def translate(exc: BaseException, what: str, workspace: str) -> TransientError | PermanentError | None:
    """The Signalbox error for an Azure SDK error raised while doing ``what``; ``None`` if not one."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    detail = describe(exc)
    # MlException subclasses AzureError, so the SDK's own (client-side) errors are told apart first.
    if _is_ml_validation(exc):
        return PermanentError(f"{what}: invalid: {detail}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError | TimeoutError):
        return TransientError(f"{what}: Azure ML could not be reached ({type(exc).__name__}: {detail}); retry later")
    if isinstance(exc, ClientAuthenticationError):
        return PermanentError(
            f"{what}: authentication failed ({detail}); check the function app's managed identity "
            "or its AZURE_CLIENT_ID / AZURE_TENANT_ID settings"
        )
    if isinstance(exc, ResourceNotFoundError):
        return PermanentError(f"{what}: not found in workspace {workspace} ({detail}); check the name")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status in _TRANSIENT_STATUS:
            return TransientError(f"{what}: Azure ML answered {status} ({detail}); retry later")
        if status == 403:
            return PermanentError(
                f"{what}: forbidden ({detail}); grant the function app's identity a role on workspace "
                f"{workspace} that allows it (e.g. AzureML Data Scientist)"
            )
        if status == 404:
            return PermanentError(f"{what}: not found in workspace {workspace} ({detail}); check the name")
        if status is None or status < 400:  # a long-running operation that ended Failed or Canceled
            return PermanentError(f"{what}: the operation failed ({detail})")
        return PermanentError(f"{what}: Azure ML rejected the request with {status} ({detail}); fix it")
    from azure.ai.ml.exceptions import MlException

    if isinstance(exc, MlException):
        return PermanentError(f"{what}: {detail}")
    return None


def _is_ml_validation(exc: BaseException) -> bool:
    from azure.ai.ml.exceptions import ValidationException

    if isinstance(exc, ValidationException):
        return True
    try:
        from marshmallow import ValidationError
    except ImportError:  # pragma: no cover - marshmallow comes with azure-ai-ml
        return False
    return isinstance(exc, ValidationError)


@contextlib.contextmanager
def azure_errors(what: str, workspace: str = "") -> Iterator[None]:
    """Translate Azure SDK errors raised inside into ``TransientError`` / ``PermanentError``."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:
        translated = translate(exc, what, workspace or "?")
        if translated is None:
            raise
        # ``from None``: the SDK error's text and traceback may hold request details; the message says enough.
        raise translated from None


def _state_name(status: object) -> str:
    return str(getattr(status, "value", status) or "")


def _job_name(job: JobRequest) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", job.model_name.lower()).strip("-")[:40] or "job"
    if job.idempotency_key:
        digest = hashlib.sha256(job.idempotency_key.encode("utf-8")).hexdigest()[:20]
    else:
        digest = uuid.uuid4().hex[:20]
    return f"{slug}-{job.purpose}-{digest}"


class Workspace:
    """An Azure ML workspace whose ``MLClient`` is built on first use.

    Importing azure.ai.ml costs seconds that a cold start should not pay.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        credential: TokenCredential | None = None,
        client: MLClient | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace = workspace
        self._credential = credential
        self._client = client
        self._lock = threading.Lock()

    def _ml(self) -> MLClient:
        with self._lock:
            if self._client is None:
                with azure_errors(f"Azure ML workspace {self.workspace}", self.workspace):
                    self._client = ml_client(
                        self.subscription_id, self.resource_group, self.workspace, self._credential
                    )
            return self._client


class AzureMLCompute(Workspace):
    """Runs jobs as Azure ML command jobs from YAML specs; the job name is the run id."""

    backend = "azureml"

    def __init__(
        self,
        *,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        credential: TokenCredential | None = None,
        client: MLClient | None = None,
        cancel_timeout: float = 10.0,
    ) -> None:
        Workspace.__init__(self, subscription_id, resource_group, workspace, credential, client)
        self.cancel_timeout = cancel_timeout

    def launch(self, job: JobRequest) -> str:
        """Submit the job spec with the request's data, parameters and tags; returns the job name.

        A second launch with the same idempotency key returns the existing job's name unsubmitted.
        """
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        ml = self._ml()
        name = _job_name(job)
        what = f"Azure ML job spec {job.job_reference} (job {name}, workspace {self.workspace})"
        with azure_errors(what, self.workspace):
            if self._exists(ml, name):
                log.info("Azure ML job %s for %s was submitted before; not again", name, job.model_name)
                return name
            spec = self._load(job, name)
            try:
                ml.jobs.create_or_update(spec)
            except HttpResponseError as exc:
                # Two deliveries racing past the existence check: the loser finds the winner's job.
                if isinstance(exc, ResourceNotFoundError) or exc.status_code not in (400, 409):
                    raise
                if not self._exists(ml, name):
                    raise
        log.info("submitted Azure ML job %s for %s (%s)", name, job.model_name, job.job_reference)
        return name

    def status(self, run_id: str) -> RunStatus:
        """The job's state from Azure ML; ``outputs`` hold ``mlflow_run_id`` once it has completed.

        A job that failed for a reason Azure ML attributes to itself (run-history error ``SystemError``
        or ``ServiceError``) is submitted again as a new job, ``{run_id}-r1`` then ``-r2``: the status
        then reports that job (its name is the ``run_id`` of the answer). Asking again for ``run_id``
        follows the same chain, so a repeated poll never submits twice.
        """
        ml = self._ml()
        current = run_id
        for attempt in range(MAX_RESUBMITS + 1):
            with azure_errors(f"Azure ML job {current}", self.workspace):
                found = ml.jobs.get(current)
            raw = _state_name(found.status)
            state = _STATES.get(raw, "pending")
            if state == "succeeded":
                return RunStatus(current, "succeeded", outputs={"mlflow_run_id": current})
            if state == "cancelled":
                return RunStatus(current, "cancelled", message=f"Azure ML job {raw}")
            if state != "failed":
                return RunStatus(current, state, message=raw or None)
            code, message = self._failure(ml, current, raw, found)
            if code not in _TRANSIENT_JOB_ERRORS or attempt == MAX_RESUBMITS:
                return RunStatus(current, "failed", message=message)
            successor = f"{run_id}-r{attempt + 1}"
            if not self._exists(ml, successor):
                self._resubmit(ml, found, successor, why=code)
                return RunStatus(successor, "pending", message=f"resubmitted after {message}")
            current = successor
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    def cancel(self, run_id: str) -> None:
        """Ask Azure ML to cancel the job (its latest resubmission), waiting at most ``cancel_timeout`` seconds.

        No effect once it is ending.
        """
        ml = self._ml()
        with azure_errors(f"Azure ML job {run_id}", self.workspace):
            # The job that runs now: the last resubmission of run_id, if status() made any.
            for attempt in range(MAX_RESUBMITS, 0, -1):
                if self._exists(ml, f"{run_id}-r{attempt}"):
                    run_id = f"{run_id}-r{attempt}"
                    break
            if _state_name(ml.jobs.get(run_id).status) in _NOT_CANCELLABLE:
                return
            poller = ml.jobs.begin_cancel(run_id)
            poller.wait(timeout=self.cancel_timeout)
            if not poller.done():
                log.info("Azure ML job %s: cancellation requested, still in progress", run_id)

    def _exists(self, ml: MLClient, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            ml.jobs.get(name)
        except ResourceNotFoundError:
            return False
        return True

    def _load(self, job: JobRequest, name: str) -> Any:
        from azure.ai.ml import load_job

        path = Path(job.job_reference).expanduser()
        if not path.is_file():
            raise PermanentError(
                f"Azure ML job spec {job.job_reference}: no such file ({path.absolute()}); training.job must be "
                "the path of a command job YAML file"
            )
        overrides: list[dict[str, Any]] = []
        if job.data_uri:
            overrides.append({"inputs.data": {"type": _data_type(path), "path": job.data_uri}})
        for key, value in job.parameters.items():
            if not _INPUT_NAME.fullmatch(key) or key == "data":
                _bad_parameter(job.job_reference, key)
            overrides.append({f"inputs.{key}": str(value)})
        spec = load_job(source=path, params_override=overrides)
        spec.name = name
        spec.experiment_name = job.model_name
        spec.tags = {**(spec.tags or {}), **job.tags, "signalbox.model": job.model_name}
        return spec

    def _failure(self, ml: MLClient, name: str, raw: str, found: Any) -> tuple[str | None, str]:
        """The run-history error code of a failed job (``None`` if unknown) and a message saying why."""
        message, code = f"Azure ML job {raw}", None
        # The job resource carries no error; the run-history record does, and the SDK reads it only
        # through this private client. Best effort: the status must not fail for want of a message.
        try:
            run = ml.jobs._runs_operations.get_run(name)
            error = getattr(getattr(run, "error", None), "error", None)
            if error is not None and getattr(error, "message", None):
                message = f"{message}: {describe(run.error)}"
                code = getattr(error, "code", None)
        except Exception as exc:
            log.debug("no run-history error for Azure ML job %s: %s", name, type(exc).__name__)
        studio = getattr(found, "studio_url", None)
        return code, (f"{message} (see {studio})" if studio else message)

    def _resubmit(self, ml: MLClient, job: Any, name: str, why: str) -> None:
        from azure.core.exceptions import HttpResponseError

        job.name = name
        job.tags = {**(job.tags or {}), "signalbox.resubmitted_after": why}
        with azure_errors(f"Azure ML job {name} (resubmitted)", self.workspace):
            try:
                ml.jobs.create_or_update(job)
            except HttpResponseError as exc:
                # A concurrent poll resubmitted it first.
                if exc.status_code not in (400, 409) or not self._exists(ml, name):
                    raise
        log.info("Azure ML job %s resubmitted as %s after %s", job.display_name or name, name, why)


def _data_type(spec: Path) -> str:
    """The type the spec declares for ``inputs.data``; ``uri_file`` when it declares none."""
    import yaml

    try:
        raw = yaml.safe_load(spec.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "uri_file"  # load_job reports the problem in its own words
    inputs = raw.get("inputs") if isinstance(raw, dict) else None
    declared = inputs.get("data") if isinstance(inputs, dict) else None
    kind = declared.get("type") if isinstance(declared, dict) else None
    return kind if kind in _DATA_TYPES else "uri_file"


def _bad_parameter(reference: str, key: str) -> NoReturn:
    raise PermanentError(
        f"Azure ML job spec {reference}: parameter {key!r} cannot be an Azure ML input "
        "(names are identifiers, and 'data' is reserved for the data URI)"
    )
