"""The promotion decision with many registered versions against few, on a real MLflow registry.

Each side is its own MLflow SQL store (SQLite) with the bench model's versions registered cheaply
(``create_model_version`` pointing at one run's artifact path): one in production (alias
``champion``), one staged (alias ``challenger``), the rest surpassed or unstaged, and the newest a
challenger whose evaluation won. The figure is the wall time of ``shared.handlers.promote`` for that
win, wired by ``shared.bootstrap`` (the real ``MlflowRegistry``, local queues and events): it finds
the staged version, compares the two, unstages the old one, stages the new one, approves it (``dev``
policy: auto) and sends the deploy command. The registry is put back as it was after each (untimed),
so every sample repeats the same decision.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.host import CATALOGUE, MODEL
from bench.table import Row, median

if TYPE_CHECKING:
    from shared.services import Services

GOAL = 1.2


@dataclass
class Registry:
    """One side of the comparison: its services, the staged version and the winner to promote."""

    versions: int
    services: Services
    staged: str
    winner: str


def _verdict(svc: Services, accuracy: float, champion: dict[str, float] | None) -> str:
    from shared import domain

    spec = svc.catalogue.get(MODEL).evaluation
    assert spec is not None
    scores = {"accuracy": accuracy, "f1_macro": accuracy}
    return domain.judge(spec, scores, champion, "1" if champion else None).to_tag()


def build(root: Path, versions: int) -> Registry:
    """A registry with ``versions`` versions of the bench model, in the state described above."""
    from mlflow import MlflowClient

    from shared import domain
    from shared.bootstrap import bootstrap
    from shared.settings import Settings

    state = root / f"registry-{versions}"
    tracking = f"sqlite:///{(state / 'mlflow.db').resolve()}"
    settings = Settings(  # type: ignore[call-arg]
        SIGNALBOX_STATE_DIR=state,
        SIGNALBOX_CATALOGUE=CATALOGUE,
        MLFLOW_TRACKING_URI=tracking,
        SIGNALBOX_CODE_COMMIT="bench",
    )
    svc = bootstrap(settings)
    client = MlflowClient(tracking_uri=tracking)
    client.create_registered_model(MODEL)
    run = client.create_run(client.create_experiment("bench"))
    source = f"{run.info.artifact_uri}/model"
    champion = {"accuracy": 0.90, "f1_macro": 0.90}
    staged, winner = "2", str(versions)
    for number in range(1, versions + 1):
        version = str(number)
        accuracy = {"1": 0.90, staged: 0.95, winner: 0.99}.get(version, 0.85)
        tags = {domain.DECISION: _verdict(svc, accuracy, champion if number > 1 else None)}
        if number == 1:
            tags |= {domain.STAGE: domain.Stage.PRODUCTION, domain.APPROVAL: domain.Approval.AUTO}
        elif version == staged:
            tags |= {domain.STAGE: domain.Stage.STAGED, domain.APPROVAL: domain.Approval.AUTO}
        elif version != winner:
            tags[domain.STAGE] = domain.Stage.SURPASSED if number % 2 else domain.Stage.UNSTAGED
        created = client.create_model_version(MODEL, source, run_id=run.info.run_id, tags=tags)
        assert str(created.version) == version
    client.set_registered_model_alias(MODEL, domain.CHAMPION, "1")
    client.set_registered_model_alias(MODEL, domain.CHALLENGER, staged)
    return Registry(versions=versions, services=svc, staged=staged, winner=winner)


def decide(registry: Registry) -> float:
    """Seconds of one promotion decision for the winner; then the registry is put back (untimed)."""
    from shared import domain, handlers
    from shared.contracts import Envelope, PromoteVersion

    svc = registry.services
    command = PromoteVersion(model_name=MODEL, version=registry.winner, decision="won")
    envelope = Envelope.start(command, cause=f"bench:{time.monotonic_ns()}", environment="dev", now=datetime.now(UTC))
    started = time.perf_counter()
    outcome = handlers.promote(envelope, svc)
    elapsed = time.perf_counter() - started
    winner = svc.registry.get_version(MODEL, registry.winner)
    if outcome != "deploy" or domain.stage_of(winner) is not domain.Stage.STAGED:
        raise RuntimeError(f"promotion of v{registry.winner} did not stage it: {outcome}, {winner.tags}")
    for key in (domain.STAGE, domain.APPROVAL):
        svc.registry.delete_version_tag(MODEL, registry.winner, key)
    svc.registry.set_version_tags(MODEL, registry.staged, {domain.STAGE: domain.Stage.STAGED})
    svc.registry.delete_version_tag(MODEL, registry.staged, "signalbox.outcome")
    svc.registry.set_alias(MODEL, domain.CHALLENGER, registry.staged)
    return elapsed


def run(quick: bool) -> list[Row]:
    """Median decision time with many versions against few, sampled alternately."""
    many, few, repeats = (100, 10, 3) if quick else (1000, 10, 25)
    logging.getLogger("signalbox").setLevel(logging.WARNING)  # the handlers log every step at INFO
    with tempfile.TemporaryDirectory(prefix="signalbox-bench-") as tmp:
        large, small = build(Path(tmp), many), build(Path(tmp), few)
        decide(large), decide(small)  # first calls pay for lazy imports and connections
        large_s, small_s = [], []
        for _ in range(repeats):
            large_s.append(decide(large))
            small_s.append(decide(small))
    ratio = median(large_s) / median(small_s)
    return [
        Row(
            f"promotion decision, {many:,} registered versions vs {few}",
            f"{median(large_s) * 1000:.1f} ms",
            baseline=f"{median(small_s) * 1000:.1f} ms",
            ratio=f"{ratio:.2f}x",
            goal=f"<= {GOAL}x",
            met=ratio <= GOAL,
        )
    ]
