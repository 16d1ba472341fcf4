"""Fixtures of the ingress fuzzing: one real host for the session, seeded state, and the printed figures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.adapters.local.queues import LocalQueues
from tests.app_functions import registered_functions
from tests.fuzz.harness import (
    CATALOGUE,
    FIGURES,
    PENDING_VERSION,
    PRODUCTION_VERSION,
    SECRETS,
    Fuzzer,
    FuzzWorld,
    QueueWatcher,
)
from tests.hosting import start_host


def _seed_registry(state: Path, landed_uri: str) -> None:
    """A registered fz-trained with a version waiting for approval, one in production, and landed data."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{(state / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("fz-trained")
    for version, tags in (
        (PENDING_VERSION, {"stage": "staged", "approval": "pending"}),
        (PRODUCTION_VERSION, {"stage": "production", "approval": "auto"}),
    ):
        created = client.create_model_version("fz-trained", source=(state / "no-model").as_uri(), run_id=None)
        assert str(created.version) == version
        for key, value in tags.items():
            client.set_model_version_tag("fz-trained", version, key, value)
    # Drift alerts and pushes retrain only a model with landed data.
    client.set_registered_model_tag("fz-trained", "signalbox.data.latest", landed_uri)


# Module scope: the host stops once the fuzzing is done instead of idling through the rest of the suite.
@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    landed = state / "landing" / "landing" / "fz-trained" / "batch-1.csv"
    landed.parent.mkdir(parents=True)
    landed.write_text("sepal_length,target\n5.1,setosa\n")
    # Only the HTTP and Event Grid functions: no queue consumer, so the queues show what ingress added.
    ingress = [f["name"] for f in registered_functions() if f["trigger"] in ("httpTrigger", "eventGridTrigger")]
    host = start_host(
        state,
        env={"SIGNALBOX_CATALOGUE": str(CATALOGUE), "SIGNALBOX_ENVIRONMENT": "dev", **SECRETS},
        extra_args=("--functions", *ingress),
    )
    try:
        # The first invocation builds the services and the registry's database; seed it after.
        warm = requests.get(f"{host.url}/api/status", headers={"x-functions-key": host.function_key}, timeout=120)
        assert warm.status_code == 200, warm.text
        _seed_registry(state, landed.as_uri())
        session = requests.Session()
        queues = LocalQueues(state / "queues.sqlite3")
        world = FuzzWorld(
            host=host,
            fuzzer=Fuzzer(host=host, session=session, watcher=QueueWatcher(state / "queues.sqlite3")),
            landed_uri=landed.as_uri(),
            queues=queues,
        )
        world.seed_dead_letters()
        yield world
        session.close()
        # Duplicate detection keeps one message per cause across the whole run.
        FIGURES.duplicate_message_ids = world.fuzzer.watcher.duplicate_message_ids()
        assert FIGURES.duplicate_message_ids == 0
    finally:
        host.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fuzzing's figures (with -q too)."""
    if not FIGURES.ingresses:
        return
    terminalreporter.section("ingress fuzzing figures")
    for line in FIGURES.table():
        terminalreporter.write_line(line)
