"""Train the iris classifier and register it in MLflow.

    python -m signalbox.examples.iris.train [--data CSV] --model-name NAME
        [--param k=v ...] [--tag k=v ...] [--result-file PATH]

Parameters: ``estimator`` (``logistic_regression``, or ``random_forest``, the default when
``n_estimators`` or ``max_depth`` is given); ``C`` and ``max_iter`` for logistic regression;
``n_estimators`` and ``max_depth`` for the random forest; ``random_state``. Any other parameter
is an error. Without ``--data`` it trains on the bundled training split (a code-push retrain
has no new data). MLflow is reached through ``MLFLOW_TRACKING_URI``; the tags go on the run and
on the registered version; the result file holds ``mlflow_run_id`` and ``model_version``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from signalbox.examples import JobError, job_parser, key_values, one_line, read_csv, run_job, write_result
from signalbox.examples.iris.data import FEATURES, TARGET, training_frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Trained", "main", "resolve_params", "train"]

_ESTIMATORS = ("logistic_regression", "random_forest")
_FOREST_ONLY = ("n_estimators", "max_depth")
_DEFAULTS: dict[str, dict[str, str]] = {
    "logistic_regression": {"C": "1.0", "max_iter": "1000", "random_state": "0"},
    "random_forest": {"n_estimators": "100", "max_depth": "none", "random_state": "0"},
}


@dataclass(frozen=True)
class Trained:
    """A fitted classifier with the parameters it was built from and its training metrics."""

    model: Any
    params: dict[str, str]
    metrics: dict[str, float]


def _positive(kind: Callable[[str], float | int]) -> Callable[[str, str], float | int]:
    def parse(name: str, raw: str) -> float | int:
        try:
            value = kind(raw)
        except ValueError:
            raise JobError(f"parameter {name}={raw!r}: expected a {kind.__name__}") from None
        if value <= 0:
            raise JobError(f"parameter {name}={raw!r}: must be positive")
        return value

    return parse


def _depth(name: str, raw: str) -> int | None:
    return None if raw.lower() in ("none", "") else int(_positive(int)(name, raw))


def _seed(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise JobError(f"parameter {name}={raw!r}: expected an int") from None


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "C": _positive(float),
    "max_iter": _positive(int),
    "n_estimators": _positive(int),
    "max_depth": _depth,
    "random_state": _seed,
}


def resolve_params(params: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The estimator and its full parameter set (defaults filled in); ``JobError`` on a bad one."""
    given = dict(params)
    estimator = given.pop("estimator", "")
    if not estimator:
        estimator = "random_forest" if any(p in given for p in _FOREST_ONLY) else "logistic_regression"
    if estimator not in _ESTIMATORS:
        raise JobError(f"parameter estimator={estimator!r}: expected one of {', '.join(_ESTIMATORS)}")
    allowed = _DEFAULTS[estimator]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise JobError(
            f"parameter(s) {', '.join(unknown)} not understood by {estimator} "
            f"(known: {', '.join(sorted(allowed))}, estimator)"
        )
    resolved = {**allowed, **given}
    for name, raw in resolved.items():
        _PARSERS[name](name, raw)
    return estimator, {"estimator": estimator, **resolved}


def _build(estimator: str, params: Mapping[str, str]) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    values = {name: _PARSERS[name](name, raw) for name, raw in params.items() if name != "estimator"}
    if estimator == "random_forest":
        return RandomForestClassifier(**values)
    return LogisticRegression(**values)


def train(frame: pd.DataFrame, params: Mapping[str, str]) -> Trained:
    """Fit the classifier on a landing frame; ``JobError`` when the data cannot train it."""
    from sklearn.metrics import accuracy_score, f1_score

    estimator, resolved = resolve_params(params)
    missing = [column for column in (*FEATURES, TARGET) if column not in frame.columns]
    if missing:
        raise JobError(f"missing column(s) {', '.join(missing)}")
    features, target = frame[list(FEATURES)], frame[TARGET].astype(str)
    model = _build(estimator, resolved)
    try:
        model.fit(features, target)
    except ValueError as exc:  # NaNs, text in a feature column, a single class...
        raise JobError(f"cannot train on this data: {one_line(exc)}") from None
    predicted = model.predict(features)
    metrics = {
        "training_accuracy": float(accuracy_score(target, predicted)),
        "training_f1_macro": float(f1_score(target, predicted, average="macro", zero_division=0)),
        "training_rows": float(len(frame)),
    }
    return Trained(model=model, params=resolved, metrics=metrics)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    # Pinned to what trained the model; given explicitly because inferring them costs seconds.
    return [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "pandas", "skops")]


def _log(trained: Trained, frame: pd.DataFrame, model_name: str, data: str, tags: Mapping[str, str]) -> dict[str, str]:
    import mlflow
    from mlflow.models import infer_signature

    features = frame[list(FEATURES)]
    with mlflow.start_run(tags=dict(tags)) as run:
        mlflow.log_params({**trained.params, "data": data})
        mlflow.log_metrics(trained.metrics)
        info = mlflow.sklearn.log_model(
            trained.model,
            name="model",
            signature=infer_signature(features, trained.model.predict(features)),
            input_example=features.head(3),
            pip_requirements=_pip_requirements(),
            # skops refuses tree storage unless told; these trees are our own, just fitted.
            skops_trusted_types=["sklearn.tree._tree.Tree"] if trained.params["estimator"] == "random_forest" else None,
        )
        # Registered with its tags in one call: the registry webhook fires on creation, and
        # whoever reads the version then must already see its environment and correlation id.
        registered = mlflow.register_model(info.model_uri, model_name, tags=dict(tags))
        version = str(registered.version)
    return {"mlflow_run_id": run.info.run_id, "model_version": version}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training job; returns the exit status."""
    parser = job_parser(
        "python -m signalbox.examples.iris.train", "Train and register the iris classifier.", data_required=False
    )
    args = parser.parse_args(argv)

    def body() -> None:
        params = key_values(args.param, "--param")
        tags = key_values(args.tag, "--tag")
        resolve_params(params)  # a bad parameter fails before any data is read
        if args.data is None:
            frame, data = training_frame("full"), "bundled:iris/full"
        else:
            frame, data = read_csv(args.data, required=(*FEATURES, TARGET)), str(args.data)
        trained = train(frame, params)
        result = _log(trained, frame, args.model_name, data, tags)
        write_result(args.result_file, result)
        print(
            f"registered {args.model_name} version {result['model_version']} "
            f"(run {result['mlflow_run_id']}, training accuracy {trained.metrics['training_accuracy']:.3f})",
            flush=True,
        )

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
