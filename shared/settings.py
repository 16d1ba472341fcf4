"""Signalbox's settings: app settings in Azure, environment variables (or local.settings.json) locally.

One validated object; a missing or wrong setting fails at start-up with an error that
names it. Every setting here is listed in README.md and local.settings.sample.json.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import InvalidInput


class SettingsError(InvalidInput):
    """A setting is missing or wrong; the message names it."""


def _mapping(text: str, *, setting: str) -> dict[str, str]:
    """Parse ``a=b,c=d`` into a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{setting}: expected NAME=VALUE pairs separated by commas, got {item!r}")
        out[key.strip()] = value.strip()
    return out


class Settings(BaseSettings):
    """Every setting Signalbox reads, with its environment variable name."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    environment: str = Field(default="dev", alias="SIGNALBOX_ENVIRONMENT", pattern=r"^[a-z][a-z0-9-]*$")
    state_dir: Path = Field(default=Path(".signalbox"), alias="SIGNALBOX_STATE_DIR")
    catalogue: Path = Field(default=Path("catalogue.toml"), alias="SIGNALBOX_CATALOGUE")
    bus: Literal["local", "servicebus"] = Field(default="local", alias="SIGNALBOX_BUS")
    serving: Literal["local", "databricks", "azureml"] = Field(default="local", alias="SIGNALBOX_SERVING")
    events: Literal["local", "eventgrid"] = Field(default="local", alias="SIGNALBOX_EVENTS")
    landing: Literal["local", "blob"] = Field(default="local", alias="SIGNALBOX_LANDING")
    registry: Literal["mlflow", "azureml"] = Field(default="mlflow", alias="SIGNALBOX_REGISTRY")
    # The same app settings the Functions Service Bus trigger reads (connection "ServiceBusConnection").
    servicebus_connection: str = Field(default="", alias="ServiceBusConnection", repr=False)
    servicebus_namespace: str = Field(default="", alias="ServiceBusConnection__fullyQualifiedNamespace")
    servicebus_resource_id: str = Field(  # the namespace's ARM id: queue depths from Azure Monitor metrics
        default="",
        alias="SIGNALBOX_SERVICEBUS_RESOURCE_ID",
        pattern=r"(?i)^$|^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ServiceBus/namespaces/[^/]+$",
    )
    eventgrid_endpoint: str = Field(default="", alias="SIGNALBOX_EVENTGRID_ENDPOINT")
    eventgrid_key: str = Field(default="", alias="SIGNALBOX_EVENTGRID_KEY", repr=False)
    # Where Event Grid dead-letters what it could not deliver; empty: STATE_DIR/eventgrid-deadletters.
    eventgrid_deadletter_container_url: str = Field(default="", alias="SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL")
    databricks_host: str = Field(default="", alias="DATABRICKS_HOST")
    databricks_token: str = Field(default="", alias="DATABRICKS_TOKEN", repr=False)
    azureml_subscription_id: str = Field(default="", alias="AZUREML_SUBSCRIPTION_ID")
    azureml_resource_group: str = Field(default="", alias="AZUREML_RESOURCE_GROUP")
    azureml_workspace: str = Field(default="", alias="AZUREML_WORKSPACE")
    azureml_instance_type: str = Field(default="Standard_DS3_v2", alias="SIGNALBOX_AZUREML_INSTANCE_TYPE")
    landing_container: str = Field(default="landing", alias="SIGNALBOX_LANDING_CONTAINER")
    landing_account_url: str = Field(default="", alias="SIGNALBOX_LANDING_ACCOUNT_URL")
    host_url: str = Field(default="http://127.0.0.1:7071", alias="SIGNALBOX_HOST_URL")
    tracking_uri: str = Field(default="", alias="MLFLOW_TRACKING_URI")
    registry_uri: str = Field(default="", alias="MLFLOW_REGISTRY_URI")
    mlflow_webhook_secret: str = Field(default="", alias="SIGNALBOX_MLFLOW_WEBHOOK_SECRET", repr=False)
    databricks_webhook_secret: str = Field(default="", alias="SIGNALBOX_DATABRICKS_WEBHOOK_SECRET", repr=False)
    github_webhook_secret: str = Field(default="", alias="SIGNALBOX_GITHUB_WEBHOOK_SECRET", repr=False)
    github_branches: str = Field(default="main=staging,release=prod", alias="SIGNALBOX_GITHUB_BRANCHES")
    github_paths: str = Field(default="src/**,jobs/**", alias="SIGNALBOX_GITHUB_PATHS")
    webhook_tolerance_seconds: int = Field(default=300, ge=1, alias="SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS")
    retry_max_attempts: int = Field(default=10, ge=0, alias="SIGNALBOX_RETRY_MAX_ATTEMPTS")
    retry_initial_seconds: float = Field(default=5.0, gt=0, alias="SIGNALBOX_RETRY_INITIAL_SECONDS")
    retry_max_seconds: float = Field(default=600.0, gt=0, alias="SIGNALBOX_RETRY_MAX_SECONDS")
    poll_initial_seconds: float = Field(default=2.0, gt=0, alias="SIGNALBOX_POLL_INITIAL_SECONDS")
    poll_max_seconds: float = Field(default=300.0, gt=0, alias="SIGNALBOX_POLL_MAX_SECONDS")
    poll_max_attempts: int = Field(default=200, ge=1, alias="SIGNALBOX_POLL_MAX_ATTEMPTS")
    # The reconciliation timer (functions/reconcile.py reads it as %SIGNALBOX_RECONCILE_SCHEDULE%).
    reconcile_schedule: str = Field(default="0 */5 * * * *", min_length=1, alias="SIGNALBOX_RECONCILE_SCHEDULE")
    # How old an undecided version (or an overdue poll) must be before a sweep acts: the live event wins.
    reconcile_grace_seconds: float = Field(default=120.0, ge=0, alias="SIGNALBOX_RECONCILE_GRACE_SECONDS")
    # One Databricks API call; the SDK retries 429/503 within its own budget on top of this.
    databricks_http_timeout_seconds: float = Field(
        default=60.0, gt=0, alias="SIGNALBOX_DATABRICKS_HTTP_TIMEOUT_SECONDS"
    )

    @field_validator(
        "mlflow_webhook_secret",
        "databricks_webhook_secret",
        "github_webhook_secret",
        "servicebus_connection",
        "eventgrid_key",
        "databricks_token",
    )
    @classmethod
    def _resolved(cls, value: str) -> str:
        # App Service leaves the reference text in place when it cannot read the secret; using it
        # as a webhook secret would make signatures forgeable.
        if value.startswith("@Microsoft.KeyVault("):
            raise ValueError(
                "is an unresolved Key Vault reference: create the secret and grant the app's identity "
                "'Key Vault Secrets User'"
            )
        return value

    @field_validator("github_branches")
    @classmethod
    def _branches(cls, value: str) -> str:
        _mapping(value, setting="SIGNALBOX_GITHUB_BRANCHES")
        return value

    @property
    def branch_environments(self) -> dict[str, str]:
        """Git branch → environment, e.g. main → staging."""
        return _mapping(self.github_branches, setting="SIGNALBOX_GITHUB_BRANCHES")

    @property
    def code_paths(self) -> tuple[str, ...]:
        """Repository path globs whose change retrains."""
        return tuple(p.strip() for p in self.github_paths.split(",") if p.strip())

    @property
    def mlflow_tracking_uri(self) -> str:
        """The tracking URI; the local MLflow server's SQL store by default."""
        return self.tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def landing_dir(self) -> Path:
        """The local landing zone folder (embedded default)."""
        return self.state_dir / "landing"


def check_cloud_settings(settings: Settings, backends: set[str]) -> None:
    """Every adapter chosen (and every compute backend the catalogue uses) has what it needs.

    Raises :class:`SettingsError` listing each missing setting by name, at start-up.
    """
    problems: list[str] = []
    if settings.bus == "servicebus" and not (settings.servicebus_connection or settings.servicebus_namespace):
        problems.append(
            "SIGNALBOX_BUS=servicebus needs ServiceBusConnection__fullyQualifiedNamespace "
            "(e.g. sb-signalbox.servicebus.windows.net, with a managed identity) or ServiceBusConnection "
            "(a connection string)"
        )
    if settings.events == "eventgrid" and not settings.eventgrid_endpoint:
        problems.append("SIGNALBOX_EVENTS=eventgrid needs SIGNALBOX_EVENTGRID_ENDPOINT (the custom topic's endpoint)")
    azureml = ("AZUREML_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE")
    missing_azureml = [n for n in azureml if not getattr(settings, n.lower())]
    uses = {f"training.backend {b}" for b in backends} | {f"SIGNALBOX_SERVING={settings.serving}"}
    if settings.registry == "azureml":
        uses.add("SIGNALBOX_REGISTRY=azureml")
    for use in sorted(uses):
        if use.endswith("azureml") and missing_azureml:
            problems.append(f"{use} needs {', '.join(missing_azureml)}")
        if use.endswith("databricks") and not (settings.databricks_host or os.environ.get("DATABRICKS_CONFIG_PROFILE")):
            problems.append(f"{use} needs DATABRICKS_HOST (https://adb-….azuredatabricks.net)")
    if settings.registry == "azureml" and settings.serving != "azureml":
        # Local scoring servers and Databricks Model Serving load models:/ through MLflow, which cannot
        # read the workspace's azureml:// artifacts without the azureml-mlflow plugin.
        problems.append(
            f"SIGNALBOX_SERVING={settings.serving} cannot serve models from SIGNALBOX_REGISTRY=azureml; "
            "use SIGNALBOX_SERVING=azureml (managed online endpoints)"
        )
    if settings.serving != "local" and settings.tracking_uri.startswith(("sqlite:", "file:")):
        problems.append(f"SIGNALBOX_SERVING={settings.serving} needs a shared MLFLOW_TRACKING_URI, not a local store")
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))


def load_settings() -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` naming the setting."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
