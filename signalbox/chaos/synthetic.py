"""The chaos run's synthetic model: predicts ``coef * x`` from the column ``x`` of a frame.

This file is an MLflow *model from code*: ``mlflow.pyfunc.save_model(python_model=<this file>,
model_config={"coef": ...})`` copies it into the model's artifacts, and loading runs it, so any
process with mlflow and pandas can load the model (Signalbox need not be installed there).
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import pandas as pd
from mlflow.pyfunc.model import PythonModel

__all__ = ["LinearModel", "coefficient"]


def coefficient(quality: int) -> float:
    """The slope of quality level ``quality`` (0..100): 2 at 100 (the truth is ``2 * x``), 3 at 0."""
    return 2 + (100 - quality) / 100


class LinearModel(PythonModel):
    """``coef * x``, with ``coef`` from the model config."""

    coef = 2.0
    broken = False

    def load_context(self, context: Any) -> None:
        """Read the slope (and whether the model is broken) from the model config."""
        config = context.model_config or {}
        self.coef = float(config["coef"])
        self.broken = bool(config.get("broken", False))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.Series:
        """One prediction per row; a broken model returns one row too few, which no evaluation accepts."""
        predictions = model_input["x"].astype(float) * self.coef
        return predictions.iloc[:-1] if self.broken else predictions


mlflow.models.set_model(LinearModel())
