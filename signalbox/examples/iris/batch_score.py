"""Score a CSV with a registered iris model (the batch deployment's scoring job).

    python -m signalbox.examples.iris.batch_score [--data CSV] --model-name NAME
        [--alias champion] [--output PATH] [--param alias=...] [--tag k=v ...] [--result-file PATH]

Loads ``models:/NAME@ALIAS``, scores every row (a ``target`` column is dropped first), writes the
rows with a ``prediction`` column to ``--output`` (default ``predictions.csv`` in the working
directory) and logs an MLflow run with the row count and the predictions as an artifact. The alias
may also come as ``--param alias=...``, which is how the compute passes it; other parameters are only
logged. Without ``--data`` it scores the bundled evaluation split. The result file holds
``mlflow_run_id``, ``rows`` and ``output``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from signalbox.examples import MODEL_NAME_TAG, JobError, job_parser, key_values, read_csv, run_job, write_result
from signalbox.examples.iris.data import TARGET, evaluation_frame

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch scoring job; returns the exit status."""
    parser = job_parser(
        "python -m signalbox.examples.iris.batch_score",
        "Batch-score a CSV with a registered model.",
        data_required=False,
    )
    parser.add_argument("--alias", help="registry alias to score with (default: champion)")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="predictions CSV")
    args = parser.parse_args(argv)

    def body() -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        params = key_values(args.param, "--param")
        tags = key_values(args.tag, "--tag")
        alias = args.alias or params.pop("alias", "") or "champion"
        if args.data is None:
            frame, data = evaluation_frame(), "bundled:iris/evaluation"
        else:
            frame, data = read_csv(args.data), str(args.data)
        features = frame.drop(columns=[TARGET], errors="ignore")
        model_uri = f"models:/{args.model_name}@{alias}"
        try:
            model = mlflow.pyfunc.load_model(model_uri)
        except MlflowException as exc:
            raise JobError(f"cannot load {model_uri}: {exc.message.splitlines()[0]}") from None
        try:
            predictions = model.predict(features)
        except MlflowException as exc:  # the frame does not fit the model's signature
            raise JobError(f"cannot score {data} with {model_uri}: {' '.join(exc.message.split())}") from None
        scored = features.assign(prediction=list(predictions))
        output: Path = args.output.resolve()
        output.parent.mkdir(parents=True, exist_ok=True)
        scored.to_csv(output, index=False)
        with mlflow.start_run(tags={**tags, MODEL_NAME_TAG: args.model_name}) as run:
            mlflow.log_params({**params, "model_uri": model_uri, "data": data})
            mlflow.log_metric("rows", len(scored))
            mlflow.log_artifact(str(output))
        write_result(args.result_file, {"mlflow_run_id": run.info.run_id, "rows": len(scored), "output": str(output)})
        print(f"scored {len(scored)} rows with {model_uri} into {output} (run {run.info.run_id})", flush=True)

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
