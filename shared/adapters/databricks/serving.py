"""The ``Serving`` port over Databricks Model Serving (databricks-sdk ``WorkspaceClient``).

Blue/green on one serving endpoint is done with served entities and the traffic config:

- Each model version is its own **served entity**, named ``{model}-{version}`` (characters
  outside ``[A-Za-z0-9_-]`` become ``-``, at most 63 characters, the version kept whole); it
  serves the registered model ``{registry_prefix}{model}`` (e.g. ``main.ml.`` for a Unity
  Catalog schema) at that version. ``Deployment.slot`` is the served entity's name.
- ``start`` adds the new entity with 0% of the traffic next to the ones serving (or creates the
  endpoint with it at 100% when there is no endpoint: it then takes traffic from nothing), and
  returns without waiting. Entities of the same model left with 0% by an earlier deploy whose
  ``stop`` could not run are dropped in the same update.
- ``readiness`` reads the endpoint: the entity active and ``DEPLOYMENT_READY`` is ready; a config
  update ``IN_PROGRESS`` is pending; ``UPDATE_FAILED`` (or a failed entity) is failed, with the
  entity's deployment message as the reason.
- ``invoke`` sends the smoke request to the new entity alone, at
  ``POST /serving-endpoints/{endpoint}/served-models/{entity}/invocations`` (the endpoint's
  per-served-model route), so it never depends on, or disturbs, the traffic split.
- ``route`` sends 100% of the traffic to the entity, keeping every entity; ``stop`` removes one
  entity and its route (a share it still had moves to the entity with the most traffic); stopping
  the endpoint's only entity deletes the endpoint. A rollback is ``stop(candidate)``: the old
  entity keeps its 100%.

Databricks refuses a config change while another is being applied (``state.config_update`` is
``IN_PROGRESS``; a ``PUT …/config`` then answers 409 ``RESOURCE_CONFLICT``). ``start``, ``route``
and ``stop`` then raise ``TransientError`` saying "config update in progress" (a 409 too), and
change nothing: the caller checks again later from a scheduled message. ``stop`` right after
``route`` always meets the routing update, so the deploy handler must re-send the stop of the old
entity rather than drop it (a ``start`` of the same model still removes unrouted leftovers).

Sizing: each new served entity gets its endpoint's ``workload_size`` and ``scale_to_zero_enabled``
(``sizing``, from the catalogue's deployment section through ``sizing_from_catalogue``; Small and
scale-to-zero by default); entities already serving are sent back as they are.

Endpoint names follow Databricks' rule (letters, digits, ``-`` and ``_``; at most 63 characters
here, as served entity names): any other name is a ``PermanentError`` before any request.

Errors become ``TransientError`` / ``PermanentError`` as in ``databricks_compute``; no SDK import at
module level.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.adapters.databricks.compute import (
    DEFAULT_HTTP_TIMEOUT_SECONDS,
    DEFAULT_RETRY_TIMEOUT_SECONDS,
    LazyWorkspace,
    sdk_errors,
)
from shared.errors import PermanentError, TransientError
from shared.ports import Deployment, Readiness, ScoringFrame

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from databricks.sdk.service.serving import (
        EndpointCoreConfigOutput,
        EndpointPendingConfig,
        ServedEntityInput,
        ServedEntityOutput,
        ServingEndpointDetailed,
        TrafficConfig,
    )

    from shared.catalogue import Catalogue

__all__ = ["DatabricksServing", "EntitySizing", "check_endpoint_name", "served_entity_name", "sizing_from_catalogue"]

log = logging.getLogger("signalbox.serving.databricks")

_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MAX_ENDPOINT_NAME = 63
_NOT_ENTITY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_MAX_ENTITY_NAME = 63
_MAX_MESSAGE = 500
_READY = "DEPLOYMENT_READY"
_FAILED = ("DEPLOYMENT_FAILED", "DEPLOYMENT_ABORTED")


def served_entity_name(model_name: str, version: str) -> str:
    """The served entity of one model version: ``{model}-{version}`` in the allowed characters."""
    suffix = "-" + _NOT_ENTITY_CHARS.sub("-", str(version))
    base = _NOT_ENTITY_CHARS.sub("-", model_name).strip("-") or "model"
    return base[: max(1, _MAX_ENTITY_NAME - len(suffix))] + suffix


@dataclass(frozen=True)
class EntitySizing:
    """The compute of the served entities Signalbox adds to one endpoint."""

    workload_size: str = "Small"
    scale_to_zero_enabled: bool = True


def sizing_from_catalogue(catalogue: Catalogue) -> dict[str, EntitySizing]:
    """Each real-time endpoint's sizing from the catalogue's deployment sections (one endpoint, one sizing)."""
    sizing: dict[str, EntitySizing] = {}
    for model in catalogue.models.values():
        deployment = model.deployment
        if deployment is None or deployment.mode != "real_time":
            continue
        wanted = EntitySizing(deployment.workload_size, deployment.scale_to_zero_enabled)
        if sizing.setdefault(deployment.endpoint, wanted) != wanted:
            raise PermanentError(
                f"serving endpoint {deployment.endpoint}: models of the catalogue give it different "
                "workload_size / scale_to_zero_enabled; make them agree"
            )
    return sizing


def check_endpoint_name(endpoint: str) -> str:
    """The name, when Databricks accepts it as a serving endpoint name; else ``PermanentError`` saying why."""
    # The name becomes a URL path segment: nothing outside Databricks' characters may pass.
    if not isinstance(endpoint, str) or not endpoint:
        raise PermanentError("the serving endpoint name is empty: set deployment.endpoint in the catalogue")
    if len(endpoint) > _MAX_ENDPOINT_NAME:
        raise PermanentError(
            f"serving endpoint name {endpoint[:20]!r}... is {len(endpoint)} characters; Databricks allows at most "
            f"{_MAX_ENDPOINT_NAME} (deployment.endpoint in the catalogue)"
        )
    if not _ENDPOINT_NAME.match(endpoint):
        raise PermanentError(
            f"invalid serving endpoint name {endpoint!r} (deployment.endpoint in the catalogue): Databricks allows "
            "letters, digits, '-' and '_' only, starting with a letter or digit"
        )
    return endpoint


_check_endpoint = check_endpoint_name


def _value(enum_or_none: Any) -> str | None:
    value = getattr(enum_or_none, "value", enum_or_none)
    return value if isinstance(value, str) else None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _entities(config: EndpointCoreConfigOutput | EndpointPendingConfig | None) -> list[ServedEntityOutput]:
    return [e for e in (config.served_entities or []) if e.name] if config is not None else []


def _traffic(config: EndpointCoreConfigOutput | EndpointPendingConfig | None) -> dict[str, int]:
    """Served entity name → traffic percentage; a lone entity without routes takes it all."""
    if config is None:
        return {}
    routes = config.traffic_config.routes if config.traffic_config is not None else None
    if routes:
        return {
            name: route.traffic_percentage
            for route in routes
            if (name := route.served_model_name or route.served_entity_name)
        }
    entities = _entities(config)
    return {entities[0].name or "": 100} if len(entities) == 1 else {}


def _deployment_state(entity: ServedEntityOutput | None) -> tuple[str | None, str]:
    if entity is None or entity.state is None:
        return None, ""
    return _value(entity.state.deployment), entity.state.deployment_state_message or ""


class DatabricksServing(LazyWorkspace):
    """Blue/green deployments as served entities of a Databricks Model Serving endpoint."""

    def __init__(
        self,
        *,
        host: str | None = None,
        token: str | None = None,
        client: Any = None,
        registry_prefix: str = "",
        workload_size: str = "Small",
        scale_to_zero_enabled: bool = True,
        workload_type: str | None = None,
        sizing: Mapping[str, EntitySizing] | None = None,
        retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
        http_timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS,
        azure_credential: TokenCredential | None = None,
    ) -> None:
        LazyWorkspace.__init__(
            self,
            host=host,
            token=token,
            client=client,
            retry_timeout_seconds=retry_timeout_seconds,
            http_timeout_seconds=http_timeout_seconds,
            azure_credential=azure_credential,
        )
        self.sizing = dict(sizing or {})
        prefix = registry_prefix.strip()
        self.registry_prefix = prefix if not prefix or prefix.endswith(".") else prefix + "."
        self.workload_size = workload_size
        self.scale_to_zero_enabled = scale_to_zero_enabled
        self.workload_type = workload_type

    # -- naming ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The workspace URL, without a trailing slash."""
        return str(self._client.config.host or "").rstrip("/")

    def endpoint_url(self, endpoint: str) -> str:
        """The endpoint's stable scoring URL."""
        return f"{self.host}/serving-endpoints/{_check_endpoint(endpoint)}/invocations"

    def entity_url(self, endpoint: str, entity: str) -> str:
        """The scoring URL of one served entity alone."""
        return f"{self.host}/serving-endpoints/{_check_endpoint(endpoint)}/served-models/{entity}/invocations"

    def registered_name(self, model_name: str) -> str:
        """The registered model a served entity serves (the registry prefix applied)."""
        if self.registry_prefix and not model_name.startswith(self.registry_prefix):
            return self.registry_prefix + model_name
        return model_name

    def _model_of(self, entity: ServedEntityOutput) -> str:
        name = entity.entity_name or entity.name or ""
        return name.removeprefix(self.registry_prefix) if self.registry_prefix else name

    # -- Serving ---------------------------------------------------------------------------

    def current(self, endpoint: str) -> Deployment | None:
        """The served entity taking all (or most) of the endpoint's traffic; None without one.

        While a config update applies, the entity its pending config routes to: the endpoint is moving
        there, and an old entity the active config still routes must not look like it serves again.
        """
        detail = self._get(endpoint)
        if detail is None:
            return None
        config: Any = detail.config
        if self._updating(detail) and detail.pending_config is not None and _entities(detail.pending_config):
            config = detail.pending_config
        if config is None:
            return None
        traffic = _traffic(config)
        entities = _entities(config)
        if not entities:
            return None
        best = max(entities, key=lambda e: traffic.get(e.name or "", 0))  # first one on a tie
        if traffic.get(best.name or "", 0) <= 0:
            return None
        return Deployment(
            endpoint=endpoint,
            model_name=self._model_of(best),
            version=str(best.entity_version or ""),
            slot=best.name or "",
            url=self.endpoint_url(endpoint),
        )

    def start(self, endpoint: str, model_name: str, version: str) -> Deployment:
        """Add the version as a served entity with 0% traffic (100% on a new endpoint); does not wait."""
        from databricks.sdk.service.serving import EndpointCoreConfigInput

        _check_endpoint(endpoint)
        entity = served_entity_name(model_name, version)
        deployment = Deployment(endpoint, model_name, str(version), entity, self.entity_url(endpoint, entity))
        new = self._new_entity(endpoint, entity, model_name, str(version))
        detail = self._get(endpoint)
        if detail is None:
            config = EndpointCoreConfigInput(
                name=endpoint, served_entities=[new], traffic_config=self._routes({entity: 100})
            )
            with self._errors(f"create serving endpoint {endpoint}", endpoint):
                self._client.serving_endpoints.create(endpoint, config=config)
            log.info("serving endpoint %s: created with %s v%s as %s", endpoint, model_name, version, entity)
            return deployment

        active = _entities(detail.config)
        updating = self._updating(detail)
        pending_names = {e.name for e in _entities(detail.pending_config)}
        if entity in {e.name for e in active} or (updating and entity in pending_names):
            return deployment  # a redelivered command: it is there or on its way
        if updating:
            raise TransientError(
                f"serving endpoint {endpoint}: config update in progress (another config update); "
                f"{entity} is added on a later delivery"
            )
        traffic = _traffic(detail.config)
        registered = self.registered_name(model_name)
        # Leftovers of this model that take no traffic (a stop deferred during an update) go now.
        leftovers = (
            {e.name for e in active if e.entity_name == registered and traffic.get(e.name or "", 0) == 0}
            if sum(traffic.values()) == 100
            else set()
        )
        keep = [e for e in active if e.name not in leftovers]
        routes = {e.name or "": traffic.get(e.name or "", 0) for e in keep}
        if keep and sum(routes.values()) == 0:
            # Explicit routes are the only way to add an entity without moving traffic to it.
            raise PermanentError(
                f"serving endpoint {endpoint} serves {len(keep)} entities without a traffic config; "
                "give it one (e.g. 100% to the entity serving now) before Signalbox deploys to it"
            )
        routes[entity] = 0 if keep else 100  # nothing serving: it takes no one's traffic
        self._update(endpoint, [*(self._as_input(e) for e in keep), new], routes, doing=f"add {entity}")
        if leftovers:
            log.info(
                "serving endpoint %s: removed unrouted %s", endpoint, ", ".join(sorted(n or "" for n in leftovers))
            )
        log.info(
            "serving endpoint %s: adding %s v%s as %s with %d%% traffic",
            endpoint,
            model_name,
            version,
            entity,
            routes[entity],
        )
        return deployment

    def readiness(self, deployment: Deployment) -> Readiness:
        """Ready when the entity is active and deployed; pending while the update runs; failed with the reason."""
        endpoint, entity = deployment.endpoint, deployment.slot
        detail = self._get(endpoint)
        if detail is None:
            return Readiness("failed", f"serving endpoint {endpoint} does not exist")
        active = {e.name: e for e in _entities(detail.config)}
        pending = {e.name: e for e in _entities(detail.pending_config)}
        update = _value(detail.state.config_update) if detail.state is not None else None
        state, message = _deployment_state(active.get(entity))
        if state == _READY:
            return Readiness("ready")
        if entity in active and state in _FAILED:
            return Readiness("failed", _short(f"{entity} on {endpoint}: {state}: {message or 'no message'}"))
        if update == "IN_PROGRESS":
            pending_state, pending_message = _deployment_state(pending.get(entity))
            if pending_state in _FAILED:
                return Readiness("failed", _short(f"{entity} on {endpoint}: {pending_state}: {pending_message}"))
            if entity in pending or entity in active:
                return Readiness("pending", _short(f"{entity}: {pending_message or message or 'deploying'}"))
            return Readiness("failed", f"served entity {entity} is not part of the update running on {endpoint}")
        if update in ("UPDATE_FAILED", "UPDATE_CANCELED"):
            _, pending_message = _deployment_state(pending.get(entity))
            reason = pending_message or message or "no reason given"
            return Readiness("failed", _short(f"config update of {endpoint} {update}: {entity}: {reason}"))
        if entity not in active:
            return Readiness("failed", f"served entity {entity} is not on serving endpoint {endpoint}")
        return Readiness("pending", _short(f"{entity}: {state or 'no state yet'}: {message}".rstrip(": ")))

    def invoke(self, deployment: Deployment, frame: ScoringFrame) -> object:
        """Score one request on the deployment's served entity alone; returns the parsed JSON answer."""
        endpoint, entity = _check_endpoint(deployment.endpoint), deployment.slot
        if _NOT_ENTITY_CHARS.search(entity):
            raise PermanentError(f"invalid served entity name {entity!r}")
        with self._errors(
            f"smoke request to {entity} on serving endpoint {endpoint}",
            endpoint,
            not_found=f"served entity {entity} not found on serving endpoint {endpoint}",
        ):
            answer: object = self._client.api_client.do(
                "POST",
                f"/serving-endpoints/{endpoint}/served-models/{entity}/invocations",
                body=frame.dataframe_split(),
                headers={"Accept": "application/json", "Content-Type": "application/json"},
            )
        return answer

    def route(self, endpoint: str, deployment: Deployment) -> None:
        """Send 100% of the endpoint's traffic to the deployment's entity, keeping every entity."""
        entity = deployment.slot
        detail = self._get(endpoint)
        if detail is None:
            raise PermanentError(f"cannot route {endpoint} to {entity}: the serving endpoint does not exist")
        active = _entities(detail.config)
        if self._updating(detail):
            if _traffic(detail.pending_config).get(entity) == 100:
                return  # this very change is being applied (a redelivery)
            raise TransientError(
                f"serving endpoint {endpoint}: config update in progress; routing to {entity} waits for it to end"
            )
        if entity not in {e.name for e in active}:
            raise PermanentError(f"cannot route {endpoint} to {entity}: it is not a served entity of the endpoint")
        if _traffic(detail.config).get(entity) == 100:
            return
        routes = {e.name or "": 100 if e.name == entity else 0 for e in active}
        self._update(endpoint, [self._as_input(e) for e in active], routes, doing=f"route to {entity}")
        log.info("serving endpoint %s: 100%% of traffic to %s", endpoint, entity)

    def stop(self, deployment: Deployment) -> None:
        """Remove the deployment's served entity and its route; no error when it is already gone."""
        endpoint, entity = deployment.endpoint, deployment.slot
        detail = self._get(endpoint)
        if detail is None:
            return
        if self._updating(detail):
            target = detail.pending_config
            if entity not in {e.name for e in _entities(target)}:
                return  # the update in progress removes it (or never had it)
            routed = _traffic(target).get(entity, 0) > 0
            # Databricks refuses a second update now; returning would leave the entity serving for good.
            raise TransientError(
                f"serving endpoint {endpoint}: config update in progress"
                f"{' and it routes traffic to ' + entity if routed else ''}; "
                f"{entity} is removed once the update ends (check again later)"
            )
        active = _entities(detail.config)
        if entity not in {e.name for e in active}:
            return  # never applied (a failed update) or already removed
        remaining = [e for e in active if e.name != entity]
        if not remaining:
            with self._errors(f"delete serving endpoint {endpoint}", endpoint):
                self._client.serving_endpoints.delete(endpoint)
            log.info("serving endpoint %s: deleted with its only served entity %s", endpoint, entity)
            return
        traffic = _traffic(detail.config)
        routes = {e.name or "": traffic.get(e.name or "", 0) for e in remaining}
        shortfall = 100 - sum(routes.values())
        if shortfall > 0:
            heir = max(routes, key=lambda name: routes[name])
            routes[heir] += shortfall
        self._update(endpoint, [self._as_input(e) for e in remaining], routes, doing=f"remove {entity}")
        log.info("serving endpoint %s: removing %s", endpoint, entity)

    # -- helpers ---------------------------------------------------------------------------

    def _errors(self, action: str, endpoint: str, *, not_found: str | None = None) -> AbstractContextManager[None]:
        return sdk_errors(
            action,
            not_found=not_found or f"serving endpoint {endpoint} not found: check deployment.endpoint in the catalogue",
            secrets=self._secrets,
        )

    def _get(self, endpoint: str) -> ServingEndpointDetailed | None:
        from databricks.sdk.errors import NotFound

        _check_endpoint(endpoint)
        with self._errors(f"read serving endpoint {endpoint}", endpoint):
            try:
                return self._client.serving_endpoints.get(endpoint)
            except NotFound:
                return None

    @staticmethod
    def _updating(detail: ServingEndpointDetailed) -> bool:
        return detail.state is not None and _value(detail.state.config_update) == "IN_PROGRESS"

    def _new_entity(self, endpoint: str, entity: str, model_name: str, version: str) -> ServedEntityInput:
        from databricks.sdk.service.serving import ServedEntityInput, ServingModelWorkloadType

        workload_type = None
        if self.workload_type:
            try:
                workload_type = ServingModelWorkloadType(self.workload_type)
            except ValueError:
                raise PermanentError(
                    f"unknown Databricks serving workload type {self.workload_type!r} "
                    f"(one of {', '.join(t.value for t in ServingModelWorkloadType)})"
                ) from None
        sizing = self.sizing.get(endpoint) or EntitySizing(self.workload_size, self.scale_to_zero_enabled)
        return ServedEntityInput(
            name=entity,
            entity_name=self.registered_name(model_name),
            entity_version=version,
            workload_size=sizing.workload_size,
            scale_to_zero_enabled=sizing.scale_to_zero_enabled,
            workload_type=workload_type,
        )

    @staticmethod
    def _as_input(entity: ServedEntityOutput) -> ServedEntityInput:
        """An entity as it is served now, to send back unchanged in a config update."""
        from databricks.sdk.service.serving import ServedEntityInput

        fields = {f.name for f in dataclasses.fields(ServedEntityInput)}
        data = {k: v for k, v in entity.as_dict().items() if k in fields}
        if data.get("workload_size"):
            # Databricks echoes the concurrency a workload size implies; sending both is refused.
            data.pop("min_provisioned_concurrency", None)
            data.pop("max_provisioned_concurrency", None)
        return ServedEntityInput.from_dict(data)

    @staticmethod
    def _routes(traffic: Mapping[str, int]) -> TrafficConfig:
        from databricks.sdk.service.serving import Route, TrafficConfig

        return TrafficConfig(
            routes=[Route(served_model_name=name, traffic_percentage=pct) for name, pct in traffic.items()]
        )

    def _update(
        self, endpoint: str, entities: Iterable[ServedEntityInput], traffic: Mapping[str, int], *, doing: str
    ) -> None:
        from databricks.sdk.errors import ResourceConflict

        with self._errors(f"update serving endpoint {endpoint} ({doing})", endpoint):
            try:
                self._client.serving_endpoints.update_config(
                    endpoint, served_entities=list(entities), traffic_config=self._routes(traffic)
                )
            except ResourceConflict as exc:
                # 409: another update began since the endpoint was read; nothing changed.
                raise TransientError(
                    f"serving endpoint {endpoint}: config update in progress (409 {exc.error_code or 'conflict'}); "
                    f"{doing} waits for it to end"
                ) from exc
