"""The ``Registry`` port over an MLflow model registry (local server, Databricks, Unity Catalog, Azure ML).

MLflow is imported in the constructor, never at module level, so importing the function
app stays fast; only the code path that builds this adapter pays for it.

What differs by registry (known from the registry URI's scheme, see ``Capabilities``):

- Unity Catalog (``databricks-uc``): a search takes one ``name=`` or ``run_id=`` condition and
  returns versions without tags or aliases, so each found version is read with
  ``get_model_version`` (in parallel) and tags are matched here.
- Databricks workspace registry (``databricks``): no aliases. The stage tags carry the lifecycle:
  ``champion`` is the version tagged ``stage=production``, ``challenger`` the one tagged
  ``stage=staged``; setting or deleting an alias does nothing.
- MLflow's own stores (SQL, an MLflow server, Azure ML): tag-filtered searches and aliases.

A model's history (``shared.history``) is one MLflow run per entry, its fields as run tags, in the
experiment ``signalbox-history-<model>`` (on Databricks ``/Shared/signalbox-history-<model>``) of the
same tracking server: tags on the registered model or its versions cannot hold it everywhere (Unity
Catalog allows 50 tags per object, 1,000 characters each), a run is written once and never
overwritten, and a start-time search reads a model's entries back a page of 1,000 at a time.

MLflow failures surface as Signalbox errors (``shared.adapters.mlflow.client.translate``): 429, 5xx
and timeouts as ``TransientError``, a missing version as ``UnknownVersion``, 401/403 as
``PermanentError``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from shared.adapters.mlflow.client import Capabilities, bound_http_defaults, translate, workspace_registry_refusal
from shared.errors import UnknownVersion
from shared.ports import ModelVersion

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion

__all__ = ["MlflowRegistry"]

# MLflow run ids are 32 hex digits; Azure ML uses job names (letters, digits, "_", "-").
# Either way no quote or space can reach the search filter.
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PAGE_SIZE = 1000
# Unity Catalog answers tags one version at a time: this many reads in flight at once.
_PARALLEL_READS = 8
# Where a registry has no aliases, the alias each stage stands for (see the module docstring).
_STAGE_OF_ALIAS = {"champion": "production", "challenger": "staged"}
# The history of a model: one run per entry in the experiment ``<prefix><model>``, its fields as tags.
_HISTORY_TAG = "signalbox.history."
_HISTORY_MODEL_TAG = "signalbox.history_of"
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translated(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise MLflow's failures out of a port method as Signalbox errors (see ``translate``)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            translated = translate(error, f"MLflow registry {method.__name__}")
            if translated is error:
                raise
            raise translated from error

    return wrapper


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


def _commit_without_fsync(store: Any) -> None:
    """A local SQLite store commits in WAL mode with ``synchronous = NORMAL``, as the local queues do.

    In its default rollback-journal mode every tag write waited for two or three fsyncs, which
    made the registry write of each landed blob the slowest step of ingress. A crashed (even
    kill -9'd) process loses nothing this way; only a power cut can drop the last commits.
    """
    import contextlib
    import sqlite3

    from sqlalchemy import event

    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return

    def pragmas(connection: sqlite3.Connection, _record: object) -> None:
        cursor = connection.cursor()
        # The mode is kept in the file; another process mid-transaction may refuse the switch for now.
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened while the store was created get the pragmas too


class MlflowRegistry:
    """Registry port over ``mlflow.MlflowClient``."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, history_prefix: str | None = None) -> None:
        bound_http_defaults()  # before the first request: MLflow reads them per request
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._client: MlflowClient = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._tracking_uri = tracking_uri
        # Databricks experiments live in the workspace tree: /Shared exists in every workspace.
        self._history_prefix = history_prefix or (
            "/Shared/signalbox-history-" if tracking_uri.startswith("databricks") else "signalbox-history-"
        )
        self._history_experiments: dict[str, str] = {}
        self._mlflow_exception: type[Exception] = MlflowException
        # The URI MLflow resolved (a "databricks" tracking URI alone means Unity Catalog in MLflow 3).
        self.registry_uri: str = str(self._client._registry_uri)
        self.capabilities = Capabilities.of(self.registry_uri)
        if self.registry_uri.startswith("sqlite:"):
            _commit_without_fsync(self._writer.store)

    @property
    def _writer(self) -> Any:
        """The client's registry client: writes through it skip ``MlflowClient``'s prompt check.

        ``MlflowClient`` reads the whole registered model before each tag or alias write to refuse
        prompts; on the SQL store that read loads every version, so each write cost O(versions).
        Signalbox writes only to the catalogue's models, which are never prompts.
        """
        return self._client._get_registry_client()

    # -- helpers ----------------------------------------------------------------------------

    def _is(self, error: Exception, *codes: str) -> bool:
        return isinstance(error, self._mlflow_exception) and _error_code(error) in codes

    @contextmanager
    def _version_must_exist(self, model_name: str, version: str) -> Iterator[None]:
        """Turn MLflow's "not found" for a version (or its model) into ``UnknownVersion``."""
        try:
            yield
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise UnknownVersion(f"model {model_name} version {version} is not registered") from None
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

    def _to_port(self, version: MlflowModelVersion, aliases: tuple[str, ...] | None = None) -> ModelVersion:
        """A version MLflow read with its tags (never a Unity Catalog search result, which has none)."""
        created_ms: Any = version.creation_timestamp
        tags = dict(version.tags or {})
        if not self.capabilities.aliases:
            # The stage tag stands for the alias the registry cannot hold.
            aliases = tuple(a for a, stage in _STAGE_OF_ALIAS.items() if tags.get("stage") == stage)
        return ModelVersion(
            model_name=version.name,
            version=str(version.version),
            run_id=version.run_id or None,  # MLflow reports "" for a version with no run
            source=version.source or None,
            status=str(version.status),
            tags=tags,
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

    def _read_each(self, found: Iterable[MlflowModelVersion]) -> list[ModelVersion]:
        """Each found version read on its own (tags and aliases), in parallel; the deleted left out."""

        def read(version: MlflowModelVersion) -> ModelVersion | None:
            try:
                return self._to_port(self._client.get_model_version(version.name, str(version.version)))
            except Exception as error:
                if self._is(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):  # deleted since the search
                    return None
                raise

        listed = list(found)
        if len(listed) <= 1:
            read_all = [read(v) for v in listed]
        else:
            with ThreadPoolExecutor(max_workers=min(_PARALLEL_READS, len(listed))) as pool:
                read_all = list(pool.map(read, listed))
        return [v for v in read_all if v is not None]

    def _sorted(self, versions: Iterable[MlflowModelVersion]) -> list[ModelVersion]:
        found = list(versions)
        # A Unity Catalog search result (``ModelVersionSearch``) has methods that raise where tags and
        # aliases should be: read those versions one by one, whatever the URI said.
        if not self.capabilities.search_tags or any(callable(v.tags) for v in found):
            ported = self._read_each(found)
        elif not self.capabilities.aliases:
            ported = [self._to_port(v) for v in found]
        else:
            # Searches return versions without their aliases; the registered model holds them.
            aliases = {name: self._aliases_by_version(name) for name in {v.name for v in found}}
            ported = [self._to_port(v, aliases[v.name].get(str(v.version), ())) for v in found]
        return sorted(ported, key=lambda v: (v.model_name, int(v.version) if v.version.isdigit() else 0))

    # -- Registry port ---------------------------------------------------------------------------

    @_translated
    def get_version(self, model_name: str, version: str) -> ModelVersion:
        """One version; raises ``UnknownVersion`` (a ``LookupError``) when it does not exist."""
        # MLflow versions are integers; anything else cannot name one.
        if not str(version).isdigit():
            raise UnknownVersion(f"model {model_name} version {version} is not registered")
        with self._version_must_exist(model_name, version):
            found = self._client.get_model_version(model_name, str(version))
        return self._to_port(found)

    @_translated
    def list_versions(self, model_name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first (empty when the model is unknown).

        One search page per 1,000 versions, plus, on Unity Catalog, one read per version.
        """
        literal = _quoted(model_name)
        if literal is not None:
            return self._sorted(self._search(f"name={literal}"))
        # A name with both kinds of quote cannot be written in a filter: scan and filter here.
        return self._sorted(v for v in self._search("") if v.name == model_name)

    @_translated
    def versions_of_run(self, run_id: str) -> list[ModelVersion]:
        """The versions a training run registered."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"not a run id: {run_id!r}")
        return self._sorted(self._search(f"run_id='{run_id}'"))

    @_translated
    def versions_with_tag(self, model_name: str, key: str, value: str) -> list[ModelVersion]:
        """The versions of a model whose tag ``key`` is ``value``, oldest first.

        A tag-filtered search where the registry has one (MLflow's own stores), so the cost follows
        the matches, not the versions registered. Databricks registries accept one ``name=``
        condition only: their versions are listed and matched here (on Unity Catalog that is one
        search page per 1,000 versions and one read per version, ``_PARALLEL_READS`` at a time).
        """
        name, wanted = _quoted(model_name), _quoted(value)
        if not self.capabilities.tag_search or name is None or wanted is None or "`" in key:
            return [v for v in self.list_versions(model_name) if v.tags.get(key) == value]
        try:
            found = list(self._search(f"name={name} AND tags.`{key}`={wanted}"))
        except Exception as error:
            if not self._is(error, "INVALID_PARAMETER_VALUE"):
                raise
            return [v for v in self.list_versions(model_name) if v.tags.get(key) == value]
        # Few match: read each with its aliases rather than the registered model with all its versions.
        ported = []
        for version in found:
            try:
                ported.append(self.get_version(model_name, str(version.version)))
            except LookupError:  # deleted since the search
                continue
        return sorted(ported, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    @_translated
    def versions_after(self, model_name: str, version: str, limit: int) -> list[ModelVersion]:
        """The oldest ``limit`` versions numbered above ``version``, oldest first, with their tags (no aliases).

        MLflow's own stores (SQL, an MLflow server): one search, ``version_number > N`` ordered
        ascending. Databricks registries take one ``name=`` condition and no ``order_by`` (Unity
        Catalog refuses it): the versions are searched a page at a time and the search stops at the
        first page that reaches ``version`` while it answers newest first (Databricks' order); a
        registry answering in another order is read to the end. Unity Catalog then reads each new
        version for its tags (its search answers none).
        """
        after = int(version) if str(version).isdigit() else 0
        if limit < 1:
            return []
        name = _quoted(model_name)
        if self.capabilities.tag_search and name is not None:
            try:
                page = self._client.search_model_versions(
                    filter_string=f"name={name} AND version_number > {after}",
                    max_results=limit,
                    order_by=["version_number ASC"],
                )
            except Exception as error:
                if not self._is(error, "INVALID_PARAMETER_VALUE"):
                    raise
            else:
                return [self._to_port(v, ()) for v in page if v.name == model_name]
        newer = sorted(self._newer_than(model_name, after), key=lambda v: int(v.version))[:limit]
        if not self.capabilities.search_tags or any(callable(v.tags) for v in newer):
            return sorted(self._read_each(newer), key=lambda v: int(v.version))
        return [self._to_port(v, ()) for v in newer]

    def _newer_than(self, model_name: str, after: int) -> Iterator[MlflowModelVersion]:
        """The versions of a model numbered above ``after``, from a ``name=`` search, stopping early where it can."""
        name = _quoted(model_name)
        page_token: str | None = None
        while True:
            page = self._client.search_model_versions(
                filter_string=f"name={name}" if name is not None else "",
                max_results=_PAGE_SIZE,
                page_token=page_token,
            )
            mine = [v for v in page if v.name == model_name and str(v.version).isdigit()]
            numbers = [int(v.version) for v in mine]
            yield from (v for v, number in zip(mine, numbers, strict=True) if number > after)
            newest_first = all(a > b for a, b in itertools.pairwise(numbers))
            page_token = page.token
            if not page_token or (newest_first and numbers and numbers[-1] <= after):
                return

    @_translated
    def set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set (overwrite) tags on a version; ``UnknownVersion`` when it does not exist."""
        with self._version_must_exist(model_name, version):
            for key, value in tags.items():
                self._writer.set_model_version_tag(model_name, str(version), key, value)

    @_translated
    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        """Remove a tag from a version; no error when it is absent."""
        try:
            self._writer.delete_model_version_tag(model_name, str(version), key)
        except Exception as error:
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise
            # Some stores report a missing tag this way: only a missing version is an error.
            self.get_version(model_name, version)

    @_translated
    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point an alias at a version; ``UnknownVersion`` when it does not exist.

        Does nothing on a registry without aliases (the Databricks workspace registry): there the
        version's stage tag, set before, already says what the alias would.
        """
        if not self.capabilities.aliases:
            return
        try:
            with self._version_must_exist(model_name, version):
                self._writer.set_registered_model_alias(model_name, alias, str(version))
        except Exception as error:
            if not self._no_aliases(error):
                raise

    @_translated
    def delete_alias(self, model_name: str, alias: str) -> None:
        """Remove an alias; no error when it is absent. Does nothing on a registry without aliases."""
        if not self.capabilities.aliases:
            return
        try:
            self._writer.delete_registered_model_alias(model_name, alias)
        except Exception as error:
            # An unknown model has no aliases either.
            if not (self._is(error, "RESOURCE_DOES_NOT_EXIST") or self._no_aliases(error)):
                raise

    @_translated
    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points at, if any.

        On a registry without aliases (the Databricks workspace registry) ``champion`` is the newest
        version tagged ``stage=production`` and ``challenger`` the newest tagged ``stage=staged``;
        any other alias points nowhere.
        """
        if self.capabilities.aliases:
            try:
                found = self._client.get_model_version_by_alias(model_name, alias)
            except Exception as error:
                # MLflow's SQL store reports a missing alias as INVALID_PARAMETER_VALUE.
                if self._is(error, "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    return None
                if not self._no_aliases(error):
                    raise
            else:
                return str(found.version)
        stage = _STAGE_OF_ALIAS.get(alias)
        if stage is None:
            return None
        tagged = self.versions_with_tag(model_name, "stage", stage)
        return tagged[-1].version if tagged else None

    @_translated
    def model_tags(self, model_name: str) -> dict[str, str]:
        """Tags on the registered model (empty when the model is unknown)."""
        try:
            sql_tags = self._sql_model_tags(model_name)
            if sql_tags is not None:
                return sql_tags
            model = self._client.get_registered_model(model_name)
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                return {}
            raise
        return dict(model.tags or {})

    def _sql_model_tags(self, model_name: str) -> dict[str, str] | None:
        """The model's tags read from MLflow's SQL store alone; None for any other store.

        ``get_registered_model`` on the SQL store builds the model's latest versions from every
        version row, so each read cost O(versions) (112 ms at 1,000 versions against 8 ms at 10) and
        the hold check of every promotion paid it. The store's own lookup (workspace-scoped, raising
        ``RESOURCE_DOES_NOT_EXIST``) plus its tag rows is O(tags).
        """
        store = self._writer.store
        lookup = getattr(store, "_get_registered_model", None)
        sessions = getattr(store, "ManagedSessionMaker", None)
        if lookup is None or sessions is None or getattr(store, "engine", None) is None:
            return None
        with sessions() as session:
            model = lookup(session, model_name)
            return {tag.key: tag.value for tag in model.registered_model_tags}

    @_translated
    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        """Set a tag on the registered model, creating the model if needed."""
        try:
            self._writer.set_registered_model_tag(model_name, key, value)
            return
        except Exception as error:
            # The model exists but for the first tag: create it only then, not with a read every time.
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST"):
                raise
        self.ensure_model(model_name)
        self._writer.set_registered_model_tag(model_name, key, value)

    @_translated
    def delete_model_tag(self, model_name: str, key: str) -> None:
        """Remove a tag from the registered model; no error when it (or the model) is absent."""
        try:
            self._writer.delete_registered_model_tag(model_name, key)
        except Exception as error:
            if not self._is(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise

    @_translated
    def has_model_files(self, model_name: str, version: str) -> bool:
        """Whether the version's ``MLmodel`` can still be listed, through MLflow's ``models:/`` artifact repository.

        One code path for every registry: the repository resolves the version's storage (a run's
        artifacts, a logged model, Unity Catalog's temporary credentials). Storage that answers
        "not found" means the files are gone; a missing version is ``UnknownVersion``.
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.get_version(model_name, version)
        try:
            repository = get_artifact_repository(
                f"models:/{model_name}/{version}", tracking_uri=self._tracking_uri, registry_uri=self.registry_uri
            )
            listed = repository.list_artifacts(None)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except Exception as error:
            if self._is(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return False
            raise
        return any(info.path.rsplit("/", 1)[-1] == "MLmodel" for info in listed)

    @_translated
    def append_history(self, model_name: str, entry: Mapping[str, str]) -> None:
        """One MLflow run per entry in the model's history experiment: ``create_run`` with the entry as tags.

        A run per entry because tags cannot hold an unbounded log everywhere (Unity Catalog allows
        50 tags per registered model or version, 1,000 characters each); runs are append-only,
        one request writes one (plus one experiment lookup per process), and a search reads them back.
        """
        experiment_id = self._history_experiment(model_name)
        assert experiment_id is not None  # created when missing
        at = datetime.fromisoformat(entry["at"])
        tags = {f"{_HISTORY_TAG}{key}": value for key, value in entry.items()}
        tags[_HISTORY_MODEL_TAG] = model_name
        run = self._client.create_run(
            experiment_id,
            start_time=int(at.timestamp() * 1000),
            tags=tags,
            run_name=str(entry.get("kind", "entry"))[:200],
        )
        # Finished at once, so the MLflow UI shows it as a record rather than a running job. Through the
        # store: ``set_terminated`` also prints a "View run at <url>" line per call into the host's log.
        from mlflow.entities import RunStatus

        self._client._tracking_client.store.update_run_info(
            run.info.run_id, run_status=RunStatus.FINISHED, end_time=int(at.timestamp() * 1000), run_name=None
        )

    @_translated
    def history(self, model_name: str, since: datetime | None = None) -> list[dict[str, str]]:
        """The model's entries at or after ``since``, newest first: one search page per 1,000 entries.

        Runs come newest first and the reading stops at the first one before ``since``: no search filter,
        because Databricks documents run filters over params, metrics and tags only, not start times.
        """
        experiment_id = self._history_experiment(model_name, create=False)
        if experiment_id is None:
            return []
        since_ms = int(since.timestamp() * 1000) if since is not None else None
        entries: list[dict[str, str]] = []
        page_token: str | None = None
        while True:
            page = self._client.search_runs(
                [experiment_id],
                max_results=_PAGE_SIZE,
                order_by=["attributes.start_time DESC"],
                page_token=page_token,
            )
            for run in page:
                if since_ms is not None and run.info.start_time < since_ms:
                    return entries
                tags = run.data.tags
                if tags.get(_HISTORY_MODEL_TAG) != model_name:
                    continue
                entries.append({k.removeprefix(_HISTORY_TAG): v for k, v in tags.items() if k.startswith(_HISTORY_TAG)})
            page_token = page.token
            if not page_token:
                return entries

    def _history_experiment(self, model_name: str, *, create: bool = True) -> str | None:
        """The id of the model's history experiment (created on the first entry), remembered per process."""
        known = self._history_experiments.get(model_name)
        if known is not None:
            return known
        name = f"{self._history_prefix}{model_name}"
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = str(found.experiment_id)
        elif not create:
            return None
        else:
            try:
                experiment_id = str(self._client.create_experiment(name, tags={_HISTORY_MODEL_TAG: model_name}))
            except Exception as error:
                # Another worker created it first (Databricks may answer ALREADY_EXISTS instead: documented).
                if not self._is(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
                again = self._client.get_experiment_by_name(name)
                if again is None:
                    raise
                experiment_id = str(again.experiment_id)
        self._history_experiments[model_name] = experiment_id
        return experiment_id

    # -- beyond the port -------------------------------------------------------------------------

    def _no_aliases(self, error: Exception) -> bool:
        """Whether MLflow refused an alias method because the registry has none; remembers it.

        The registry URI's scheme normally tells; this catches a workspace registry reached under
        another URI, once, so later calls go straight to the stage tags.
        """
        if self._is(error, "INTERNAL_ERROR") and workspace_registry_refusal(error):
            self.capabilities.aliases = False
            return True
        return False

    @_translated
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
