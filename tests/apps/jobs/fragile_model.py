"""A training job whose model evaluates fine but breaks when served once a side file is gone.

    python -m tests.apps.jobs.fragile_model --data CSV --model-name NAME
        [--param k=v ...] [--tag k=v ...] [--result-file PATH]

The same calling convention as ``signalbox.examples.iris.train`` (MLflow through
``MLFLOW_TRACKING_URI``). It fits a logistic regression on the iris features, writes the class
labels to a side file and registers an MLflow pyfunc whose ``predict`` reads that file on every
call; the file's path is in the model config and in the version tag ``fragile.side_file``.
The side file goes to ``--param side_dir=DIR`` (default: the job's working directory, which the
local compute makes the job's own folder). Delete it and the version still loads, but every
prediction fails: a deployment's smoke test fails and the deployment rolls back.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from signalbox.examples import JobError, job_parser, key_values, read_csv, run_job, write_result
from signalbox.examples.iris.data import FEATURES, TARGET

SIDE_FILE_TAG = "fragile.side_file"


class FragileModel(mlflow.pyfunc.PythonModel):
    """Predicts class indices with the estimator and maps them to labels read from the side file."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        side_file = Path(context.model_config["side_file"])
        labels = json.loads(side_file.read_text(encoding="utf-8"))["labels"]  # FileNotFoundError once deleted
        codes = self.estimator.predict(model_input[list(FEATURES)])
        return [labels[int(code)] for code in codes]


def main(argv: Sequence[str] | None = None) -> int:
    """Train, write the side file, register the version; returns the exit status."""
    parser = job_parser(
        "python -m tests.apps.jobs.fragile_model", "Train a model that needs a side file.", data_required=True
    )
    args = parser.parse_args(argv)

    def body() -> None:
        from importlib.metadata import version as installed

        from mlflow import MlflowClient
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression

        params = key_values(args.param, "--param")
        tags = key_values(args.tag, "--tag")
        side_dir = Path(params.pop("side_dir", ".")).resolve()
        if params:
            raise JobError(f"parameter(s) {', '.join(sorted(params))} not understood (known: side_dir)")
        frame = read_csv(args.data, required=(*FEATURES, TARGET))
        labels = sorted(set(frame[TARGET].astype(str)))
        codes = [labels.index(label) for label in frame[TARGET].astype(str)]
        features = frame[list(FEATURES)]
        estimator = LogisticRegression(max_iter=1000, random_state=0).fit(features, codes)
        side_dir.mkdir(parents=True, exist_ok=True)
        side_file = side_dir / f"fragile-labels-{uuid.uuid4().hex[:12]}.json"
        side_file.write_text(json.dumps({"labels": labels}), encoding="utf-8")
        model = FragileModel(estimator)
        with mlflow.start_run(tags=dict(tags)) as run:
            mlflow.log_params({"data": str(args.data), "side_file": str(side_file)})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                registered_model_name=args.model_name,
                model_config={"side_file": str(side_file)},
                signature=infer_signature(features, [labels[0]] * len(features)),
                pip_requirements=[f"{name}=={installed(name)}" for name in ("mlflow", "scikit-learn", "pandas")],
            )
            version = str(info.registered_model_version)
            client = MlflowClient()
            for key, value in {**tags, SIDE_FILE_TAG: str(side_file)}.items():
                client.set_model_version_tag(args.model_name, version, key, value)
        write_result(args.result_file, {"mlflow_run_id": run.info.run_id, "model_version": version})
        print(f"registered {args.model_name} version {version} (side file {side_file})", flush=True)

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
