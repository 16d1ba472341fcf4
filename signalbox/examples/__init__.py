"""Example models Signalbox manages, and the command-line plumbing their jobs share.

Every job is a module run as ``python -m MODULE --data CSV --model-name NAME [--param k=v ...]
[--tag k=v ...] [--result-file PATH]``, the calling convention of the local compute. A bad input
exits with status 2 and a single ``error: ...`` line on stderr, and any other failure ends with
such a line after its traceback, because the compute reports the last line of the job's log as
the reason it failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MODEL_NAME_TAG",
    "JobError",
    "job_parser",
    "key_values",
    "one_line",
    "read_csv",
    "run_job",
    "write_result",
]

# Tag naming the catalogue model a scoring run belongs to (scoring runs register no version).
MODEL_NAME_TAG = "signalbox.model_name"


class JobError(Exception):
    """A problem with a job's input or parameters, reported as one line and exit status 2."""


def one_line(text: object) -> str:
    """The text with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def job_parser(prog: str, description: str, *, data_required: bool) -> argparse.ArgumentParser:
    """A parser with the options every example job takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--data", type=Path, required=data_required, help="input CSV")
    parser.add_argument("--model-name", required=True, help="catalogue (and registry) model name")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="job parameter (repeatable)")
    parser.add_argument("--tag", action="append", default=[], metavar="K=V", help="tag for the MLflow run (repeatable)")
    parser.add_argument("--result-file", type=Path, help="where to write the JSON result")
    return parser


def key_values(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``k=v`` items of a repeated option as a dict; ``JobError`` naming a malformed item."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JobError(f"{option} {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def read_csv(path: Path, *, required: Sequence[str] = ()) -> pd.DataFrame:
    """A non-empty CSV as a frame; ``JobError`` when it is unreadable, empty or lacks a required column."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise JobError(f"{path}: the CSV is empty") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise JobError(f"{path}: cannot read the CSV: {one_line(exc)}") from None
    if frame.empty:
        raise JobError(f"{path}: the CSV has a header but no rows")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise JobError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns))})")
    return frame


def write_result(path: Path | None, result: Mapping[str, object]) -> None:
    """Write the job's JSON result file, if one was asked for."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed so a poller never reads half a result.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(dict(result), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(partial, path)


def run_job(body: Callable[[], None]) -> int:
    """Run a job's body: a ``JobError`` exits 2, anything else 1, each ending the log with one ``error:`` line."""
    try:
        body()
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:
        # The traceback is for whoever reads the log; the closing line is what the compute reports.
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {one_line(first)}", file=sys.stderr, flush=True)
        return 1
    return 0
