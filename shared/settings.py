"""Signalbox's settings: app settings in Azure, environment variables (or local.settings.json) locally.

One validated object; a missing or wrong setting fails at start-up with an error that
names it. Every setting here is listed in README.md and local.settings.sample.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
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
    bus: Literal["local"] = Field(default="local", alias="SIGNALBOX_BUS")
    serving: Literal["local"] = Field(default="local", alias="SIGNALBOX_SERVING")
    landing_container: str = Field(default="landing", alias="SIGNALBOX_LANDING_CONTAINER")
    host_url: str = Field(default="http://127.0.0.1:7071", alias="SIGNALBOX_HOST_URL")
    tracking_uri: str = Field(default="", alias="MLFLOW_TRACKING_URI")
    registry_uri: str = Field(default="", alias="MLFLOW_REGISTRY_URI")
    mlflow_webhook_secret: str = Field(default="", alias="SIGNALBOX_MLFLOW_WEBHOOK_SECRET", repr=False)
    databricks_webhook_secret: str = Field(default="", alias="SIGNALBOX_DATABRICKS_WEBHOOK_SECRET", repr=False)
    github_webhook_secret: str = Field(default="", alias="SIGNALBOX_GITHUB_WEBHOOK_SECRET", repr=False)
    github_branches: str = Field(default="main=staging,release=prod", alias="SIGNALBOX_GITHUB_BRANCHES")
    github_paths: str = Field(default="src/**,jobs/**", alias="SIGNALBOX_GITHUB_PATHS")
    webhook_tolerance_seconds: int = Field(default=300, ge=1, alias="SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS")
    poll_initial_seconds: float = Field(default=2.0, gt=0, alias="SIGNALBOX_POLL_INITIAL_SECONDS")
    poll_max_seconds: float = Field(default=300.0, gt=0, alias="SIGNALBOX_POLL_MAX_SECONDS")
    poll_max_attempts: int = Field(default=200, ge=1, alias="SIGNALBOX_POLL_MAX_ATTEMPTS")

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
