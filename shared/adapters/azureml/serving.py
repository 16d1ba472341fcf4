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
from shared.errors import PermanentError, TransientError
from shared.ports import Deployment, Readiness, ScoringFrame

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

__all__ = ["AzureMLServing"]

log = logging.getLogger(__name__)

SLOTS = ("blue", "green")
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
        """Create the endpoint if missing and the version's deployment in the idle slot, without waiting for it."""
        from azure.ai.ml.entities import ManagedOnlineDeployment

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
            ml.online_deployments.begin_create_or_update(
                ManagedOnlineDeployment(
                    name=slot,
                    endpoint_name=endpoint,
                    model=reference,
                    instance_type=self.instance_type,
                    instance_count=self.instance_count,
                )
            )
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
        """Score one request on the slot directly (no traffic needed); returns the parsed JSON answer."""
        from azure.core.exceptions import HttpResponseError

        ml = self._ml()
        where = f"smoke request to deployment {deployment.slot} of Azure ML endpoint {deployment.endpoint}"
        handle, path = tempfile.mkstemp(prefix="signalbox-smoke-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as request_file:
                # MLflow no-code deployments on managed online endpoints take ``input_data`` (split orient).
                json.dump(
                    {"input_data": {"columns": list(frame.columns), "data": [list(r) for r in frame.data]}},
                    request_file,
                )
            with self._errors(where), _invoking():
                try:
                    answer = ml.online_endpoints.invoke(
                        endpoint_name=deployment.endpoint, deployment_name=deployment.slot, request_file=path
                    )
                except HttpResponseError as exc:
                    # A model that answers with an error fails the smoke test (rollback); only an
                    # overloaded or not-yet-routed scoring front end is worth another try.
                    if _from_scoring(exc) and exc.status_code not in (429, 502, 503, 504):
                        raise PermanentError(f"{where}: answered {exc.status_code} ({describe(exc)})") from None
                    raise
        finally:
            os.unlink(path)
        try:
            return json.loads(answer)
        except (TypeError, ValueError):
            return answer

    def route(self, endpoint: str, deployment: Deployment) -> None:
        """Send all of the endpoint's traffic to the deployment's slot, waiting at most ``route_timeout`` seconds."""
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

        # Deployments need a provisioned endpoint, which takes a minute or two: worth waiting for once.
        poller = ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=endpoint, auth_mode="key"))
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
