"""Score a CSV with the rule-based model: flag "virginica-like" flowers.

    python -m signalbox.examples.rules.score --data CSV --model-name NAME
        [--param threshold=4.8] [--output PATH] [--tag k=v ...] [--result-file PATH]

The rule: a row is flagged (``virginica_like`` = 1) when ``petal_length`` is strictly greater
than ``threshold`` centimetres (default 4.8, where iris versicolor gives way to virginica).
Writes the rows with the flag to ``--output`` (default ``predictions.csv`` in the working
directory), logs an MLflow run (the parameters, ``rows`` and ``flagged``) tagged with the model
name, and writes a result file with ``mlflow_run_id``, ``rows`` and ``flagged``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from signalbox.examples import MODEL_NAME_TAG, JobError, job_parser, key_values, read_csv, run_job, write_result

__all__ = ["DEFAULT_THRESHOLD", "FEATURE", "FLAG", "main"]

FEATURE = "petal_length"
FLAG = "virginica_like"
DEFAULT_THRESHOLD = 4.8


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rule-based scoring job; returns the exit status."""
    parser = job_parser(
        "python -m signalbox.examples.rules.score", "Flag virginica-like rows by petal length.", data_required=True
    )
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="predictions CSV")
    args = parser.parse_args(argv)

    def body() -> None:
        params = key_values(args.param, "--param")
        tags = key_values(args.tag, "--tag")
        unknown = sorted(set(params) - {"threshold"})
        if unknown:
            raise JobError(f"parameter(s) {', '.join(unknown)} not understood (known: threshold)")
        raw = params.get("threshold", str(DEFAULT_THRESHOLD))
        try:
            threshold = float(raw)
        except ValueError:
            raise JobError(f"parameter threshold={raw!r}: expected a number") from None
        if not math.isfinite(threshold):
            raise JobError(f"parameter threshold={raw!r}: must be finite")
        frame = read_csv(args.data, required=(FEATURE,))
        import pandas as pd

        lengths = pd.to_numeric(frame[FEATURE], errors="coerce")
        if lengths.isna().any():
            bad = int(lengths.isna().sum())
            raise JobError(f"{args.data}: column {FEATURE} has {bad} missing or non-numeric value(s)")
        scored = frame.assign(**{FLAG: (lengths > threshold).astype(int)})
        flagged = int(scored[FLAG].sum())
        output: Path = args.output.resolve()
        output.parent.mkdir(parents=True, exist_ok=True)
        scored.to_csv(output, index=False)

        import mlflow

        with mlflow.start_run(tags={**tags, MODEL_NAME_TAG: args.model_name}) as run:
            mlflow.log_params({"threshold": threshold, "rule": f"{FEATURE} > threshold", "data": str(args.data)})
            mlflow.log_metrics({"rows": len(scored), "flagged": flagged})
        write_result(
            args.result_file,
            {"mlflow_run_id": run.info.run_id, "rows": len(scored), "flagged": flagged, "output": str(output)},
        )
        print(
            f"flagged {flagged} of {len(scored)} rows (threshold {threshold}) into {output} (run {run.info.run_id})",
            flush=True,
        )

    return run_job(body)


if __name__ == "__main__":
    sys.exit(main())
