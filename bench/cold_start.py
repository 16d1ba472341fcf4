"""Cold start: ``import function_app`` plus indexing, against ``import azure.functions`` alone.

Each sample is a fresh Python process (so nothing is cached in memory but the OS file
cache); the figure is the median of the in-process wall time of the import (and, for
the app, ``app.get_functions()``, which is what the host's indexing calls). Goal: at most 1.3x.

    python bench/cold_start.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def main() -> int:
    """Print the medians and the ratio; exit 1 when the app imports a heavy SDK."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    sample(BASELINE)  # warm the OS file cache for both
    sample(APP)
    baseline, app, last = [], [], {}
    for _ in range(runs):  # interleaved so drift in machine load hits both alike
        baseline.append(float(sample(BASELINE)["seconds"]))  # type: ignore[arg-type]
        last = sample(APP)
        app.append(float(last["seconds"]))  # type: ignore[arg-type]
    base_ms, app_ms = statistics.median(baseline) * 1000, statistics.median(app) * 1000
    ratio = app_ms / base_ms
    print(f"runs: {runs} fresh processes each (median)")
    print(f"import azure.functions:                 {base_ms:7.1f} ms")
    print(f"import function_app + get_functions():  {app_ms:7.1f} ms  ({last['functions']} functions)")
    print(f"ratio: {ratio:.2f}x  (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})")
    print(f"heavy modules imported at indexing: {last['heavy'] or 'none'}")
    return 1 if last["heavy"] else 0


if __name__ == "__main__":
    sys.exit(main())
