"""A registered model version's files from an Azure ML workspace, for evaluation (azure-ai-ml ``models.download``).

MLflow cannot read the ``azureml://`` artifact URIs an Azure ML workspace gives its model versions
without the azureml-mlflow plugin's artifact repository (the plugin's release caps mlflow-skinny at
3.15). The workspace's MLflow registry and its model registry are one: an MLflow model version
``NAME``/``VERSION`` is the Azure ML model asset of that name and version, whose ``modelUri`` points
into a datastore (``azureml://subscriptions/…/datastores/workspaceartifactstore/paths/ExperimentRun/dcid.RUN/model``
for a model logged by a run). ``MLClient.models.download`` reads the asset, the datastore (with its
account key through ``listSecrets``, or the app's own identity for an identity-based datastore) and
then the blobs.

Roles: AzureML Data Scientist on the workspace covers the asset, the datastore and ``listSecrets``;
an identity-based datastore also needs Storage Blob Data Reader on its storage account.
"""

from __future__ import annotations

from pathlib import Path

from shared.adapters.azureml.compute import Workspace, azure_errors, describe
from shared.errors import PermanentError, TransientError

__all__ = ["AzureMLModelFiles", "mlmodel_folder"]

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class AzureMLModelFiles(Workspace):
    """Downloads model versions' files from the workspace (the ``ModelFiles`` the evaluator takes).

    Built as ``AzureMLModelFiles(subscription_id, resource_group, workspace, credential=None)``.
    """

    def fetch(self, model_name: str, version: str, into: Path) -> Path:
        """Download the version's files below ``into``; returns the folder holding its ``MLmodel``."""
        from azure.core.exceptions import ResourceNotFoundError

        what = f"downloading model {model_name} version {version} from Azure ML workspace {self.workspace}"
        ml = self._ml()
        with azure_errors(what, self.workspace):
            try:
                ml.models.download(name=model_name, version=str(version), download_path=str(into))
            except Exception as exc:
                storage = _storage_error(exc)
                if storage is not None:
                    raise _storage_failure(what, storage) from None
                if isinstance(exc, ResourceNotFoundError) and "/models/" in _request_url(exc):
                    # MLflow's registry already holds this version: the workspace's model registry may
                    # not show it yet. Retried on the retry schedule; one that never appears dead-letters.
                    raise TransientError(
                        f"{what}: not in the workspace's model registry yet ({describe(exc)}); retry later"
                    ) from None
                if isinstance(exc, ResourceNotFoundError) and "/datastores/" in _request_url(exc):
                    uri = ml.models.get(name=model_name, version=str(version)).path
                    raise PermanentError(
                        f"{what}: its files ({uri}) are not in a datastore of the workspace; Signalbox reads "
                        "models whose files a run logged (azureml://…/datastores/NAME/paths/…), not models "
                        "registered from a job output URI (azureml://jobs/…)"
                    ) from None
                raise
        return mlmodel_folder(into, what)


def mlmodel_folder(root: Path, what: str) -> Path:
    """The shallowest folder below ``root`` holding an ``MLmodel`` file; ``PermanentError`` if there is none."""
    found = sorted(root.rglob("MLmodel"), key=lambda path: (len(path.parts), str(path)))
    if not found:
        raise PermanentError(
            f"{what}: the model's files hold no MLmodel file; Signalbox evaluates MLflow models "
            "(register the version from a run's logged MLflow model)"
        )
    return found[0].parent


def _storage_error(exc: BaseException) -> BaseException | None:
    """The storage service's error behind ``exc`` (azure-ai-ml wraps blob failures), else ``None``."""
    from azure.core.exceptions import HttpResponseError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, HttpResponseError) and ".blob." in _request_host(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _request_url(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(getattr(getattr(response, "request", None), "url", "") or "")


def _request_host(exc: BaseException) -> str:
    from urllib.parse import urlsplit

    return urlsplit(_request_url(exc)).hostname or ""


def _storage_failure(what: str, exc: BaseException) -> TransientError | PermanentError:
    """Signalbox's error for the datastore's storage refusing or failing a read."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None) or ""
    where = f"the datastore's storage account ({_request_host(exc).split('.')[0]})"
    if status in _TRANSIENT_STATUS:
        return TransientError(f"{what}: {where} answered {status} {code}; retry later".rstrip())
    if status == 403:
        return PermanentError(
            f"{what}: {where} refused the read (403 {code}); for an identity-based datastore grant the "
            "function app's identity Storage Blob Data Reader on that account"
        )
    if status == 404:
        return PermanentError(f"{what}: {where} has no such container or files (404 {code})")
    return PermanentError(f"{what}: {where} answered {status} {code} ({describe(exc)})")
