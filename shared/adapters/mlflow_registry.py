"""The ``Registry`` port over an MLflow model registry (local server, Databricks or Azure ML).

MLflow is imported in the constructor, never at module level, so importing the function
app stays fast; only the code path that builds this adapter pays for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.ports import ModelVersion

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion

__all__ = ["MlflowRegistry"]

# MLflow run ids are 32 hex digits; Azure ML uses job names (letters, digits, "_", "-").
# Either way no quote or space can reach the search filter.
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PAGE_SIZE = 1000


def _error_code(error: Exception) -> str | None:
    code = getattr(error, "error_code", None)
    return code if isinstance(code, str) else None


def _quoted(value: str) -> str | None:
    """A string literal for an MLflow search filter; None when the value cannot be quoted."""
    # MLflow's filter grammar has no escape sequences: pick a quote the value lacks.
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


class MlflowRegistry:
    """Registry port over ``mlflow.MlflowClient``."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._client: MlflowClient = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._mlflow_exception: type[Exception] = MlflowException

    # -- helpers ----------------------------------------------------------------------------

    def _is(self, error: Exception, *codes: str) -> bool:
        return isinstance(error, self._mlflow_exception) and _error_code(error) in codes

    @contextmanager
    def _version_must_exist(self, model_name: str, version: str) -> Iterator[None]:
        """Turn MLflow's "not found" for a version (or its model) into ``LookupError``."""
        try:
            yield
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise LookupError(f"model {model_name} version {version} is not registered") from None
            raise

    def _search(self, filter_string: str) -> Iterator[MlflowModelVersion]:
        page_token: str | None = None
        while True:
            page = self._client.search_model_versions(
                filter_string=filter_string, max_results=_PAGE_SIZE, page_token=page_token
            )
            yield from page
            page_token = page.token
            if not page_token:
                return

    @staticmethod
    def _to_port(version: MlflowModelVersion, aliases: tuple[str, ...] | None = None) -> ModelVersion:
        created_ms: Any = version.creation_timestamp
        return ModelVersion(
            model_name=version.name,
            version=str(version.version),
            run_id=version.run_id or None,  # MLflow reports "" for a version with no run
            source=version.source or None,
            status=str(version.status),
            tags=dict(version.tags or {}),
            aliases=tuple(version.aliases or ()) if aliases is None else aliases,
            created_at=datetime.fromtimestamp(created_ms / 1000, tz=UTC) if created_ms else None,
        )

    def _aliases_by_version(self, model_name: str) -> dict[str, tuple[str, ...]]:
        try:
            model = self._client.get_registered_model(model_name)
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST"):  # deleted since the search
                return {}
            raise
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted((model.aliases or {}).items()):
            by_version.setdefault(str(version), []).append(alias)
        return {version: tuple(aliases) for version, aliases in by_version.items()}

    def _sorted(self, versions: Iterable[MlflowModelVersion]) -> list[ModelVersion]:
        found = list(versions)
        # Searches return versions without their aliases; the registered model holds them.
        aliases = {name: self._aliases_by_version(name) for name in {v.name for v in found}}
        ported = [self._to_port(v, aliases[v.name].get(str(v.version), ())) for v in found]
        return sorted(ported, key=lambda v: (v.model_name, int(v.version) if v.version.isdigit() else 0))

    # -- Registry port ---------------------------------------------------------------------------

    def get_version(self, model_name: str, version: str) -> ModelVersion:
        """One version; raises ``LookupError`` when it does not exist."""
        # MLflow versions are integers; anything else cannot name one.
        if not str(version).isdigit():
            raise LookupError(f"model {model_name} version {version} is not registered")
        with self._version_must_exist(model_name, version):
            found = self._client.get_model_version(model_name, str(version))
        return self._to_port(found)

    def list_versions(self, model_name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first (empty when the model is unknown)."""
        literal = _quoted(model_name)
        if literal is not None:
            return self._sorted(self._search(f"name={literal}"))
        # A name with both kinds of quote cannot be written in a filter: scan and filter here.
        return self._sorted(v for v in self._search("") if v.name == model_name)

    def versions_of_run(self, run_id: str) -> list[ModelVersion]:
        """The versions a training run registered."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self._sorted(self._search(f"run_id='{run_id}'"))

    def set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set (overwrite) tags on a version; ``LookupError`` when it does not exist."""
        with self._version_must_exist(model_name, version):
            for key, value in tags.items():
                self._client.set_model_version_tag(model_name, str(version), key, value)

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        """Remove a tag from a version; no error when it is absent."""
        try:
            self._client.delete_model_version_tag(model_name, str(version), key)
        except Exception as error:
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise
            # Some stores report a missing tag this way: only a missing version is an error.
            self.get_version(model_name, version)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point an alias at a version; ``LookupError`` when it does not exist."""
        with self._version_must_exist(model_name, version):
            self._client.set_registered_model_alias(model_name, alias, str(version))

    def delete_alias(self, model_name: str, alias: str) -> None:
        """Remove an alias; no error when it is absent."""
        try:
            self._client.delete_registered_model_alias(model_name, alias)
        except Exception as error:
            # An unknown model has no aliases either.
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points at, if any."""
        try:
            found = self._client.get_model_version_by_alias(model_name, alias)
        except Exception as error:
            # MLflow's SQL store reports a missing alias as INVALID_PARAMETER_VALUE.
            if self._is(error, "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return str(found.version)

    def model_tags(self, model_name: str) -> dict[str, str]:
        """Tags on the registered model (empty when the model is unknown)."""
        try:
            model = self._client.get_registered_model(model_name)
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                return {}
            raise
        return dict(model.tags or {})

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        """Set a tag on the registered model, creating the model if needed."""
        self.ensure_model(model_name)
        self._client.set_registered_model_tag(model_name, key, value)

    # -- beyond the port -------------------------------------------------------------------------

    def ensure_model(self, name: str) -> None:
        """Create the registered model if it does not exist yet."""
        try:
            self._client.get_registered_model(name)
            return
        except Exception as error:
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise
        try:
            self._client.create_registered_model(name)
        except Exception as error:
            # Another process created it between our read and our write.
            if not self._is(error, "RESOURCE_ALREADY_EXISTS"):
                raise
