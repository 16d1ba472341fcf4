"""The registry sweep over a long history: 10,000 registered versions of which 10 are new, on a real MLflow registry.

The registry is MLflow's SQL store (SQLite), wired by ``shared.bootstrap`` (the real ``MlflowRegistry``,
local queues and events). The bench model's history is written in bulk through the store's own session and
models (``SqlModelVersion``, ``SqlModelVersionTag``: the rows ``create_model_version`` writes), every
version decided (``signalbox.decision``) and registered a day ago, the sweep's watermark below the
newest 10, which nothing announced. The figure is the wall time of ``reconcile(model, sweeps=
("registry",))``, which reads the watermark, searches the versions above it and sends the 10
evaluate commands; and the number of registry (port) calls it made, against another model of the
same store with 100 versions, the same 10 of them new. The watermark is put back after each
sample (untimed); the repeated sends are dropped by the local queue's duplicate detection, as
they would be on Service Bus.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.host import CATALOGUE, MODEL
from bench.table import Row, median

if TYPE_CHECKING:
    from shared.services import Services

GOAL_SECONDS = 1.0
NEW = 10
OTHER = "iris-batch"  # the short history: another trained model of the bench catalogue, same store


class _Counting:
    """A registry port that counts its calls by method."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


@dataclass
class Registry:
    """One side of the comparison: a catalogue model with its versions, over the shared counted services."""

    model: str
    versions: int
    services: Services
    counting: _Counting


def services(root: Path) -> tuple[Services, _Counting]:
    """The bench's services over one MLflow SQL store (one schema migration for both sides), registry counted."""
    from shared.bootstrap import bootstrap
    from shared.settings import Settings

    state = root / "registry"
    settings = Settings(  # type: ignore[call-arg]
        SIGNALBOX_STATE_DIR=state,
        SIGNALBOX_CATALOGUE=CATALOGUE,
        MLFLOW_TRACKING_URI=f"sqlite:///{(state / 'mlflow.db').resolve()}",
        SIGNALBOX_CODE_COMMIT="bench",
    )
    svc = bootstrap(settings)
    counting = _Counting(svc.registry)
    svc.registry = counting
    return svc, counting


def build(svc: Services, counting: _Counting, model: str, versions: int) -> Registry:
    """``versions`` versions of ``model``, registered a day ago, the newest ``NEW`` unannounced."""
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlModelVersionTag

    from shared import domain

    registry = counting.inner
    registry.ensure_model(model)
    store = registry._writer.store
    day_ago = int((time.time() - 86_400) * 1000)
    decided = domain.record(won=False, reason="bench history")
    with store.ManagedSessionMaker(read_only=False) as session:
        rows: list[Any] = []
        for number in range(1, versions + 1):
            row = store._with_workspace_field(
                SqlModelVersion(
                    name=model,
                    version=number,
                    creation_time=day_ago + number,
                    last_updated_time=day_ago + number,
                    source=f"file:///bench/{number}",
                    storage_location=f"file:///bench/{number}",
                )
            )
            if number <= versions - NEW:
                tag = SqlModelVersionTag(name=model, version=number, key=domain.DECISION, value=decided)
                row.model_version_tags = [store._with_workspace_field(tag)]
            rows.append(row)
        session.add_all(rows)
    registry.set_model_tag(model, domain.RECONCILED_VERSION, str(versions - NEW))
    return Registry(model=model, versions=versions, services=svc, counting=counting)


def sweep(registry: Registry) -> tuple[float, int]:
    """Seconds and registry calls of one sweep; then the watermark is put back (untimed)."""
    from shared import domain
    from shared.handlers.reconcile import reconcile

    svc, counting = registry.services, registry.counting
    counting.calls.clear()
    started = time.perf_counter()
    report = reconcile(registry.model, svc, sweeps=("registry",))
    elapsed = time.perf_counter() - started
    calls = sum(counting.calls.values())
    if report.counts["registry"]["versions_sent"] != NEW:
        raise RuntimeError(f"the sweep did not find the {NEW} new versions: {report.counts}")
    counting.inner.set_model_tag(registry.model, domain.RECONCILED_VERSION, str(registry.versions - NEW))
    return elapsed, calls


def run(quick: bool) -> list[Row]:
    """Median sweep time and registry calls with a long history against a short one."""
    many, few, repeats = (1_000, 100, 3) if quick else (10_000, 100, 15)
    logging.getLogger("signalbox").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="signalbox-bench-") as tmp:
        svc, counting = services(Path(tmp))
        large, small = build(svc, counting, MODEL, many), build(svc, counting, OTHER, few)
        sweep(large), sweep(small)  # first calls pay for lazy imports and connections
        large_s, small_s, large_calls, small_calls = [], [], set(), set()
        for _ in range(repeats):
            seconds, calls = sweep(large)
            large_s.append(seconds)
            large_calls.add(calls)
            seconds, calls = sweep(small)
            small_s.append(seconds)
            small_calls.add(calls)
    (calls_many,), (calls_few,) = large_calls, small_calls
    return [
        Row(
            f"registry sweep, {many:,} registered versions ({NEW} new) vs {few}",
            f"{median(large_s) * 1000:.1f} ms, {calls_many} registry calls",
            baseline=f"{median(small_s) * 1000:.1f} ms, {calls_few} registry calls",
            ratio=f"{median(large_s) / median(small_s):.2f}x",
            goal=f"<= {GOAL_SECONDS:.0f} s, calls independent of history",
            met=median(large_s) <= GOAL_SECONDS and calls_many == calls_few,
        )
    ]
