"""Reconciliation sweeps (registry and runs) through the handlers, over in-memory fakes."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from shared import domain, handlers, queues
from shared.contracts import Envelope, ReconcileModel, TrainModel
from shared.handlers.reconcile import PAGE, reconcile, schedule_sweeps, sweep_registry
from shared.ports import RunStatus
from tests.fakes import FakeBus, FakeClock, FakeCompute, FakeRegistry, services

MODEL = "iris-classifier"
BOTH = ("registry", "runs")  # the landing sweep has its own tests


def drain(svc: Any) -> list[str]:
    """Run every queued command through its queue's handler, as the pipeline functions would."""
    outcomes = []
    bus: FakeBus = svc.bus
    while bus.sent:
        envelope, _ = bus.sent.pop(0)
        outcomes.append(f"{envelope.command.kind}:{handlers.PIPELINE[envelope.queue](envelope, svc)}")
    return outcomes


def register(svc: Any, *, age: timedelta = timedelta(minutes=10), accuracy: float = 0.9, **tags: str) -> str:
    """A version registered ``age`` ago with nothing announced (no webhook reached Signalbox)."""
    version = svc.registry.register(MODEL, registered_at=svc.clock() - age, **tags)
    svc.evaluator.scores[version] = {"accuracy": accuracy, "f1_macro": accuracy}
    return version


class CountingRegistry:
    """The fake registry, counting every port call by method."""

    def __init__(self, inner: FakeRegistry) -> None:
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


# -- registry sweep --------------------------------------------------------------------------------


def test_an_unannounced_version_is_evaluated_through_the_sweep_once() -> None:
    svc = services()
    version = register(svc)
    report = reconcile(MODEL, svc, sweeps=BOTH)
    assert report.counts["registry"] == {
        "versions_new": 1,
        "versions_decided": 0,
        "versions_sent": 1,
        "versions_waiting": 0,
        "versions_failed": 0,
    }
    (evaluate,) = [e for e, _ in svc.bus.sent]
    # The webhook's cause, so the message id is the one a webhook for this version has.
    assert evaluate.message_id == handlers_message_id(svc, version)
    assert evaluate.command.source == "reconcile"
    assert drain(svc)[:2] == ["evaluate:won", "promote:deploy"]
    assert svc.evaluator.calls == [version]
    assert svc.registry.model_tags(MODEL)[domain.RECONCILED_VERSION] == version
    # Decided now: the next sweep sends nothing and reads nothing below the watermark.
    assert reconcile(MODEL, svc, sweeps=BOTH).counts["registry"]["versions_new"] == 0
    assert not svc.bus.sent


def handlers_message_id(svc: Any, version: str) -> str:
    """The message id of the webhook's evaluate command for ``version`` (a scratch bus sees it)."""
    scratch = services()
    scratch.registry = svc.registry
    handlers.new_version(MODEL, version, "mlflow-webhook", scratch)
    (sent,) = [e for e, _ in scratch.bus.sent]
    return sent.message_id


@pytest.mark.parametrize("webhook_first", [True, False])
def test_a_late_webhook_and_the_sweep_make_one_evaluation(webhook_first: bool) -> None:
    svc = services()
    version = register(svc)
    announce = [
        lambda: handlers.new_version(MODEL, version, "mlflow-webhook", svc),
        lambda: reconcile(MODEL, svc, sweeps=BOTH),
    ]
    for step in announce if webhook_first else reversed(announce):
        step()
    assert [e.command.kind for e, _ in svc.bus.sent] == ["evaluate"]
    drain(svc)
    # The late one after the evaluation: the version is decided (sweep) or its id is a duplicate (webhook).
    for step in announce:
        step()
    drain(svc)
    assert svc.evaluator.calls == [version]
    assert len([e for e in svc.events.types() if e == "VersionEvaluated"]) == 1


def test_a_version_within_the_grace_period_waits_for_its_webhook() -> None:
    svc = services()
    decided = register(svc, **{domain.DECISION: domain.record(won=True)})
    young = register(svc, age=timedelta(seconds=30))
    report = reconcile(MODEL, svc, sweeps=BOTH)
    assert report.counts["registry"]["versions_waiting"] == 1
    assert report.counts["registry"]["versions_sent"] == 0
    assert not svc.bus.sent
    # The watermark passes the decided version, not the waiting one.
    assert svc.registry.model_tags(MODEL)[domain.RECONCILED_VERSION] == decided
    svc.clock.advance(seconds=svc.settings.reconcile_grace_seconds)
    assert reconcile(MODEL, svc, sweeps=BOTH).counts["registry"]["versions_sent"] == 1
    assert [e.command.version for e, _ in svc.bus.sent] == [young]
    assert svc.registry.model_tags(MODEL)[domain.RECONCILED_VERSION] == young


def test_the_grace_period_is_a_setting() -> None:
    svc = services(SIGNALBOX_RECONCILE_GRACE_SECONDS="5")
    register(svc, age=timedelta(seconds=10))
    assert reconcile(MODEL, svc, sweeps=BOTH).counts["registry"]["versions_sent"] == 1


def test_a_version_still_registering_waits_and_a_failed_registration_is_passed_over() -> None:
    from dataclasses import replace

    svc = services()
    pending, failed = register(svc), register(svc)
    registry: FakeRegistry = svc.registry
    registry.versions[(MODEL, pending)] = replace(registry.versions[(MODEL, pending)], status="PENDING_REGISTRATION")
    registry.versions[(MODEL, failed)] = replace(registry.versions[(MODEL, failed)], status="FAILED_REGISTRATION")
    counts = reconcile(MODEL, svc, sweeps=BOTH).counts["registry"]
    assert (counts["versions_waiting"], counts["versions_failed"], counts["versions_sent"]) == (1, 1, 0)
    assert domain.RECONCILED_VERSION not in registry.model_tags(MODEL)


def test_the_watermark_moves_past_decided_and_sent_versions_only_and_the_next_sweep_starts_there() -> None:
    svc = services()
    counting = CountingRegistry(svc.registry)
    svc.registry = counting
    first = [register(svc, **{domain.DECISION: "{}"}) for _ in range(3)]
    sent = register(svc)
    reconcile(MODEL, svc, sweeps=("registry",))
    assert counting.model_tags(MODEL)[domain.RECONCILED_VERSION] == sent
    assert [e.command.version for e, _ in svc.bus.sent] == [sent]
    later = register(svc)
    seen: list[tuple[str, ...]] = []
    original = counting.inner.versions_after

    def recorded(model: str, version: str, limit: int) -> Any:
        seen.append((model, version))
        return original(model, version, limit)

    counting.inner.versions_after = recorded  # type: ignore[method-assign]
    reconcile(MODEL, svc, sweeps=("registry",))
    assert seen == [(MODEL, sent)]
    assert counting.model_tags(MODEL)[domain.RECONCILED_VERSION] == later
    assert first == ["1", "2", "3"]


def test_a_broken_watermark_sweeps_from_the_start() -> None:
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.RECONCILED_VERSION, "not a number")
    version = register(svc)
    assert reconcile(MODEL, svc, sweeps=BOTH).counts["registry"]["versions_sent"] == 1
    assert svc.registry.model_tags(MODEL)[domain.RECONCILED_VERSION] == version


@pytest.mark.parametrize("history", [100, 10_000])
def test_registry_calls_follow_the_new_versions_not_the_history(history: int) -> None:
    svc = services()
    registry: FakeRegistry = svc.registry
    clock: FakeClock = svc.clock
    old = clock() - timedelta(days=1)
    for _ in range(history - 10):
        registry.register(MODEL, registered_at=old, **{domain.DECISION: "{}"})
    registry.set_model_tag(MODEL, domain.RECONCILED_VERSION, str(history - 10))
    new = [register(svc) for _ in range(10)]
    counting = CountingRegistry(registry)
    svc.registry = counting
    report = reconcile(MODEL, svc, sweeps=("registry",))
    assert report.counts["registry"]["versions_sent"] == 10
    assert sorted(e.command.version for e, _ in svc.bus.sent) == sorted(new)
    # One read of the model's tags, one search (the versions with their tags), one watermark write.
    assert counting.calls == Counter(model_tags=1, versions_after=1, set_model_tag=1)


def test_more_new_versions_than_a_page_are_read_a_page_at_a_time() -> None:
    svc = services()
    for _ in range(PAGE + 5):
        register(svc)
    counting = CountingRegistry(svc.registry)
    svc.registry = counting
    assert reconcile(MODEL, svc, sweeps=("registry",)).counts["registry"]["versions_sent"] == PAGE + 5
    assert counting.calls["versions_after"] == 2
    assert counting.model_tags(MODEL)[domain.RECONCILED_VERSION] == str(PAGE + 5)


def test_a_dry_run_sends_nothing_moves_nothing_and_publishes_nothing() -> None:
    svc = services()
    register(svc)
    _launched_run_with_lost_poll(svc)
    tags_before = svc.registry.model_tags(MODEL)
    report = reconcile(MODEL, svc, sweeps=BOTH, dry_run=True)
    assert report.dry_run and report.sent == 2
    assert report.counts["registry"]["versions_sent"] == 1 and report.counts["runs"]["runs_sent"] == 1
    assert not svc.bus.sent
    assert svc.registry.model_tags(MODEL) == tags_before
    assert "Reconciled" not in svc.events.types()


def test_a_rule_based_model_has_no_registry_sweep() -> None:
    svc = services()
    svc.registry.register("iris-rules", registered_at=svc.clock() - timedelta(hours=1))
    assert sweep_registry(svc.catalogue.get("iris-rules"), svc)["versions_new"] == 0
    assert not svc.bus.sent


def test_every_sweep_publishes_what_it_found_and_did() -> None:
    svc = services()
    register(svc)
    reconcile(MODEL, svc, sweeps=BOTH)
    reconcile(MODEL, svc, sweeps=BOTH)
    published = [(s, d) for t, s, d in svc.events.published if t == "Reconciled"]
    assert [s for s, _ in published] == [MODEL, MODEL]
    assert published[0][1]["sent"] == 1 and published[0][1]["registry"]["versions_sent"] == 1
    assert published[1][1]["sent"] == 0 and published[1][1]["runs"] == {"runs_open": 0, "runs_live": 0, "runs_sent": 0}


# -- run sweep -------------------------------------------------------------------------------------


def _launched_run_with_lost_poll(svc: Any) -> str:
    """Train (the poll it schedules is lost) and let the poll's time pass; the run id."""
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///landing/iris/a.csv")
    envelope = Envelope.start(TrainModel(model_name=MODEL, reason="manual"), cause="t", environment="dev")
    run_id = handlers.train(envelope, svc)
    assert [e.command.kind for e in svc.bus.take()] == ["poll-run"]  # lost
    svc.clock.advance(seconds=svc.settings.poll_initial_seconds + svc.settings.reconcile_grace_seconds + 1)
    return run_id


def test_a_run_whose_poll_was_lost_gets_a_poll_and_goes_on_to_evaluation() -> None:
    svc = services()
    run_id = _launched_run_with_lost_poll(svc)
    record = domain.read_record(svc.registry.model_tags(MODEL)[f"{domain.RUN_TAG_PREFIX}{run_id}"])
    assert record["backend"] == "local" and record["attempt"] == 0
    counts = reconcile(MODEL, svc, sweeps=BOTH).counts["runs"]
    assert counts == {"runs_open": 1, "runs_live": 0, "runs_sent": 1}
    (poll,) = [e for e, _ in svc.bus.sent]
    assert poll.command.kind == "poll-run" and poll.command.run_id == run_id and poll.command.attempt == 0
    assert poll.command.launch is not None and poll.command.launch.reason == "manual"
    assert poll.correlation_id == record["correlation_id"]
    # Still running: the chain it started goes on and the record says when its next poll is due.
    (swept,) = svc.bus.take("poll-run")
    assert handlers.poll_run(swept, svc) == "running"
    assert reconcile(MODEL, svc, sweeps=BOTH).counts["runs"] == {"runs_open": 1, "runs_live": 1, "runs_sent": 0}
    compute: FakeCompute = svc.compute["local"]
    version = svc.registry.register(MODEL, run_id="mlflow-run")
    svc.evaluator.scores[version] = {"accuracy": 0.9, "f1_macro": 0.9}
    compute.states[run_id] = RunStatus(run_id, "succeeded", outputs={"mlflow_run_id": "mlflow-run"})
    (next_poll,) = svc.bus.take("poll-run")
    assert handlers.poll_run(next_poll, svc) == "evaluate"
    # Seen finished: no record is left for the sweep.
    assert not [k for k in svc.registry.model_tags(MODEL) if k.startswith(domain.RUN_TAG_PREFIX)]
    assert reconcile(MODEL, svc, sweeps=("runs",)).counts["runs"] == {"runs_open": 0, "runs_live": 0, "runs_sent": 0}


def test_a_live_poll_chain_gets_no_second_poll_and_a_late_one_merges_with_the_sweeps() -> None:
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///landing/iris/a.csv")
    envelope = Envelope.start(TrainModel(model_name=MODEL, reason="manual"), cause="t", environment="dev")
    handlers.train(envelope, svc)
    (live,) = svc.bus.take("poll-run")
    assert reconcile(MODEL, svc, sweeps=("runs",)).counts["runs"]["runs_sent"] == 0
    svc.clock.advance(seconds=svc.settings.poll_initial_seconds + svc.settings.reconcile_grace_seconds + 1)
    reconcile(MODEL, svc, sweeps=("runs",))
    (swept,) = svc.bus.take("poll-run")
    # The live poll was only late: both run, and their next polls are one message id.
    handlers.poll_run(live, svc)
    handlers.poll_run(swept, svc)
    assert len(svc.bus.take("poll-run")) == 1


def test_a_run_given_up_on_leaves_no_record() -> None:
    svc = services(SIGNALBOX_POLL_MAX_ATTEMPTS="1")
    run_id = _launched_run_with_lost_poll(svc)
    reconcile(MODEL, svc, sweeps=("runs",))
    assert drain(svc) == ["poll-run:gave-up"]
    assert svc.compute["local"].cancelled == [run_id]
    assert not [k for k in svc.registry.model_tags(MODEL) if k.startswith(domain.RUN_TAG_PREFIX)]


# -- the timer and the promote queue ---------------------------------------------------------------


def test_the_timer_sends_one_sweep_per_model_per_minute_whichever_instance_sends_it() -> None:
    svc = services()
    models = schedule_sweeps(svc)
    assert models == list(svc.catalogue.models)
    sent = [e for e, _ in svc.bus.sent]
    assert [e.command.model_name for e in sent] == models
    assert {e.queue for e in sent} == {queues.PROMOTE}
    assert [e.session_id for e in sent] == models
    # A second instance's timer a few seconds later: the same ids, dropped as duplicates.
    svc.clock.advance(seconds=3)
    schedule_sweeps(svc)
    assert len(svc.bus.sent) == len(models)
    # The next occurrence is a new sweep.
    svc.clock.advance(minutes=5)
    schedule_sweeps(svc)
    assert len(svc.bus.sent) == 2 * len(models)


def test_the_promote_queue_runs_a_sweep_in_the_models_session() -> None:
    svc = services()
    version = register(svc)
    command = ReconcileModel(model_name=MODEL, sweeps=BOTH)
    envelope = Envelope.start(command, cause="reconcile:test", environment="dev")
    assert envelope.queue == queues.PROMOTE and envelope.session_id == MODEL
    assert handlers.PIPELINE[queues.PROMOTE](envelope, svc) == "reconciled"
    assert [e.command.version for e, _ in svc.bus.sent] == [version]
    assert "Reconciled" in svc.events.types()


def test_a_sweep_of_a_model_gone_from_the_catalogue_is_ignored() -> None:
    svc = services()
    envelope = Envelope.start(ReconcileModel(model_name="retired-model"), cause="reconcile:x", environment="dev")
    assert handlers.PIPELINE[queues.PROMOTE](envelope, svc) == "ignored"
    assert not svc.bus.sent and not svc.events.published


@pytest.mark.parametrize(
    ("setting", "schedule"), [(None, "0 */5 * * * *"), ("0 0 * * * *", "%SIGNALBOX_RECONCILE_SCHEDULE%")]
)
def test_the_timer_reads_its_schedule_from_the_app_setting_when_there_is_one(
    setting: str | None, schedule: str
) -> None:
    """The host resolves %SIGNALBOX_RECONCILE_SCHEDULE% from app settings; without the setting the default applies."""
    import json
    import os
    import subprocess
    import sys

    from tests.hosting import REPO

    env = {k: v for k, v in os.environ.items() if k != "SIGNALBOX_RECONCILE_SCHEDULE"}
    if setting is not None:
        env["SIGNALBOX_RECONCILE_SCHEDULE"] = setting
    script = (
        "import json, function_app\n"
        "(t,) = [f.get_trigger() for f in function_app.app.get_functions() if f.get_function_name() == 'reconcile']\n"
        "print(json.dumps(t.get_dict_repr(), default=str))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    trigger = json.loads(done.stdout)
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == schedule


def test_a_failing_sweep_leaves_the_others_to_run_and_is_reported() -> None:
    from shared.errors import PermanentError, TransientError

    svc = services()
    version = register(svc)

    class BrokenLanding:
        def list_since(self, *args: object) -> list[object]:
            raise PermanentError("403: the identity may not list the landing container")

    svc.landing = BrokenLanding()  # type: ignore[assignment]
    report = reconcile(MODEL, svc)
    assert report.failed == {"landing": "PermanentError: 403: the identity may not list the landing container"}
    assert [e.command.version for e, _ in svc.bus.sent] == [version]
    ((_, data),) = [(s, d) for t, s, d in svc.events.published if t == "Reconciled"]
    assert data["failed"] == report.failed and data["registry"]["versions_sent"] == 1

    class Throttled:
        def list_since(self, *args: object) -> list[object]:
            raise TransientError("429 from storage")

    svc.landing = Throttled()  # type: ignore[assignment]
    envelope = Envelope.start(ReconcileModel(model_name=MODEL), cause="reconcile:t", environment="dev")
    # Raised after the other sweeps ran and the failure was recorded: the dispatcher retries the command later.
    with pytest.raises(TransientError):
        handlers.PIPELINE[queues.PROMOTE](envelope, svc)
    last = [d for t, _, d in svc.events.published if t == "Reconciled"][-1]
    assert last["failed"] == {"landing": "TransientError: 429 from storage"} and "registry" in last


def test_the_sweeps_evaluation_joins_the_lifecycle_the_training_job_tagged_on_the_version() -> None:
    svc = services()
    register(svc, **{domain.CORRELATION_ID: "corr-from-training", domain.ENVIRONMENT: "staging"})
    reconcile(MODEL, svc, sweeps=("registry",))
    ((evaluate, _),) = svc.bus.sent
    assert evaluate.correlation_id == "corr-from-training" and evaluate.environment == "staging"
