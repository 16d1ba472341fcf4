"""The fault-injection run, in a bounded configuration: `signalbox chaos` must end with every claim holding.

The full run (1,000 lifecycles) is `signalbox chaos` with its defaults; CI runs a smaller one with
the same faults, duplicates and kills. SIGNALBOX_CHAOS_LIFECYCLES makes this test bigger.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLAIMS = (
    "every accepted event completed or dead-lettered with a reason",
    "no cause launched two trainings",
    "never two production versions of one model",
    "each endpoint serves the version tagged production",
    "the champion alias points at the production version",
    "every poison lifecycle",
)


@pytest.mark.timeout(900)
def test_a_bounded_chaos_run_loses_nothing_and_keeps_every_invariant(tmp_path: Path) -> None:
    lifecycles = int(os.environ.get("SIGNALBOX_CHAOS_LIFECYCLES", "36"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signalbox.cli",
            "chaos",
            "--lifecycles",
            str(lifecycles),
            "--models",
            "3",
            "--kills",
            "2",
            "--poison-rate",
            "0.1",
            "--rate",
            "3",
            "--deadline",
            "600",
            "--seed",
            "11",
            "--state-dir",
            str(tmp_path / "chaos"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output[-4000:]
    for claim in CLAIMS:
        line = next((row for row in output.splitlines() if row.strip().startswith(claim)), "")
        assert line.rstrip().endswith("HOLDS"), f"{claim!r} not reported as holding:\n{output[-3000:]}"
    assert "kill -9 at" in output
    accepted = next(row for row in output.splitlines() if "events accepted (200)" in row)
    assert accepted.split()[-1] == str(lifecycles)
    faults = re.search(r"backend faults injected\s+(\d+) of (\d+) requests", output)
    assert faults and int(faults[1]) > 0, output[-3000:]
    outcomes = next(row for row in output.splitlines() if "accepted events by outcome" in row)
    assert "poison dead-lettered" in outcomes, outcomes  # the seed lands poison data: the DLQ path is exercised
