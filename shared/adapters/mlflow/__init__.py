"""MLflow: the model registry (local server, Databricks, Unity Catalog, Azure ML) and the evaluator."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import Evaluator, Registry
    from shared.settings import Settings


def uris(settings: Settings) -> tuple[str, str | None]:
    """MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI as set.

    An unset registry URI is MLflow's to resolve: the tracking URI, except that a ``databricks``
    tracking URI means Unity Catalog (``databricks-uc``) in MLflow 3; both adapters resolve it so.
    """
    return settings.mlflow_tracking_uri, settings.registry_uri or None


def make_registry(wiring: Wiring) -> Registry:
    """The MLflow registry at the registry URI, with its capabilities (aliases, search) by URI scheme."""
    from shared.adapters.mlflow.registry import MlflowRegistry

    return MlflowRegistry(wiring.tracking_uri, wiring.registry_uri)


def make_evaluator(wiring: Wiring) -> Evaluator:
    """Scores versions in-process with ``mlflow.pyfunc`` on the evaluation dataset."""
    from shared.adapters.mlflow.evaluator import MlflowEvaluator

    return MlflowEvaluator(wiring.tracking_uri, wiring.registry_uri)
