"""The on-call story end to end: a real lifecycle step is poisoned until it is dead-lettered, the
operator lists it, dry-runs a replay (nothing moves), fixes the cause, replays, and the chain finishes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.adapters.local.queues import LocalQueues
from tests.integration.test_lifecycle import REPO, running_stack

pytestmark = pytest.mark.integration

MODEL = "dlq-story"


def _catalogue(tmp: Path, dataset: Path) -> Path:
    path = tmp / "catalogue.toml"
    path.write_text(f"""
[models.{MODEL}]
kind = "trained"
[models.{MODEL}.training]
job = "signalbox.examples.iris.train"
[models.{MODEL}.data]
container = "landing"
prefix = "{MODEL}/"
[models.{MODEL}.evaluation]
dataset = "{dataset}"
primary_metric = "accuracy"
[models.{MODEL}.approval]
dev = "auto"
[models.{MODEL}.deployment]
endpoint = "dlq-story"
""")
    return path


def _dlq(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalbox.cli", "dlq", *args, "--state-dir", str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_poison_list_dry_run_fix_replay_and_the_chain_finishes(tmp_path: Path) -> None:
    dataset = tmp_path / "evaluation.csv"  # missing at first: every evaluation fails
    with running_stack(tmp_path / "state", catalogue=_catalogue(tmp_path, dataset)) as stack:
        queues = LocalQueues(stack.state / "queues.sqlite3")
        stack.land(f"{MODEL}/", "batch-001.csv", "full", seed=5)
        stack.wait(
            "the evaluation to be dead-lettered", lambda: queues.counts("evaluate")["dead_letter"] == 1, watch=False
        )

        listed = _dlq(stack.state, "list", "evaluate", "--json")
        assert listed.returncode == 0, listed.stderr
        (dead,) = json.loads(listed.stdout)["dead_letters"]
        assert dead["reason"] == "MaxDeliveryCountExceeded"
        shown = _dlq(stack.state, "show", dead["message_id"], "--json")
        assert shown.returncode == 0, shown.stderr
        assert "evaluation.csv" in shown.stdout and "cannot be read" in shown.stdout  # the error says what to fix

        dry = _dlq(stack.state, "replay", "evaluate", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert queues.counts("evaluate") == {**queues.counts("evaluate"), "dead_letter": 1, "active": 0}

        shutil.copyfile(REPO / "signalbox" / "examples" / "iris" / "evaluation.csv", dataset)  # the fix
        replayed = _dlq(stack.state, "replay", "evaluate")
        assert replayed.returncode == 0, replayed.stderr
        stack.wait("v1 in production after the replay", lambda: stack.in_production(MODEL, "1"))
        tags = stack.tags(MODEL, "1")
        assert json.loads(tags["signalbox.decision"])["won"] is True
        assert json.loads(tags["signalbox.deployment"])["status"] == "deployed"
        assert queues.counts("evaluate")["dead_letter"] == 0
