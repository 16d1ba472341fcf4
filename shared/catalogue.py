"""The model catalogue: one declarative entry per model, validated at start-up.

The catalogue is a TOML file (``catalogue.toml`` by default)::

    [models.iris-classifier]
    kind = "trained"                      # or "rule_based"
    [models.iris-classifier.training]
    backend = "local"                     # local | databricks | azureml
    job = "signalbox.examples.iris.train" # module (local), job id/name (Databricks), job spec (Azure ML)
    parameters = { n_estimators = "50" }
    [models.iris-classifier.data]
    container = "landing"
    prefix = "iris/"
    [models.iris-classifier.evaluation]
    dataset = "examples/iris/evaluation.csv"
    primary_metric = "accuracy"
    direction = "maximize"
    min_improvement = 0.0
    guardrails = { f1_macro = 0.8 }       # metric = minimum (or maximum when direction minimize)
    [models.iris-classifier.approval]
    dev = "auto"
    prod = "manual"
    [models.iris-classifier.deployment]
    endpoint = "iris"
    mode = "real_time"                    # or "batch"
    workload_size = "Small"               # Databricks serving: Small | Medium | Large
    scale_to_zero_enabled = true          # Databricks serving: idle entities scale to zero
    [models.iris-classifier.drift]
    cooldown = "PT1H"

An error names the file, the entry and the field.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import InvalidInput, UnknownModel
from shared.queues import parse_iso_duration


class CatalogueError(InvalidInput):
    """The catalogue file is missing or an entry is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Training(_Strict):
    """How a model is (re)trained or, for a rule-based model, scored."""

    backend: Literal["local", "databricks", "azureml"] = "local"
    job: str = Field(min_length=1, description="entry point, job id/name or job spec")
    parameters: dict[str, str] = Field(default_factory=dict)
    code_paths: tuple[str, ...] = Field(default=(), description="repository paths whose change retrains")


class Data(_Strict):
    """Where the model's new data lands."""

    container: str = Field(min_length=1)
    prefix: str = ""


class Evaluation(_Strict):
    """How a challenger is judged against the champion."""

    dataset: str = Field(min_length=1, description="CSV with a target column; relative to the catalogue file")
    primary_metric: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"] = "maximize"
    min_improvement: float = Field(default=0.0, ge=0.0)
    guardrails: dict[str, float] = Field(default_factory=dict)


class Deployment(_Strict):
    """Where the production version serves."""

    endpoint: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9-]{1,31}$")
    mode: Literal["real_time", "batch"] = "real_time"
    scoring_job: str | None = Field(default=None, description="batch scoring entry point (mode batch)")
    # Databricks Model Serving: the compute of each served entity Signalbox adds to the endpoint.
    workload_size: Literal["Small", "Medium", "Large"] = Field(
        default="Small", description="Databricks served entity concurrency: Small 4, Medium 16, Large 64"
    )
    scale_to_zero_enabled: bool = Field(
        default=True, strict=True, description="Databricks: scale the served entity to zero when idle"
    )


class Drift(_Strict):
    """How drift alerts retrain."""

    cooldown: timedelta = timedelta(hours=1)
    monitors: tuple[str, ...] = Field(default=(), description="Azure ML data drift monitor names of this model")

    @field_validator("cooldown", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        return parse_iso_duration(value) if isinstance(value, str) else value


ApprovalPolicy = Literal["auto", "manual"]


class ModelEntry(_Strict):
    """One model of the catalogue."""

    # Names travel into registry searches, session ids, URLs and paths: letters, digits, ".", "_",
    # "-" (Unity Catalog's catalog.schema.model included), never a quote, a space, "/" or "..".
    name: str = Field(max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
    kind: Literal["trained", "rule_based"] = "trained"
    training: Training
    data: Data
    evaluation: Evaluation | None = None
    approval: dict[str, ApprovalPolicy] = Field(default_factory=dict)
    deployment: Deployment | None = None
    drift: Drift = Drift()

    def approval_for(self, environment: str) -> ApprovalPolicy:
        """The approval policy in an environment; ``manual`` unless the entry says otherwise."""
        return self.approval.get(environment, self.approval.get("default", "manual"))

    def owns_blob(self, container: str, blob_path: str) -> bool:
        """Whether a landed blob is this model's data."""
        return container == self.data.container and blob_path.startswith(self.data.prefix)


class Catalogue(_Strict):
    """Every model Signalbox manages."""

    source: str
    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        """One entry; ``UnknownModel`` naming the known models when absent."""
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(name, self.source, sorted(self.models)) from None

    def for_blob(self, container: str, blob_path: str) -> ModelEntry | None:
        """The model whose landing prefix holds the blob (the longest prefix wins)."""
        owners = [m for m in self.models.values() if m.owns_blob(container, blob_path)]
        return max(owners, key=lambda m: len(m.data.prefix), default=None)

    def for_job(self, backend: str, job_reference: str) -> ModelEntry | None:
        """The model whose training job this is (Databricks job id or name, Azure ML job)."""
        return next(
            (m for m in self.models.values() if m.training.backend == backend and m.training.job == job_reference),
            None,
        )

    def for_drift_monitor(self, monitor: str) -> ModelEntry | None:
        """The model an Azure ML drift monitor watches."""
        return next((m for m in self.models.values() if monitor in m.drift.monitors or monitor == m.name), None)


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate the catalogue; an error names file, entry and field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"{path}: catalogue file not found (set SIGNALBOX_CATALOGUE)") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from None
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise CatalogueError(f"{path}: no [models.NAME] entries")
    models: dict[str, ModelEntry] = {}
    for name, entry in models_raw.items():
        if not isinstance(entry, dict):
            raise CatalogueError(f"{path}: models.{name}: expected a table")
        try:
            model = ModelEntry.model_validate({"name": name, **entry})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise CatalogueError(f"{path}: models.{name}: {field}: {first['msg']}") from None
        if model.kind == "trained" and model.evaluation is None:
            raise CatalogueError(f"{path}: models.{name}: evaluation: required for a trained model")
        if model.kind == "trained" and model.deployment is None:
            raise CatalogueError(f"{path}: models.{name}: deployment: required for a trained model")
        if model.deployment and model.deployment.mode == "batch" and not model.deployment.scoring_job:
            raise CatalogueError(f"{path}: models.{name}: deployment.scoring_job: required when mode is batch")
        models[name] = _resolve_paths(model, path.parent)
    return Catalogue(source=str(path), models=models)


def _resolve_paths(model: ModelEntry, base: Path) -> ModelEntry:
    """Relative dataset paths are relative to the catalogue's folder, wherever the process runs."""
    if model.evaluation is None or "://" in model.evaluation.dataset or Path(model.evaluation.dataset).is_absolute():
        return model
    dataset = str((base / model.evaluation.dataset).resolve())
    return model.model_copy(update={"evaluation": model.evaluation.model_copy(update={"dataset": dataset})})
