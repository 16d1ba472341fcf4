"""A Databricks workspace's MLflow REST API on 127.0.0.1, for driving MLflow's own Databricks stores.

Only the HTTP layer is local: ``MlflowClient(registry_uri="databricks-uc")`` (MLflow's
``UcModelRegistryStore``) or ``registry_uri="databricks"`` (its workspace registry ``RestStore``)
talks to this server through MLflow's own request code (the Databricks SDK's API client), with
``DATABRICKS_HOST=http://127.0.0.1:PORT`` and ``DATABRICKS_TOKEN`` in the environment.

The shapes are those of the Databricks REST reference and MLflow's protos
(``databricks_uc_registry_messages.proto``, ``model_registry.proto``,
``databricks_filesystem_service.proto``):

- Unity Catalog, ``/api/2.0/mlflow/unity-catalog/...``: a search takes ONE condition (``name=`` or
  ``run_id=``) and answers versions without tags or aliases; ``get`` answers both; aliases work;
  ``generate-temporary-credentials`` answers a SAS token (``azure_user_delegation_sas``) and the
  storage mode; in ``DEFAULT_STORAGE`` mode the files are read through the Files API
  (``/api/2.0/fs/directories``, ``/api/2.0/fs/create-download-url``) and a presigned URL served here.
- Tracking (either registry), ``/api/2.0/mlflow/experiments|runs/...``: experiments by absolute
  workspace path in an existing folder, ``RESOURCE_ALREADY_EXISTS`` for a taken name, runs created,
  updated and searched (newest first, pages of ``max_results`` ≤ 50,000), tags within the documented
  guarantees (20 a request, 250-byte keys, 5,000-byte values).
- Workspace registry, ``/api/2.0/mlflow/...``: a search takes one condition and answers tags; every
  alias endpoint answers ``INTERNAL_ERROR`` as Databricks does for workspace-registry models. A
  version's files are listed (``model-versions/list-artifacts``) and read through signed URLs
  (``model-versions/get-signed-download-uri``): these two are not in Databricks' public REST
  reference; their shapes are what MLflow's own ``DatabricksModelsArtifactRepository`` sends and reads.

Every request is recorded (``calls``); ``fail(path, status, body)`` makes the next requests to a path
answer an error (JSON or plain text), for the unpleasant answers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "Call",
    "DatabricksRest",
    "Fault",
    "catalogue_for",
    "databricks_env",
    "isolate_mlflow_http_env",
    "lifecycle_step",
    "tiny_dataset",
    "tiny_model",
]

UC = "/api/2.0/mlflow/unity-catalog"
WS = "/api/2.0/mlflow"
_FILTER = re.compile(r"""^\s*(name|run_id)\s*=\s*(?:'([^']*)'|"([^"]*)")\s*$""")
_STATUS = {
    "RESOURCE_DOES_NOT_EXIST": 404,
    "RESOURCE_ALREADY_EXISTS": 400,
    "INVALID_PARAMETER_VALUE": 400,
    "ENDPOINT_NOT_FOUND": 404,
    "INTERNAL_ERROR": 500,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}
WORKSPACE_ALIAS_ERROR = (
    "Method '{method}' is unsupported for models in the Workspace Model Registry. "
    "Upgrade to Models in Unity Catalog to access the latest features."
)
PRESIGNED_HEADER = "x-signalbox-presigned"
WORKSPACE_ID = "1234567890123456"


@dataclass(frozen=True)
class Call:
    """One request the server received."""

    method: str
    path: str
    params: dict[str, Any]
    authorization: str | None


@dataclass
class Fault:
    """An answer forced on the next ``times`` requests to a path."""

    status: int
    body: str
    content_type: str = "application/json"
    times: int = 1
    delay: float = 0.0


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or _STATUS[code]


@dataclass
class _Version:
    name: str
    version: str
    run_id: str
    source: str
    storage_location: str
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)
    files: Path | None = None  # the model's folder, served through the Files API


@dataclass
class _Model:
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    versions: dict[str, _Version] = field(default_factory=dict)


class DatabricksRest:
    """The server: ``unity_catalog=True`` for a UC registry, False for the workspace registry."""

    def __init__(self, token: str, *, unity_catalog: bool, storage_mode: str = "DEFAULT_STORAGE") -> None:
        self.token = token
        self.unity_catalog = unity_catalog
        self.storage_mode = storage_mode
        self.models: dict[str, _Model] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[DatabricksRest]:
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()

    # -- state -------------------------------------------------------------------------------------

    def add_version(
        self, name: str, tags: dict[str, str] | None = None, *, run_id: str = "", files: Path | None = None
    ) -> str:
        """Register a new version (the model too, if new); returns its number."""
        with self._lock:
            model = self.models.setdefault(name, _Model(name))
            number = str(len(model.versions) + 1)
            model.versions[number] = _Version(
                name=name,
                version=number,
                run_id=run_id,
                source=f"dbfs:/databricks/mlflow-tracking/1/{run_id or 'none'}/artifacts/model",
                storage_location=f"abfss://uc@signalboxuc.dfs.core.windows.net/models/{name}/versions/{number}",
                created_ms=1_700_000_000_000 + int(number) * 1000,
                tags=dict(tags or {}),
                files=files,
            )
            return number

    def fail(
        self,
        path: str,
        status: int,
        body: str,
        *,
        content_type: str = "application/json",
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with this status and body."""
        with self._lock:
            self._faults.setdefault(path, []).append(Fault(status, body, content_type, times, delay))

    def count(self, path: str, method: str | None = None) -> int:
        """How many requests reached ``path`` (a prefix ending in ``*`` matches a subtree)."""
        with self._lock:
            calls = list(self.calls)
        if path.endswith("*"):
            return sum(1 for c in calls if c.path.startswith(path[:-1]) and method in (None, c.method))
        return sum(1 for c in calls if c.path == path and method in (None, c.method))

    def api_calls(self) -> list[Call]:
        """The registry and file API requests (not the SDK's host-metadata probe)."""
        with self._lock:
            return [c for c in self.calls if c.path.startswith("/api/")]

    # -- dispatch ------------------------------------------------------------------------------

    def _fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    def _model(self, name: str) -> _Model:
        model = self.models.get(name)
        if model is None:
            raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Registered model '{name}' does not exist.")
        return model

    def _version(self, name: str, version: Any) -> _Version:
        found = self._model(name).versions.get(str(version))
        if found is None:
            raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Model version '{name}' v{version} does not exist.")
        return found

    def _version_json(self, v: _Version, *, with_tags: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": v.name,
            "version": v.version,
            "creation_timestamp": v.created_ms,
            "last_updated_timestamp": v.created_ms,
            "user_id": "signalbox@example.com",
            "source": v.source,
            "run_id": v.run_id,
            "status": "READY",
        }
        if self.unity_catalog:
            body["storage_location"] = v.storage_location
        else:
            body["current_stage"] = "None"
        if with_tags:
            body["tags"] = [{"key": k, "value": val} for k, val in v.tags.items()]
            if self.unity_catalog:
                aliases = self.models[v.name].aliases
                body["aliases"] = [{"alias": a, "version": n} for a, n in sorted(aliases.items()) if n == v.version]
        return body

    def _search(self, params: dict[str, Any]) -> dict[str, Any]:
        condition = _FILTER.match(str(params.get("filter") or ""))
        if condition is None:
            raise _ApiError(
                "INVALID_PARAMETER_VALUE",
                f"Unsupported filter query: {params.get('filter')!r}. "
                "Only a single condition on name or run_id is supported.",
            )
        key, value = condition.group(1), condition.group(2) if condition.group(2) is not None else condition.group(3)
        found = [
            v
            for m in self.models.values()
            for v in m.versions.values()
            if (v.name if key == "name" else v.run_id) == value
        ]
        limit = int(params.get("max_results") or 10_000)
        start = int(params.get("page_token") or 0)
        page = found[start : start + limit]
        body: dict[str, Any] = {
            # Unity Catalog searches answer versions without tags or aliases; the workspace answers tags.
            "model_versions": [self._version_json(v, with_tags=not self.unity_catalog) for v in page]
        }
        if start + limit < len(found):
            body["next_page_token"] = str(start + limit)
        return body

    def _registered_model_json(self, m: _Model) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": m.name,
            "creation_timestamp": 1_700_000_000_000,
            "tags": [{"key": k, "value": v} for k, v in m.tags.items()],
        }
        if self.unity_catalog:
            body["aliases"] = [{"alias": a, "version": n} for a, n in sorted(m.aliases.items())]
        return body

    def handle(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The JSON answer to one API request."""
        if path.startswith((f"{WS}/experiments/", f"{WS}/runs/")):  # tracking: the same under either registry
            with self._lock:
                return self._tracking(method, path.removeprefix(WS), params)
        base = UC if self.unity_catalog else WS
        route = path.removeprefix(base) if path.startswith(base + "/") else None
        if self.unity_catalog is False and path.startswith(UC + "/"):
            route = None
        with self._lock:
            if route == "/model-versions/search" and method == "GET":
                return 200, self._search(params)
            if route == "/model-versions/get" and method == "GET":
                version = self._version(params.get("name", ""), params.get("version"))
                return 200, {"model_version": self._version_json(version, with_tags=True)}
            if route == "/model-versions/get-download-uri" and method == "GET":
                version = self._version(params.get("name", ""), params.get("version"))
                # The workspace registry keeps its own copy of a version's files, readable only through
                # the registry's signed URLs (below), not through the DBFS API.
                uri = version.storage_location if self.unity_catalog else registry_copy(version)
                return 200, {"artifact_uri": uri}
            if route == "/model-versions/set-tag" and method == "POST":
                self._version(params["name"], params["version"]).tags[params["key"]] = params["value"]
                return 200, {}
            if route == "/model-versions/delete-tag" and method == "DELETE":
                self._version(params["name"], params["version"]).tags.pop(params["key"], None)
                return 200, {}
            if route == "/registered-models/get" and method == "GET":
                return 200, {"registered_model": self._registered_model_json(self._model(params.get("name", "")))}
            if route == "/registered-models/create" and method == "POST":
                if params["name"] in self.models:
                    raise _ApiError("RESOURCE_ALREADY_EXISTS", f"Registered model '{params['name']}' already exists.")
                self.models[params["name"]] = _Model(params["name"])
                return 200, {"registered_model": self._registered_model_json(self.models[params["name"]])}
            if route == "/registered-models/set-tag" and method == "POST":
                self._model(params["name"]).tags[params["key"]] = params["value"]
                return 200, {}
            if route == "/registered-models/alias":
                if not self.unity_catalog:
                    verb = {"GET": "get_model_version_by_alias", "POST": "set_registered_model_alias"}
                    raise _ApiError(
                        "INTERNAL_ERROR",
                        WORKSPACE_ALIAS_ERROR.format(method=verb.get(method, "delete_registered_model_alias")),
                    )
                model = self._model(params.get("name", ""))
                alias = params.get("alias", "")
                if method == "GET":
                    if alias not in model.aliases:
                        raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Alias '{alias}' does not exist.")
                    version = model.versions[model.aliases[alias]]
                    return 200, {"model_version": self._version_json(version, with_tags=True)}
                if method == "POST":
                    self._version(model.name, params["version"])
                    model.aliases[alias] = str(params["version"])
                    return 200, {}
                if method == "DELETE":
                    if alias not in model.aliases:
                        raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Alias '{alias}' does not exist.")
                    del model.aliases[alias]
                    return 200, {}
            if self.unity_catalog:
                return self._uc_files(method, path, route, params)
            return self._registry_files(method, route, params)
        raise _ApiError("ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    # -- Unity Catalog model files -------------------------------------------------------------------

    def _uc_files(
        self, method: str, path: str, route: str | None, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if route == "/registered-models:is-databricks-sdk-models-artifact-repository-enabled":
            return 200, {"is_databricks_sdk_models_artifact_repository_enabled": False}
        if route == "/model-versions/generate-temporary-credentials" and method == "POST":
            self._version(params["name"], params["version"])
            if params.get("operation") != "MODEL_VERSION_OPERATION_READ":
                raise _ApiError("PERMISSION_DENIED", f"operation {params.get('operation')} is not granted")
            return 200, {
                "credentials": {
                    "azure_user_delegation_sas": {"sas_token": "sv=2024-05-04&sr=d&sp=rl&sig=local"},
                    "expiration_time": int(time.time() * 1000) + 3_600_000,
                    "storage_mode": self.storage_mode,
                }
            }
        if path.startswith("/api/2.0/fs/directories/Models/") and method == "GET":
            folder, relative = self._files(path.removeprefix("/api/2.0/fs/directories"))
            target = folder / relative if relative else folder
            if not target.is_dir():
                raise _ApiError("NOT_FOUND", f"{path} is not a directory", status=404)
            prefix = path.removeprefix("/api/2.0/fs/directories").rstrip("/")
            return 200, {
                "contents": [
                    {"path": f"{prefix}/{child.name}", "is_directory": child.is_dir(), "name": child.name}
                    | ({} if child.is_dir() else {"file_size": child.stat().st_size})
                    for child in sorted(target.iterdir())
                ]
            }
        if path == "/api/2.0/fs/create-download-url" and method == "POST":
            folder, relative = self._files(params["path"])
            if not (folder / relative).is_file():
                raise _ApiError("NOT_FOUND", f"{params['path']} does not exist", status=404)
            return 200, {
                "url": f"{self.url}/presigned{quote(params['path'])}",
                "headers": [{"name": PRESIGNED_HEADER, "value": "signed"}],
            }
        raise _ApiError("ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    # -- tracking: experiments and runs ------------------------------------------------------------------

    def _tracking(self, method: str, route: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The MLflow tracking calls of a Databricks workspace (REST reference: Experiments API)."""
        if route == "/experiments/get-by-name" and method == "GET":
            name = params.get("experiment_name", "")
            found = next((e for e in self.experiments.values() if e["name"] == name), None)
            if found is None:
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Node named '{name}' does not exist.")
            return 200, {"experiment": found}
        if route == "/experiments/create" and method == "POST":
            name = str(params.get("name") or "")
            if not name.startswith("/"):
                raise _ApiError(
                    "INVALID_PARAMETER_VALUE",
                    f"Got an invalid experiment name '{name}'. An experiment name must be an absolute path "
                    "within the Databricks workspace, e.g. '/Users/<some-username>/my-experiment'.",
                )
            if name.rsplit("/", 1)[0] not in WORKSPACE_FOLDERS:
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Parent directory {name.rsplit('/', 1)[0]} does not exist.")
            if any(e["name"] == name for e in self.experiments.values()):
                raise _ApiError("RESOURCE_ALREADY_EXISTS", f"Node named '{name}' already exists")
            _check_tags(params.get("tags") or [])
            experiment_id = str(4_000_000_000_000_000 + len(self.experiments) + 1)
            self.experiments[experiment_id] = {
                "experiment_id": experiment_id,
                "name": name,
                "artifact_location": f"dbfs:/databricks/mlflow-tracking/{experiment_id}",
                "lifecycle_stage": "active",
                "creation_time": int(time.time() * 1000),
                "last_update_time": int(time.time() * 1000),
                "tags": list(params.get("tags") or []),
            }
            return 200, {"experiment_id": experiment_id}
        if route == "/runs/create" and method == "POST":
            experiment_id = str(params.get("experiment_id") or "")
            if experiment_id not in self.experiments:
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Experiment {experiment_id} does not exist.")
            tags = list(params.get("tags") or [])
            _check_tags(tags)
            run_id = f"{len(self.runs) + 1:032x}"
            info = {
                "run_id": run_id,
                "run_uuid": run_id,
                "experiment_id": experiment_id,
                "run_name": params.get("run_name", ""),
                "status": "RUNNING",
                "start_time": int(params.get("start_time") or time.time() * 1000),
                "artifact_uri": f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts",
                "lifecycle_stage": "active",
            }
            self.runs[run_id] = {"info": info, "data": {"tags": tags}}
            return 200, {"run": self.runs[run_id]}
        if route == "/runs/update" and method == "POST":
            run = self.runs.get(str(params.get("run_id") or params.get("run_uuid") or ""))
            if run is None:
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"Run {params.get('run_id')} does not exist.")
            for key in ("status", "end_time", "run_name"):
                if params.get(key) not in (None, ""):
                    run["info"][key] = params[key]
            return 200, {"run_info": run["info"]}
        if route == "/runs/search" and method == "POST":
            return 200, self._search_runs(params)
        raise _ApiError("ENDPOINT_NOT_FOUND", f"No API found for '{method} {WS}{route}'")

    def _search_runs(self, params: dict[str, Any]) -> dict[str, Any]:
        # The reference documents filters over params, metrics and tags; this server serves none, so a
        # filter the adapter relies on shows here instead of passing unexamined.
        if params.get("filter"):
            raise _ApiError("INVALID_PARAMETER_VALUE", f"this test server serves no run filters: {params['filter']!r}")
        limit = int(params.get("max_results") or 1000)
        if not 0 < limit <= 50_000:
            raise _ApiError("INVALID_PARAMETER_VALUE", f"max_results {limit} is over the threshold of 50000")
        order = list(params.get("order_by") or [])
        if order not in ([], ["attributes.start_time DESC"], ["start_time DESC"]):
            raise _ApiError("INVALID_PARAMETER_VALUE", f"this test server orders only by start_time DESC: {order}")
        wanted = set(params.get("experiment_ids") or [])
        found = sorted(
            (r for r in self.runs.values() if r["info"]["experiment_id"] in wanted),
            key=lambda r: (-r["info"]["start_time"], r["info"]["run_id"]),  # the documented default order
        )
        start = int(params.get("page_token") or 0)
        body: dict[str, Any] = {"runs": found[start : start + limit]}
        if start + limit < len(found):
            body["next_page_token"] = str(start + limit)
        return body

    # -- workspace registry model files ----------------------------------------------------------------

    def _registry_files(self, method: str, route: str | None, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """What MLflow's ``DatabricksModelsArtifactRepository`` asks of the workspace registry."""
        if route == "/model-versions/list-artifacts" and method == "GET":
            folder = self._registry_folder(params["name"], params["version"])
            relative = params.get("path") or ""
            target = folder / relative if relative else folder
            if target.is_file():  # a file lists as itself
                return 200, {"files": [{"path": relative, "is_dir": False, "file_size": target.stat().st_size}]}
            if not target.is_dir():
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"{relative} does not exist")
            return 200, {
                "files": [
                    {"path": f"{relative}/{child.name}".lstrip("/"), "is_dir": child.is_dir()}
                    | ({} if child.is_dir() else {"file_size": child.stat().st_size})
                    for child in sorted(target.iterdir())
                ]
            }
        if route == "/model-versions/get-signed-download-uri" and method == "GET":
            folder = self._registry_folder(params["name"], params["version"])
            if not (folder / params.get("path", "")).is_file():
                raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"{params.get('path')} does not exist")
            path = f"/registry/{params['name']}/{params['version']}/{params['path']}"
            return 200, {
                "signed_uri": f"{self.url}/presigned{quote(path)}",
                "headers": [{"name": PRESIGNED_HEADER, "value": "signed"}],
            }
        raise _ApiError("ENDPOINT_NOT_FOUND", f"No API found for '{method} {WS}{route}'")

    def _registry_folder(self, name: str, version: str) -> Path:
        files = self._version(name, version).files
        if files is None:
            raise _ApiError("RESOURCE_DOES_NOT_EXIST", f"{name} v{version} has no files")
        return files

    def _files(self, fs_path: str) -> tuple[Path, str]:
        """The version's folder and the path inside it, from ``/Models/catalog/schema/model/version/...``."""
        parts = fs_path.strip("/").split("/")
        if len(parts) < 5 or parts[0] != "Models":
            raise _ApiError("NOT_FOUND", f"{fs_path} is not a model version path", status=404)
        version = self._version(".".join(parts[1:4]), parts[4])
        if version.files is None:
            raise _ApiError("NOT_FOUND", f"{fs_path} has no files", status=404)
        return version.files, "/".join(parts[5:])

    def presigned(self, path: str) -> bytes | None:
        """The bytes of a file a presigned URL names."""
        signed = unquote(path.removeprefix("/presigned"))
        with self._lock:
            try:
                if signed.startswith("/registry/"):
                    _, _, name, version, relative = signed.split("/", 4)
                    folder = self._registry_folder(name, version)
                else:
                    folder, relative = self._files(signed)
            except (_ApiError, ValueError):
                return None
        target = folder / relative
        return target.read_bytes() if target.is_file() else None


# Folders that exist in the test workspace (experiments are created in existing folders only).
WORKSPACE_FOLDERS = frozenset({"/Shared", "/Users/signalbox@example.com"})


def _check_tags(tags: list[dict[str, str]]) -> None:
    """What every Databricks storage backend is documented to accept: 20 tags a request, 250/5000-byte keys/values."""
    if len(tags) > 20:
        raise _ApiError("INVALID_PARAMETER_VALUE", f"{len(tags)} tags in one request; at most 20 are guaranteed")
    for tag in tags:
        if len(str(tag.get("key", "")).encode()) > 250 or len(str(tag.get("value", "")).encode()) > 5000:
            raise _ApiError("INVALID_PARAMETER_VALUE", f"tag {str(tag.get('key'))[:40]!r} is over 250/5000 bytes")


def registry_copy(version: _Version) -> str:
    """Where the workspace registry keeps a version's files (``dbfs:/databricks/mlflow-registry/…``)."""
    return f"dbfs:/databricks/mlflow-registry/{version.created_ms:x}/models/{version.name}"


class _Handler(BaseHTTPRequestHandler):
    api: DatabricksRest
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: _ApiError) -> None:
        self._answer(error.status, json.dumps({"error_code": error.code, "message": error.message}).encode())

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if raw:
            try:
                params.update(json.loads(raw))
            except ValueError:
                return self._error(_ApiError("INVALID_PARAMETER_VALUE", "malformed JSON body"))
        authorization = self.headers.get("Authorization")
        with self.api._lock:
            self.api.calls.append(Call(self.command, path, params, authorization))
        if path.startswith("/presigned/"):
            # Cloud storage: the presigned URL and its headers authorise the read, never the workspace token.
            data = self.api.presigned(path) if self.headers.get(PRESIGNED_HEADER) == "signed" else None
            return (
                self._answer(200, data, "application/octet-stream")
                if data is not None
                else self._answer(403, b"AuthenticationFailed", "text/plain")
            )
        if path == "/.well-known/databricks-config":
            # The Databricks SDK's host-metadata probe (unauthenticated), before each MLflow request.
            metadata = {"oidc_endpoint": f"{self.api.url}/oidc", "workspace_id": WORKSPACE_ID, "cloud": "azure"}
            return self._answer(200, json.dumps(metadata).encode())
        if not path.startswith("/api/"):
            return self._error(_ApiError("ENDPOINT_NOT_FOUND", f"No API found for '{self.command} {path}'"))
        if authorization != f"Bearer {self.api.token}":
            return self._error(_ApiError("UNAUTHENTICATED", "Invalid access token."))
        fault = self.api._fault(path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            return self._answer(fault.status, fault.body.encode(), fault.content_type)
        try:
            status, body = self.api.handle(self.command, path, params)
        except _ApiError as error:
            return self._error(error)
        except KeyError as missing:
            return self._error(_ApiError("INVALID_PARAMETER_VALUE", f"missing field {missing}"))
        self._answer(status, json.dumps(body).encode())

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


def databricks_env(monkeypatch: Any, server: DatabricksRest) -> None:
    """Point MLflow's Databricks stores (and the SDK under them) at the server, and nowhere else."""
    for name in (
        "DATABRICKS_CONFIG_PROFILE",
        "DATABRICKS_CONFIG_FILE",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_AUTH_TYPE",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "ARM_CLIENT_ID",
        "ARM_CLIENT_SECRET",
        "ARM_TENANT_ID",
        "ARM_USE_MSI",
        "MLFLOW_ENABLE_DB_SDK",  # MLflow's default (the SDK client) unless a test picks the requests path
    ):
        monkeypatch.delenv(name, raising=False)
    isolate_mlflow_http_env(monkeypatch)
    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", server.token)
    # No ~/.databrickscfg of the machine may supply another host or credential.
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent/databrickscfg")


def isolate_mlflow_http_env(monkeypatch: Any) -> None:
    """Unset MLflow's HTTP variables for the test, and put them back as they were after it.

    The adapters set them in ``os.environ`` (not through monkeypatch); recording each first makes
    monkeypatch restore it, so no test leaves them behind for the next.
    """
    import os

    from shared.adapters.mlflow.client import HTTP_DEFAULTS

    for name in HTTP_DEFAULTS:
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)


# -- the lifecycle through the handlers, over a registry adapter ------------------------------------


def catalogue_for(model: str, folder: Path) -> Path:
    """The repository catalogue's iris-classifier entry under another name (UC names have dots)."""
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "catalogue.toml").read_text(encoding="utf-8")
    sections = re.split(r"(?m)^(?=\[)", text)
    kept = [s for s in sections if s.startswith("[models.iris-classifier")]
    entry = "".join(kept).replace("[models.iris-classifier", f'[models."{model}"')
    dataset = (repo / "signalbox/examples/iris/evaluation.csv").as_posix()
    entry = re.sub(r'(?m)^dataset = ".*"$', f'dataset = "{dataset}"', entry)
    path = folder / "catalogue.toml"
    path.write_text(entry, encoding="utf-8")
    return path


def lifecycle_step(svc: Any, model: str, version: str, environment: str = "dev") -> list[str]:
    """Announce a version and run every command it leads to through its handler, as the pipeline does."""
    from datetime import UTC, datetime

    from shared import handlers
    from shared.contracts import Envelope, EvaluateVersion

    dispatch = {"evaluate": handlers.evaluate, "promote": handlers.promote, "deploy": handlers.deploy}
    command = EvaluateVersion(model_name=model, version=version)
    svc.bus.send(
        Envelope.start(command, cause=f"test:{model}:{version}", environment=environment, now=datetime.now(UTC))
    )
    outcomes = []
    while svc.bus.sent:
        envelope, _ = svc.bus.sent.pop(0)
        outcomes.append(f"{envelope.command.kind}:{dispatch[envelope.command.kind](envelope, svc)}")
    return outcomes


def tiny_model(folder: Path) -> Path:
    """A small scikit-learn pyfunc model saved in ``folder/model``, as a registry would hold a version's files."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 2))
    labels = (features[:, 0] > 0).astype(int)
    path = folder / "model"
    mlflow.sklearn.save_model(LogisticRegression().fit(features, labels), path, pip_requirements=["scikit-learn"])
    return path


def tiny_dataset(folder: Path) -> Path:
    """An evaluation CSV the tiny model scores perfectly (accuracy 1.0)."""
    path = folder / "evaluation.csv"
    path.write_text("a,b,target\n2.0,0.1,1\n-2.0,0.3,0\n1.5,-1.0,1\n-1.0,2.0,0\n", encoding="utf-8")
    return path
