"""Scores registered model versions on an evaluation CSV with MLflow's pyfunc flavour.

The dataset is a CSV with the model's input columns and the truth in ``target``. Metrics:
``accuracy``, ``f1_macro``, ``precision_macro``, ``recall_macro`` (classification) and
``rmse``, ``mae``, ``r2`` (regression).

On Unity Catalog a version's files sit in storage only UC's temporary credentials can read, and the
Databricks workspace registry hands its copy out through signed URLs: on both they are downloaded
through ``models:/NAME/VERSION`` under the registry URI, so MLflow's Databricks artifact
repositories ask for the credentials or URLs. A registry whose artifact URIs MLflow cannot read (Azure ML's
``azureml://``) hands the evaluator its own ``ModelFiles``. Elsewhere the version's download URI is
read directly.
MLflow failures surface as Signalbox errors (``shared.adapters.mlflow.client.translate``).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from shared.adapters.mlflow.client import bound_http_defaults, translate

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CACHED_MODELS", "METRICS", "TARGET", "MlflowEvaluator", "ModelFiles"]

TARGET = "target"
CACHED_MODELS = 16


def _accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(truth, predicted))


def _f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def _precision(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import precision_score

    return float(precision_score(truth, predicted, average="macro", zero_division=0))


def _recall(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import recall_score

    return float(recall_score(truth, predicted, average="macro", zero_division=0))


def _rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import mean_squared_error

    return math.sqrt(float(mean_squared_error(truth.astype(float), predicted.astype(float))))


def _mae(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(truth.astype(float), predicted.astype(float)))


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(truth.astype(float), predicted.astype(float)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1_macro": _f1,
    "precision_macro": _precision,
    "recall_macro": _recall,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}


class ModelFiles(Protocol):
    """Where a registry's model files come from when MLflow cannot fetch them itself."""

    def fetch(self, model_name: str, version: str, into: Path) -> Path:
        """Download the version's files below ``into``; returns the folder holding its ``MLmodel``."""
        ...


class MlflowEvaluator:
    """Loads ``models:/NAME/VERSION`` as pyfunc (once per version) and scores it on a CSV."""

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        data_root: Path | None = None,
        model_files: ModelFiles | None = None,
    ) -> None:
        bound_http_defaults()  # before the first request: MLflow reads them per request
        self._tracking_uri = tracking_uri
        # MLflow draws a terminal progress bar per download: noise in a function's log stream.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # The registry MLflow resolves for these URIs, as the registry adapter's client does (a
        # "databricks" tracking URI alone means Unity Catalog in MLflow 3), fixed now so a later
        # mlflow.set_registry_uri elsewhere in the process cannot move it.
        from mlflow import MlflowClient

        self._registry_uri: str = str(MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)._registry_uri)
        self._data_root = data_root
        self._model_files = model_files
        # The champion is scored again for every challenger; a challenger mostly once: keep the
        # most recently used few, so a long-running worker's memory does not grow per version.
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        # Evaluations run concurrently (one per message). Downloads (the slow, network-bound part)
        # run in parallel, one at a time per version, each into its own folder; loading holds one
        # lock, because a model from code hands itself over through a process-wide global.
        self._lock = threading.Lock()
        self._version_locks: dict[tuple[str, str], threading.Lock] = {}
        self._downloads = tempfile.TemporaryDirectory(prefix="signalbox-evaluator-")

    def score(self, model_name: str, version: str, dataset: str, metrics: Sequence[str]) -> dict[str, float]:
        """The named metrics of one version on the dataset; ``ValueError`` for an unknown metric or bad dataset."""
        unknown = [name for name in metrics if name not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))} (known: {', '.join(METRICS)})")
        truth, features = self._read(dataset)
        predicted = self._predict(self._model(model_name, version), features)
        if len(predicted) != len(truth):
            raise ValueError(f"{model_name} v{version} returned {len(predicted)} predictions for {len(truth)} rows")
        return {name: METRICS[name](truth, predicted) for name in metrics}

    def _path(self, dataset: str) -> Path:
        parsed = urlparse(dataset)
        if parsed.scheme == "file":
            return Path(url2pathname(parsed.path))
        path = Path(dataset).expanduser()
        return path if path.is_absolute() or self._data_root is None else self._data_root / path

    def _read(self, dataset: str) -> tuple[np.ndarray, Any]:
        import pandas as pd

        path = self._path(dataset)
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise ValueError(f"evaluation dataset {path} is empty") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise ValueError(f"evaluation dataset {path} cannot be read: {exc}") from None
        if TARGET not in frame.columns:
            raise ValueError(f"evaluation dataset {path} has no {TARGET!r} column")
        if frame.empty:
            raise ValueError(f"evaluation dataset {path} has no rows")
        return frame[TARGET].to_numpy(), frame.drop(columns=[TARGET])

    def _model(self, model_name: str, version: str) -> Any:
        key = (model_name, str(version))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            version_lock = self._version_locks.setdefault(key, threading.Lock())
        with version_lock:
            with self._lock:
                model = self._models.get(key)
            if model is None:
                try:
                    local = self._download(key)
                except Exception as error:
                    translated = translate(error, f"downloading {model_name} v{version} from MLflow")
                    if translated is error:
                        raise
                    raise translated from error
                import mlflow.pyfunc

                with self._lock:
                    model = self._models[key] = mlflow.pyfunc.load_model(local)
                    while len(self._models) > CACHED_MODELS:
                        evicted, _ = self._models.popitem(last=False)
                        self._version_locks.pop(evicted, None)
        return model

    def _download(self, key: tuple[str, str]) -> str:
        """Download one version's artifacts into a folder of its own; returns the folder."""
        model_name = key[0]
        if self._model_files is not None:
            return str(self._model_files.fetch(model_name, key[1], Path(tempfile.mkdtemp(dir=self._downloads.name))))
        import mlflow.artifacts
        from mlflow import MlflowClient
        from mlflow.utils.uri import is_databricks_unity_catalog_uri, is_databricks_uri

        # Resolved with explicit URIs: mlflow's models:/ resolution uses the process-wide
        # registry URI, which other adapters in this process may point elsewhere.
        client = MlflowClient(tracking_uri=self._tracking_uri, registry_uri=self._registry_uri)
        if is_databricks_unity_catalog_uri(self._registry_uri) or is_databricks_uri(self._registry_uri):
            # UC: the download URI is a storage path needing UC's temporary credentials (a raw read gets
            # 403); the workspace registry: its copy is read through signed URLs. MLflow's Databricks
            # model artifact repositories do both for a models:/ URI under the registry URI.
            return str(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{model_name}/{key[1]}",
                    dst_path=tempfile.mkdtemp(dir=self._downloads.name),
                    tracking_uri=self._tracking_uri,
                    registry_uri=self._registry_uri,
                )
            )
        source = client.get_model_version_download_uri(model_name, key[1])
        if source.startswith("models:/"):  # a logged model (MLflow 3): the tracking store knows where it lives
            source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
        return str(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                dst_path=tempfile.mkdtemp(dir=self._downloads.name),
                tracking_uri=self._tracking_uri,
            )
        )

    @staticmethod
    def _predict(model: Any, features: Any) -> np.ndarray:
        import numpy as np
        import pandas as pd

        predicted = model.predict(features)
        if isinstance(predicted, pd.DataFrame):
            # A model returning a frame puts its prediction in the first column (or "predictions").
            column = "predictions" if "predictions" in predicted.columns else predicted.columns[0]
            predicted = predicted[column]
        return np.asarray(predicted).reshape(len(features), -1)[:, 0]
