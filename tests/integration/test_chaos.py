"""The fault-injection run, in a bounded configuration: `signalbox chaos` must end with every claim holding.

The full run (1,000 lifecycles) is `signalbox chaos` with its defaults; CI runs a smaller one with
the same faults, duplicates and kills, and more of the losses (events never delivered or only
dead-lettered, webhooks dropped, versions registered by hand) and degrades (capacity failures,
slow config updates) so that each happens in a run of 36 lifecycles. SIGNALBOX_CHAOS_LIFECYCLES
makes this test bigger.
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
    "every landed file completed or dead-lettered with a reason",
    "no cause launched two trainings",
    "every landed file (",
    "every capacity failure (",
    "every registered version (",
    "no version evaluated twice",
    "every loss detected within one sweep interval + grace",
    "no old served entity left serving after the drain",
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
            "13",
            "--event-loss-rate",
            "0.1",
            "--deadletter-rate",
            "0.1",
            "--webhook-loss-rate",
            "0.5",
            "--manual-rate",
            "0.25",
            "--capacity-failure-rate",
            "0.1",
            "--slow-update-rate",
            "0.3",
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
    faults = re.search(r"backend faults injected\s+(\d+) of (\d+) requests", output)
    assert faults and int(faults[1]) > 0, output[-3000:]
    outcomes = next(row for row in output.splitlines() if "landed files by outcome" in row)
    assert "poison dead-lettered" in outcomes, outcomes  # the seed lands poison data: the DLQ path is exercised
    # The seed loses events both ways, so the landing sweep must have found them (and the replay of
    # Event Grid's dead letters trained nothing twice: "every landed file ... trained exactly once").
    lost = re.search(r"events lost / only in Event Grid's dead letters\s+(\d+) / (\d+)", output)
    assert lost and int(lost[1]) > 0 and int(lost[2]) > 0, output[-3000:]
    accepted = next(row for row in output.splitlines() if "events accepted (200)" in row)
    assert int(accepted.split()[-1]) == lifecycles - int(lost[1]) - int(lost[2]), accepted  # every delivered one
    replayed = re.search(r"Event Grid dead letters replayed after the drain\s+exit 0: .*replayed (\d+)", output)
    assert replayed and int(replayed[1]) == int(lost[2]), output[-3000:]
    found = re.search(r"losses the sweeps had to find: landed files / versions by hand\s+(\d+) / (\d+)", output)
    assert found and int(found[1]) == int(lost[1]) + int(lost[2]), output[-3000:]
    dropped = re.search(r"MLflow webhooks dropped / forwarded \(answers\)\s+(\d+) / (\d+)", output)
    assert dropped and int(dropped[1]) > 0 and int(dropped[2]) > 0, output[-3000:]
    by_hand = re.search(r"versions registered by hand \(failed\)\s+(\d+) \(0\)", output)
    assert by_hand and int(by_hand[1]) > 0, output[-3000:]
    slow = re.search(r"slow config updates / config updates\s+(\d+) / (\d+)", output)
    assert slow and int(slow[1]) > 0, output[-3000:]
