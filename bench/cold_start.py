"""Cold start: ``import function_app`` plus indexing, against ``import azure.functions`` alone.

Each sample is a fresh Python process (so nothing is cached in memory but the OS file
cache); the figure is the median of the in-process wall time of the import (and, for
the app, ``app.get_functions()``, which is what the host's indexing calls). Goal: at most 1.3x.

    python bench/cold_start.py [--runs 15]     (or, in the whole suite: python -m bench)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("mlflow", "sklearn", "databricks", "azure.ai.ml", "pandas", "pydantic")
GOAL = 1.3

BASELINE = """
import time, json, sys
t = time.perf_counter()
import azure.functions
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

APP = """
import time, json, sys
t = time.perf_counter()
import function_app
functions = function_app.app.get_functions()
elapsed = time.perf_counter() - t
heavy = sorted({m.split('.')[0] if not m.startswith('azure.ai') else 'azure.ai.ml' for m in sys.modules
                if any(m == h or m.startswith(h + '.') for h in HEAVY)})
print(json.dumps({"seconds": elapsed, "functions": len(functions), "heavy": heavy}))
"""


def sample(code: str) -> dict[str, object]:
    """One fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class ColdStart:
    """Median seconds of each side over ``runs`` fresh processes, and what the app's import pulled in."""

    runs: int
    baseline_seconds: float
    app_seconds: float
    functions: int
    heavy: list[str]

    @property
    def ratio(self) -> float:
        """App over baseline."""
        return self.app_seconds / self.baseline_seconds


def measure(runs: int) -> ColdStart:
    """Sample both sides ``runs`` times, interleaved so drift in machine load hits both alike."""
    sample(BASELINE)  # warm the OS file cache for both
    sample(APP)
    baseline, app, last = [], [], {}
    for _ in range(runs):
        baseline.append(float(sample(BASELINE)["seconds"]))  # type: ignore[arg-type]
        last = sample(APP)
        app.append(float(last["seconds"]))  # type: ignore[arg-type]
    return ColdStart(
        runs=runs,
        baseline_seconds=statistics.median(baseline),
        app_seconds=statistics.median(app),
        functions=int(last["functions"]),  # type: ignore[call-overload]
        heavy=list(last["heavy"]),  # type: ignore[call-overload]
    )


def main() -> int:
    """Print the medians and the ratio; exit 1 when the app imports a heavy SDK."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    result = measure(parser.parse_args().runs)
    base_ms, app_ms = result.baseline_seconds * 1000, result.app_seconds * 1000
    print(f"runs: {result.runs} fresh processes each (median)")
    print(f"import azure.functions:                 {base_ms:7.1f} ms")
    print(f"import function_app + get_functions():  {app_ms:7.1f} ms  ({result.functions} functions)")
    print(f"ratio: {result.ratio:.2f}x  (goal <= {GOAL}x: {'met' if result.ratio <= GOAL else 'NOT met'})")
    print(f"heavy modules imported at indexing: {result.heavy or 'none'}")
    return 1 if result.heavy else 0


if __name__ == "__main__":
    sys.exit(main())
