"""Azure ML serving: managed online endpoints with two deployments, ``blue`` and ``green``.

The slot taking the endpoint's traffic is the live one; a new version goes to the other slot as a
no-code MLflow deployment of the registered model ``azureml:{model}:{version}``. ``start`` returns as
soon as Azure ML has accepted the deployment (it takes minutes); ``readiness`` reads its provisioning
state; the smoke request goes to the slot directly (header ``azureml-model-deployment``), so no
traffic moves before ``route``. A rollback is ``stop(candidate)``: the live slot keeps all traffic.

Every ``Deployment`` of an endpoint has the endpoint's scoring URI as its ``url``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared.adapters.azureml.compute import Workspace, azure_errors, describe, redact
from shared.errors import DeploymentFailed, PermanentError, TransientError
from shared.ports import Deployment, Readiness, ScoringFrame

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

__all__ = ["AzureMLServing"]

log = logging.getLogger(__name__)

# Deployment names follow the endpoint rule below; these two do.
SLOTS = ("blue", "green")
ENDPOINT_NAME_RULE = (
    "Azure ML endpoint names are 3-32 characters long, start with a letter, contain only letters, digits "
    "and hyphens, do not end with a hyphen, and are unique in their Azure region"
)
# Scoring answers a new deployment may give before it serves or while the front end is busy
# (documented for managed online endpoints: 404 no routable deployment yet, 429 too many requests,
# 500 Azure ML's infrastructure failing; 502/503/504 from the gateway, often as plain text).
_SCORING_RETRY = frozenset({404, 429, 500, 502, 503, 504})
# Answers that say the endpoint's credentials or the caller's rights are wrong, not the model.
_SCORING_CONFIG = frozenset({401, 403})
_PENDING = frozenset({"Creating", "Updating", "Scaling"})
_FAILED = frozenset({"Failed", "Canceled", "Deleting"})
_MODEL_ID = re.compile(r"models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/?$")
_MODEL_REF = re.compile(r"^azureml:(?P<name>[^:/]+):(?P<version>[^:/]+)$")
_LOG_LINES = 20
_LOG_CHARS = 400


def model_of(reference: object) -> tuple[str, str] | None:
    """(name, version) from a deployment's model: an ARM or registry id, or ``azureml:name:version``."""
    text = str(reference or "")
    match = _MODEL_ID.search(text) or _MODEL_REF.match(text)
    return (match["name"], match["version"]) if match else None


def _state(resource: object) -> str:
    value = getattr(resource, "provisioning_state", None)
    return str(getattr(value, "value", value) or "")


def scoring_body(frame: ScoringFrame) -> dict[str, object]:
    """The request body of an MLflow no-code deployment: ``input_data``, a DataFrame in split orientation.

    ``index`` is part of it: Azure ML's MLflow scoring script reads a dict as a split DataFrame only
    when ``columns``, ``index`` and ``data`` are all present (otherwise as named tensors).
    """
    rows = [list(row) for row in frame.data]
    return {"input_data": {"columns": list(frame.columns), "index": list(range(len(rows))), "data": rows}}


def check_endpoint_name(endpoint: str) -> None:
    """Raise ``PermanentError`` naming the rule unless ``endpoint`` is a legal Azure ML endpoint name."""
    from azure.ai.ml.entities._endpoint._endpoint_helpers import validate_endpoint_or_deployment_name
    from azure.ai.ml.exceptions import ValidationException

    try:
        validate_endpoint_or_deployment_name(endpoint)
    except ValidationException:
        raise PermanentError(
            f"Azure ML endpoint name {endpoint!r} is not valid: {ENDPOINT_NAME_RULE}; "
            "change deployment.endpoint in the catalogue"
        ) from None


class AzureMLServing(Workspace):
    """The ``Serving`` port on Azure ML managed online endpoints, blue/green."""

    def __init__(
        self,
        *,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        credential: TokenCredential | None = None,
        client: MLClient | None = None,
        instance_type: str = "Standard_DS3_v2",
        instance_count: int = 1,
        endpoint_timeout: float = 300.0,
        route_timeout: float = 120.0,
    ) -> None:
        Workspace.__init__(self, subscription_id, resource_group, workspace, credential, client)
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.endpoint_timeout = endpoint_timeout
        self.route_timeout = route_timeout

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return azure_errors(f"{what} (workspace {self.workspace})", self.workspace)

    # -- Serving -----------------------------------------------------------------------

    def current(self, endpoint: str) -> Deployment | None:
        """The deployment taking the most traffic, or None (no endpoint, or no traffic)."""
        check_endpoint_name(endpoint)
        ml = self._ml()
        with self._errors(f"Azure ML endpoint {endpoint}"):
            found = self._endpoint(ml, endpoint)
            if found is None:
                return None
            traffic = {str(k): int(v or 0) for k, v in (found.traffic or {}).items()}
            live = max(traffic, key=lambda slot: traffic[slot], default=None)
            if live is None or traffic[live] <= 0:
                return None
            deployment = self._deployment(ml, endpoint, live)
        if deployment is None:
            log.warning("endpoint %s sends traffic to deployment %s, which does not exist", endpoint, live)
            return None
        name, version = model_of(deployment.model) or (str(deployment.model or ""), "")
        return Deployment(endpoint, name, version, live, str(found.scoring_uri or ""))

    def start(self, endpoint: str, model_name: str, version: str) -> Deployment:
        """Create the endpoint if missing and the version's deployment in the idle slot, without waiting for it.

        Configuration problems (credentials, rights, quota, an endpoint name taken in the region) raise
        ``PermanentError``; a model version the workspace does not have raises ``DeploymentFailed``.
        """
        from azure.ai.ml.entities import ManagedOnlineDeployment
        from azure.core.exceptions import HttpResponseError

        check_endpoint_name(endpoint)
        ml = self._ml()
        reference = f"azureml:{model_name}:{version}"
        with self._errors(f"Azure ML endpoint {endpoint}, deploying {reference}"):
            found = self._endpoint(ml, endpoint) or self._create_endpoint(ml, endpoint)
            if _state(found) in _PENDING:
                raise TransientError(f"Azure ML endpoint {endpoint} is still {_state(found)}; retry later")
            traffic = {str(k): int(v or 0) for k, v in (found.traffic or {}).items()}
            idle = [s for s in SLOTS if traffic.get(s, 0) <= 0]
            if not idle:
                raise PermanentError(
                    f"Azure ML endpoint {endpoint} splits traffic between {' and '.join(SLOTS)} "
                    f"({traffic}); route it all to one slot before deploying"
                )
            slot = idle[0]
            url = str(found.scoring_uri or "")
            existing = self._deployment(ml, endpoint, slot)
            # A redelivered start finds its own deployment under way; a second PUT would conflict with it.
            if (
                existing is not None
                and model_of(existing.model) == (model_name, str(version))
                and _state(existing) not in _FAILED
            ):
                log.info("endpoint %s: %s already in slot %s (%s)", endpoint, reference, slot, _state(existing))
                return Deployment(endpoint, model_name, str(version), slot, url)
            try:
                ml.online_deployments.begin_create_or_update(
                    ManagedOnlineDeployment(
                        name=slot,
                        endpoint_name=endpoint,
                        model=reference,
                        instance_type=self.instance_type,
                        instance_count=self.instance_count,
                    )
                )
            except HttpResponseError as exc:
                # The version itself cannot be deployed: roll it back. Anything else (401/403, quota,
                # throttling) is translated as configuration or a transient failure.
                if exc.status_code in (400, 404) and _names_model(exc, model_name, str(version)):
                    raise DeploymentFailed(
                        f"Azure ML endpoint {endpoint}: {reference} cannot be deployed ({describe(exc)})"
                    ) from None
                raise
        log.info("endpoint %s: deploying %s to slot %s", endpoint, reference, slot)
        return Deployment(endpoint, model_name, str(version), slot, url)

    def readiness(self, deployment: Deployment) -> Readiness:
        """Ready once the slot's provisioning succeeded with this version; failed with the state and log tail."""
        ml = self._ml()
        where = f"deployment {deployment.slot} of Azure ML endpoint {deployment.endpoint}"
        with self._errors(where):
            found = self._deployment(ml, deployment.endpoint, deployment.slot)
            if found is None:
                return Readiness("failed", f"{where} does not exist")
            held = model_of(found.model)
            if held is not None and held != (deployment.model_name, deployment.version):
                return Readiness(
                    "failed", f"{where} holds {held[0]} v{held[1]}, not {deployment.model_name} v{deployment.version}"
                )
            state = _state(found)
            if state == "Succeeded":
                return Readiness("ready")
            if state in _PENDING or not state:
                return Readiness("pending", f"{where} is {state or 'starting'}")
        return Readiness("failed", f"{where} is {state}{self._log_tail(ml, deployment)}")

    def invoke(self, deployment: Deployment, frame: ScoringFrame) -> object:
        """Score one request on the slot directly (no traffic needed); returns the parsed JSON answer.

        The model refusing the request raises ``DeploymentFailed``; a busy or not yet routed scoring
        front end (429, 5xx, plain-text gateway errors) ``TransientError``; a bad key ``PermanentError``.
        """
        from azure.ai.ml.exceptions import MlException
        from azure.core.exceptions import HttpResponseError

        ml = self._ml()
        where = f"smoke request to deployment {deployment.slot} of Azure ML endpoint {deployment.endpoint}"
        handle, path = tempfile.mkstemp(prefix="signalbox-smoke-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as request_file:
                json.dump(scoring_body(frame), request_file)
            with self._errors(where), _invoking():
                try:
                    answer = ml.online_endpoints.invoke(
                        endpoint_name=deployment.endpoint, deployment_name=deployment.slot, request_file=path
                    )
                except (HttpResponseError, MlException, TypeError) as exc:
                    # TypeError: azure-ai-ml 1.35 maps a scoring 408 to ServiceRequestTimeoutError, whose
                    # constructor it calls wrongly; the response is still found (see _scoring_response).
                    failure = _scoring_failure(exc, where)
                    if failure is None:
                        raise
                    raise failure from None
        finally:
            os.unlink(path)
        try:
            return json.loads(answer)
        except (TypeError, ValueError):
            return answer

    def route(self, endpoint: str, deployment: Deployment) -> None:
        """Send all of the endpoint's traffic to the deployment's slot, waiting at most ``route_timeout`` seconds."""
        check_endpoint_name(endpoint)
        ml = self._ml()
        with self._errors(f"Azure ML endpoint {endpoint}, routing to {deployment.slot}"):
            found = self._endpoint(ml, endpoint)
            if found is None:
                raise PermanentError(f"Azure ML endpoint {endpoint} does not exist; cannot route to {deployment.slot}")
            found.traffic = {deployment.slot: 100}
            # The live slot may not also be a mirror target.
            found.mirror_traffic = {k: v for k, v in (found.mirror_traffic or {}).items() if k != deployment.slot}
            poller = ml.online_endpoints.begin_create_or_update(found)
            poller.wait(timeout=self.route_timeout)
            if not poller.done():
                raise TransientError(
                    f"Azure ML endpoint {endpoint}: traffic to {deployment.slot} not confirmed after "
                    f"{self.route_timeout:.0f}s; retry later"
                )
        log.info(
            "endpoint %s now routes to %s v%s (%s)",
            endpoint,
            deployment.model_name,
            deployment.version,
            deployment.slot,
        )

    def stop(self, deployment: Deployment) -> None:
        """Delete the slot's deployment without waiting; no effect when it is gone or holds another version."""
        ml = self._ml()
        where = f"deployment {deployment.slot} of Azure ML endpoint {deployment.endpoint}"
        with self._errors(where):
            found = self._deployment(ml, deployment.endpoint, deployment.slot)
            if found is None or _state(found) == "Deleting":
                return
            held = model_of(found.model)
            if held is not None and held != (deployment.model_name, deployment.version):
                log.info("%s now holds %s v%s; left alone", where, held[0], held[1])
                return
            ml.online_deployments.begin_delete(name=deployment.slot, endpoint_name=deployment.endpoint)
        log.info("%s: deleting %s v%s", where, deployment.model_name, deployment.version)

    def endpoint_url(self, endpoint: str) -> str:
        """The endpoint's scoring URI."""
        check_endpoint_name(endpoint)
        ml = self._ml()
        with self._errors(f"Azure ML endpoint {endpoint}"):
            found = self._endpoint(ml, endpoint)
        if found is None or not found.scoring_uri:
            raise PermanentError(f"Azure ML endpoint {endpoint} does not exist (workspace {self.workspace})")
        return str(found.scoring_uri)

    # -- helpers -----------------------------------------------------------------------

    def _endpoint(self, ml: MLClient, endpoint: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return ml.online_endpoints.get(endpoint)
        except ResourceNotFoundError:
            return None

    def _deployment(self, ml: MLClient, endpoint: str, slot: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return ml.online_deployments.get(name=slot, endpoint_name=endpoint)
        except ResourceNotFoundError:
            return None

    def _create_endpoint(self, ml: MLClient, endpoint: str) -> Any:
        from azure.ai.ml.entities import ManagedOnlineEndpoint
        from azure.core.exceptions import HttpResponseError

        # Deployments need a provisioned endpoint, which takes a minute or two: worth waiting for once.
        try:
            poller = ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=endpoint, auth_mode="key"))
        except HttpResponseError as exc:
            if exc.status_code not in (400, 409):
                raise
            # Not in this workspace a moment ago: unless a racing delivery has just created it here,
            # another workspace of the region holds the name, which no retry will free.
            found = self._endpoint(ml, endpoint)
            if found is not None:
                return found
            raise PermanentError(
                f"Azure ML endpoint name {endpoint!r} cannot be created in workspace {self.workspace} "
                f"({describe(exc)}); {ENDPOINT_NAME_RULE}: choose another deployment.endpoint"
            ) from None
        poller.wait(timeout=self.endpoint_timeout)
        if not poller.done():
            raise TransientError(
                f"Azure ML endpoint {endpoint} still being created after {self.endpoint_timeout:.0f}s; retry later"
            )
        log.info("created Azure ML endpoint %s", endpoint)
        return ml.online_endpoints.get(endpoint)

    def _log_tail(self, ml: MLClient, deployment: Deployment) -> str:
        # The deployment resource carries no error, only its state; the container log often says why.
        try:
            text = ml.online_deployments.get_logs(
                name=deployment.slot, endpoint_name=deployment.endpoint, lines=_LOG_LINES
            )
        except Exception as exc:
            log.debug("no logs for %s/%s: %s", deployment.endpoint, deployment.slot, type(exc).__name__)
            return ""
        tail = redact(" | ".join(line.strip() for line in str(text).splitlines() if line.strip()))
        return f"; log: ...{tail[-_LOG_CHARS:]}" if len(tail) > _LOG_CHARS else (f"; log: {tail}" if tail else "")


_INVOKE_LOCK = threading.Lock()


@contextlib.contextmanager
def _invoking() -> Iterator[None]:
    """Serialise ``online_endpoints.invoke`` and wipe the key it leaves in the SDK's shared header dict.

    azure-ai-ml writes the endpoint key and the deployment name into a module-level dict of default
    headers (``EndpointInvokeFields.DEFAULT_HEADER``): concurrent invocations would mix keys, and the
    key would otherwise stay in process memory, and be sent by a later batch endpoint invocation.
    """
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields

    with _INVOKE_LOCK:
        try:
            yield
        finally:
            for name in (EndpointInvokeFields.AUTHORIZATION, EndpointInvokeFields.MODEL_DEPLOYMENT):
                EndpointInvokeFields.DEFAULT_HEADER.pop(name, None)


def _from_scoring(exc: Any) -> bool:
    """Whether the error came from the scoring URI rather than the Azure ML management API."""
    request = getattr(getattr(exc, "response", None), "request", None)
    url = str(getattr(request, "url", "") or "")
    return bool(url) and "/providers/Microsoft.MachineLearningServices/" not in url


def _scoring_response(exc: BaseException) -> Any:
    """The scoring response behind an SDK error from ``online_endpoints.invoke``, if there is one.

    For a non-JSON error body (a gateway's plain text) azure-ai-ml raises a bare ``MlException``
    carrying only the text (and for a 408 a ``TypeError``): the response, status included, is still
    the ``response`` argument of the SDK's ``validate_response`` frame in the traceback.
    """
    from azure.core.exceptions import HttpResponseError

    if isinstance(exc, HttpResponseError):
        return exc.response if _from_scoring(exc) else None
    frame_tb = exc.__traceback__
    found = None
    while frame_tb is not None:
        frame = frame_tb.tb_frame
        if frame.f_code.co_name == "validate_response" and "response" in frame.f_locals:
            found = frame.f_locals["response"]
        frame_tb = frame_tb.tb_next
    return found


def _scoring_failure(exc: BaseException, where: str) -> Exception | None:
    """The Signalbox error for a failed smoke request; ``None`` when it did not come from the scoring URI."""
    response = _scoring_response(exc)
    if response is None:
        return None
    status = getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) or {}
    detail = describe(exc)
    if status in _SCORING_RETRY:
        return TransientError(f"{where}: the scoring front end answered {status} ({detail}); retry later")
    if status in _SCORING_CONFIG:
        return PermanentError(
            f"{where}: answered {status} ({detail}); the endpoint's key or the identity's rights are wrong"
        )
    # 408 (the model overran request_timeout_ms), 424 (the model container answered an error) and
    # any other 4xx: this version does not serve the request.
    model_status = headers.get("ms-azureml-model-error-statuscode")
    reason = headers.get("ms-azureml-model-error-reason")
    said = f"; the model answered {model_status}" if model_status else ""
    said += f" ({redact(reason)})" if reason else ""
    return DeploymentFailed(f"{where}: answered {status} ({detail}){said}")


def _names_model(exc: Any, model_name: str, version: str) -> bool:
    """Whether an error answered to a deployment PUT names its model version (missing, unreadable...)."""
    text = describe(exc).lower()
    name = model_name.lower()
    return f"models/{name}/versions/{version}" in text or f"{name}:{version}" in text
