"""An operator in an incident, through the handlers over in-memory fakes: roll back, hold, release, history."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import domain, handlers, history
from shared.contracts import Envelope, RollbackModel, parse_envelope
from shared.deadletters import replay_message
from shared.deadletters.ports import DeadLetter
from shared.errors import InvalidInput, ModelHeld, NotAwaitingApproval, RollbackRefused, UnknownVersion
from shared.handlers import operator
from shared.lifecycle import lifecycle
from tests.fakes import FakeBus, FakeRegistry, services
from tests.unit.test_handlers import MODEL, drain, train_to_version


def two_deployed(environment: str = "dev"):
    """v1 then a better v2, both deployed in turn (v1 surpassed, v2 production)."""
    svc = services(environment=environment)
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    if environment != "dev":
        handlers.request_approval_decision(MODEL, v1, True, "ops", svc)
        drain(svc)
    svc.clock.advance(minutes=5)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    drain(svc)
    if environment != "dev":
        handlers.request_approval_decision(MODEL, v2, True, "ops", svc)
        drain(svc)
    assert (svc.registry.stage(MODEL, v1), svc.registry.stage(MODEL, v2)) == ("surpassed", "production")
    svc.clock.advance(minutes=5)
    return svc, v1, v2


def stages(svc) -> dict[str, str | None]:
    return {v.version: v.tags.get("stage") for v in svc.registry.list_versions(MODEL)}


def test_rollback_redeploys_the_previous_version_through_the_same_endpoint():
    svc, v1, v2 = two_deployed()
    url = svc.serving.endpoint_url("iris")
    answer = operator.request_rollback(MODEL, None, "alice", "v2 answers 500s", "req-1", svc)
    assert answer == {"model": MODEL, "to_version": v1, "from_version": v2, "request_id": "req-1", "outcome": "queued"}
    (sent,) = [e for e, _ in svc.bus.sent]
    assert sent.command.kind == "rollback" and sent.queue == "deploy" and sent.session_id == MODEL
    assert drain(svc) == ["rollback:reverted"]

    assert stages(svc) == {v1: "production", v2: "unstaged"}
    assert svc.serving.current("iris").version == v1 and [d.version for d in svc.serving.running] == [v1]
    assert svc.registry.alias_version(MODEL, "champion") == v1
    rolled = svc.registry.get_version(MODEL, v2).tags
    record = json.loads(rolled[domain.ROLLBACK])
    assert record["by"] == "alice" and record["reason"] == "v2 answers 500s" and record["to_version"] == v1
    assert record["request_id"] == "req-1" and record["at"]
    assert rolled["signalbox.outcome"] == f"rolled back to v{v1} by alice: v2 answers 500s"
    deployment = json.loads(svc.registry.get_version(MODEL, v1).tags[domain.DEPLOYMENT])
    assert deployment["status"] == "deployed" and deployment["url"] == url
    assert deployment["rollback_from"] == v2 and deployment["by"] == "alice" and deployment["request_id"] == "req-1"
    assert "ModelRolledBack" in svc.events.types()
    # v2 served: a roll forward to it is allowed.
    forward = operator.request_rollback(MODEL, v2, "alice", "fixed upstream", "req-2", svc)
    assert forward["to_version"] == v2 and forward["from_version"] == v1


def test_one_rollback_per_request_id_under_double_clicks_and_redelivery():
    svc, v1, v2 = two_deployed()
    first = operator.request_rollback(MODEL, None, "alice", "bad", "req-1", svc)
    again = operator.request_rollback(MODEL, None, "alice", "bad", "req-1", svc)
    assert first == again
    assert len(svc.bus.sent) == 1  # duplicate detection dropped the second (same message id)
    envelope = svc.bus.sent[0][0]
    assert drain(svc) == ["rollback:reverted"]
    # A redelivery of the same message, and a click after it ran: nothing moves again.
    assert handlers.deploy(envelope, svc) == "already-production"
    assert operator.request_rollback(MODEL, None, "alice", "bad", "req-1", svc) == first
    assert svc.bus.sent == [] and stages(svc) == {v1: "production", v2: "unstaged"}
    entries = history.read(svc, MODEL)
    assert len([e for e in entries if e["kind"] == "rollback" and "requested" in e["what"]]) == 1
    assert len([e for e in entries if e["what"] == f"rolled back to v{v1} from v{v2}"]) == 1


def test_rollback_refusals_change_nothing():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    with pytest.raises(RollbackRefused, match="nothing to roll back to"):
        operator.request_rollback(MODEL, None, "alice", "why", "r1", svc)
    v2 = train_to_version(svc, accuracy=0.5, event_id="b")  # lost: never served
    drain(svc)
    with pytest.raises(RollbackRefused, match="never served"):
        operator.request_rollback(MODEL, v2, "alice", "why", "r2", svc)
    with pytest.raises(RollbackRefused, match="already in production"):
        operator.request_rollback(MODEL, v1, "alice", "why", "r3", svc)
    with pytest.raises(UnknownVersion):
        operator.request_rollback(MODEL, "9", "alice", "why", "r4", svc)
    with pytest.raises(InvalidInput, match="reason"):
        operator.request_rollback(MODEL, None, "alice", "  ", "r5", svc)
    with pytest.raises(InvalidInput, match="by"):
        operator.request_rollback(MODEL, None, None, "why", "r6", svc)
    assert svc.bus.sent == []


def test_a_rollback_to_a_version_whose_files_are_gone_fails_clearly_and_changes_nothing():
    svc, v1, v2 = two_deployed()
    registry: FakeRegistry = svc.registry
    registry.files_gone.add((MODEL, v1))
    with pytest.raises(RollbackRefused, match=r"model files .* are gone"):
        operator.request_rollback(MODEL, v1, "alice", "bad", "r1", svc)
    assert svc.bus.sent == []
    # Gone after the request was accepted: the handler checks again before deploying.
    registry.files_gone.clear()
    operator.request_rollback(MODEL, v1, "alice", "bad", "r2", svc)
    registry.files_gone.add((MODEL, v1))
    before = {v.version: dict(v.tags) for v in registry.list_versions(MODEL)}
    assert drain(svc) == ["rollback:revert-failed"]
    assert {v.version: dict(v.tags) for v in registry.list_versions(MODEL)} == before
    assert svc.serving.current("iris").version == v2 and svc.serving.running == [svc.serving.current("iris")]
    assert svc.registry.alias_version(MODEL, "champion") == v2
    (failed,) = [e for e in history.read(svc, MODEL) if "failed" in e["what"]]
    assert failed["who"] == "alice" and "gone" in failed["why"]


def test_a_rollback_target_that_fails_its_smoke_test_leaves_production_serving():
    svc, v1, v2 = two_deployed()
    operator.request_rollback(MODEL, None, "alice", "bad", "r1", svc)
    svc.serving.broken_versions.add(v1)
    assert drain(svc) == ["rollback:revert-failed"]
    assert stages(svc) == {v1: "surpassed", v2: "production"}
    assert svc.serving.current("iris").version == v2 and [d.version for d in svc.serving.running] == [v2]
    assert "RollbackFailed" in svc.events.types()


@pytest.mark.parametrize("rollback_first", [True, False])
def test_a_rollback_racing_a_promotion_is_ordered_by_the_session(rollback_first):
    svc, v1, v2 = two_deployed()
    v3 = train_to_version(svc, accuracy=0.95, event_id="c")
    bus: FakeBus = svc.bus
    evaluate = bus.take("evaluate")
    for envelope in evaluate:
        handlers.evaluate(envelope, svc)
    for envelope in bus.take("promote"):
        handlers.promote(envelope, svc)
    (deploy,) = bus.take("deploy")  # v3's deployment waits in the model's session
    operator.request_rollback(MODEL, v1, "alice", "bad", "r1", svc)
    (rollback,) = bus.take("rollback")
    order = [rollback, deploy] if rollback_first else [deploy, rollback]
    outcomes = [str(handlers.deploy(envelope, svc)) for envelope in order]
    production = [v for v, stage in stages(svc).items() if stage == "production"]
    assert len(production) == 1 and svc.serving.current("iris").version == production[0]
    assert len(svc.serving.running) == 1
    assert svc.registry.alias_version(MODEL, "champion") == production[0]
    if rollback_first:
        assert outcomes == ["reverted", "deployed"] and production == [v3]
        assert stages(svc) == {v1: "surpassed", v2: "unstaged", v3: "production"}
    else:
        assert outcomes == ["deployed", "reverted"] and production == [v1]
        assert stages(svc) == {v1: "production", v2: "surpassed", v3: "unstaged"}
        # The rollback undid v3 (it was production when the rollback ran): the record says so.
        assert json.loads(svc.registry.get_version(MODEL, v3).tags[domain.ROLLBACK])["to_version"] == v1
        assert json.loads(svc.registry.get_version(MODEL, v1).tags[domain.DEPLOYMENT])["rollback_from"] == v3
        assert f"rolled back to v{v1} from v{v3}" in [e["what"] for e in history.read(svc, MODEL)]


def test_hold_keeps_a_winner_staged_until_release_then_it_deploys():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    held = operator.hold(MODEL, "bob", "investigating drift", "h1", svc)
    assert held["outcome"] == "held" and held["held"]["by"] == "bob"
    assert operator.hold(MODEL, "bob", "investigating drift", "h1", svc)["outcome"] == "held"  # double click
    assert operator.hold(MODEL, "carol", "other", "h2", svc)["outcome"] == "already-held"
    assert lifecycle(MODEL, svc)["held"] == {
        "by": "bob",
        "reason": "investigating drift",
        "at": svc.clock().isoformat(),
        "request_id": "h1",
    }

    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    assert drain(svc) == ["evaluate:won", "promote:held"]  # training and evaluation went on
    assert stages(svc) == {v1: "production", v2: "staged"}
    decision = json.loads(svc.registry.get_version(MODEL, v2).tags[domain.DECISION])
    assert decision["won"] and decision["held"]["by"] == "bob" and decision["held"]["reason"] == "investigating drift"
    assert svc.serving.current("iris").version == v1

    released = operator.release(MODEL, "bob", "drift was a sensor fault", "r1", svc)
    assert released["outcome"] == "released" and released["sent"] == {"kind": "deploy", "version": v2}
    assert operator.release(MODEL, "bob", None, "r1", svc)["outcome"] == "released"  # double click: same answer
    assert operator.release(MODEL, "bob", None, "r2", svc)["outcome"] == "not-held"
    assert lifecycle(MODEL, svc)["held"] is None
    assert drain(svc) == ["deploy:deployed"]
    assert stages(svc) == {v1: "surpassed", v2: "production"}
    kinds = [e["kind"] for e in history.read(svc, MODEL)]
    assert "hold" in kinds and "release" in kinds


def test_a_deployment_already_queued_when_the_hold_comes_waits_too():
    svc = services()
    train_to_version(svc, accuracy=0.7, event_id="a")
    bus: FakeBus = svc.bus
    handlers.evaluate(bus.take("evaluate")[0], svc)
    handlers.promote(bus.take("promote")[0], svc)
    operator.hold(MODEL, "bob", "freeze", "h1", svc)
    assert drain(svc) == ["deploy:held"]
    assert stages(svc) == {"1": "staged"} and svc.serving.current("iris") is None
    operator.release(MODEL, "bob", "", "r1", svc)
    assert drain(svc) == ["deploy:deployed"]  # a new cause: duplicate detection kept the held one's id


def test_approvals_of_a_held_model_are_refused_with_the_reason():
    svc = services(environment="prod")
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    assert drain(svc) == ["evaluate:won", "promote:pending-approval"]
    operator.hold(MODEL, "bob", "quarterly freeze", "h1", svc)
    with pytest.raises(ModelHeld, match="quarterly freeze") as refused:
        handlers.request_approval_decision(MODEL, v1, True, "ops", svc)
    assert isinstance(refused.value, NotAwaitingApproval)  # the approvals function answers it with 409
    assert handlers.request_approval_decision(MODEL, v1, False, "ops", svc) == "rejected"  # a rejection goes on
    operator.release(MODEL, "bob", None, "r1", svc)
    assert [e.command.kind for e, _ in svc.bus.sent] == ["promote"]  # the rejection; a pending version waits


def test_history_records_the_whole_lifecycle_and_a_rollback_newest_first():
    svc, v1, v2 = two_deployed()
    operator.request_rollback(MODEL, None, "alice", "v2 answers 500s", "req-1", svc)
    svc.clock.advance(seconds=1)
    drain(svc)
    entries = history.read(svc, MODEL)
    whats = [e["what"] for e in entries]
    expected = [
        f"v{v1} won its evaluation",
        f"v{v1} none → staged",
        f"challenger → v{v1}",
        f"v{v1} approved automatically",
        f"v{v1} deployed to iris",
        f"v{v1} staged → production",
        f"champion → v{v1}",
        f"challenger removed (was v{v1})",
        f"v{v2} won its evaluation",
        f"v{v1} production → surpassed",
        f"v{v2} staged → production",
        f"champion → v{v2} (was v{v1})",
        f"rollback to v{v1} requested (v{v2} serves)",
        f"v{v2} production → unstaged",
        f"v{v1} surpassed → production",
        f"champion → v{v1} (was v{v2})",
        f"v{v1} deployed to iris again (rollback)",
        f"rolled back to v{v1} from v{v2}",
    ]
    assert set(expected) <= set(whats), sorted(set(expected) - set(whats))
    keys = [e["key"] for e in entries]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)  # newest first, unique
    assert whats[0] == f"rolled back to v{v1} from v{v2}"
    assert whats.index(f"v{v2} staged → production") < whats.index(f"v{v1} staged → production")
    for entry in entries:
        assert entry["at"] and entry["who"] and entry["what"] and entry["cause"] and entry["correlation_id"]
    by_what = {e["what"]: e for e in entries}
    rollback = by_what[f"v{v2} production → unstaged"]
    assert rollback["who"] == "alice" and rollback["why"] == "rollback: v2 answers 500s"
    # The rollback's entries share one correlation id; v2's lifecycle entries share the training's.
    assert by_what[f"rolled back to v{v1} from v{v2}"]["correlation_id"] == rollback["correlation_id"]
    v2_tags = svc.registry.get_version(MODEL, v2).tags
    assert by_what[f"v{v2} won its evaluation"]["correlation_id"] == v2_tags[domain.CORRELATION_ID]
    # Since a time: only what came after it.
    recent = history.read(svc, MODEL, svc.clock() - timedelta(seconds=1))
    assert recent and all(datetime.fromisoformat(e["at"]) >= svc.clock() - timedelta(seconds=1) for e in recent)
    assert len(recent) < len(entries)


def test_a_redelivered_message_records_its_entries_once():
    svc = services()
    train_to_version(svc, accuracy=0.7, event_id="a")
    bus: FakeBus = svc.bus
    (evaluate,) = bus.take("evaluate")
    handlers.evaluate(evaluate, svc)
    (promote,) = bus.take("promote")
    handlers.promote(promote, svc)
    (deploy,) = bus.take("deploy")
    handlers.deploy(deploy, svc)
    count = len(history.read(svc, MODEL))
    registry: FakeRegistry = svc.registry
    # A redelivery after the stage tag but as if before the rest: the entries come again, shown once.
    for entry in list(registry.entries[MODEL]):
        registry.entries[MODEL].append({**entry, "key": entry["key"] + "-again"})
    assert len(history.read(svc, MODEL)) == count


def test_history_failures_other_than_transient_do_not_stop_the_lifecycle(caplog):
    svc = services()

    class Refusing(FakeRegistry):
        def append_history(self, model_name, entry):
            from shared.errors import PermanentError

            raise PermanentError("403: the identity cannot create the history experiment")

    svc.registry = Refusing()
    svc.registry.register(MODEL)  # type: ignore[attr-defined]
    svc.evaluator.scores["1"] = {"accuracy": 0.7, "f1_macro": 0.7}
    handlers.new_version(MODEL, "1", "test", svc)
    assert drain(svc) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    assert "not recorded" in caplog.text


def test_a_transient_history_failure_retries_the_command():
    from shared.errors import TransientError

    svc = services()

    class Flaky(FakeRegistry):
        def append_history(self, model_name, entry):
            raise TransientError("503 from the tracking server")

    svc.registry = Flaky()
    svc.registry.register(MODEL)  # type: ignore[attr-defined]
    svc.evaluator.scores["1"] = {"accuracy": 0.7, "f1_macro": 0.7}
    handlers.new_version(MODEL, "1", "test", svc)
    (evaluate,) = svc.bus.take("evaluate")
    with pytest.raises(TransientError):
        handlers.evaluate(evaluate, svc)


def _dead_rollback(envelope, sequence_number: int, reason: str, description: str) -> DeadLetter:
    """The rollback command in ``envelope``, dead-lettered from the deploy queue."""
    return DeadLetter(
        queue="deploy",
        message_id=envelope.message_id,
        sequence_number=sequence_number,
        body=envelope.to_json().encode(),
        correlation_id=envelope.correlation_id,
        session_id=MODEL,
        application_properties={},
        reason=reason,
        description=description,
        enqueued_time=None,
        dead_lettered_time=None,
        delivery_count=1,
        replay_count=0,
    )


def test_a_dead_letter_replay_is_recorded_in_the_models_history():
    svc, v1, _ = two_deployed()
    operator.request_rollback(MODEL, None, "alice", "bad", "r1", svc)
    (envelope,) = [e for e, _ in svc.bus.sent]
    dead = _dead_rollback(envelope, 7, "PermanentError", "the endpoint refused the update")
    message = replay_message(dead)
    history.replayed(svc, dead, message, who="operator (admin key)")
    history.replayed(svc, dead, message, who="operator (admin key)")  # a retried replay: shown once
    (entry,) = [e for e in history.read(svc, MODEL) if e["kind"] == "replay"]
    assert entry["what"] == "rollback replayed from the deploy dead-letter queue"
    assert entry["cause"] == message.message_id and entry["correlation_id"] == envelope.correlation_id
    assert entry["version"] == v1 and "the endpoint refused the update" in entry["why"]
    malformed = DeadLetter(**{**dead.__dict__, "body": b"not json"})
    history.replayed(svc, malformed, replay_message(malformed), who="ops")  # nothing to record, no error


def test_the_replay_function_records_the_operators_name_and_reason(monkeypatch):
    from functions import operations
    from shared import runtime

    svc, _, _ = two_deployed()
    operator.request_rollback(MODEL, None, "alice", "bad", "r2", svc)
    (envelope,) = [e for e, _ in svc.bus.sent]
    dead = _dead_rollback(envelope, 8, "MaxDeliveryCountExceeded", "503")
    monkeypatch.setattr(runtime, "_services", svc)
    body = {"queue": "deploy", "by": "Grace", "reason": "the endpoint is back"}
    who, reason = operations._operator(body)
    assert body == {"queue": "deploy"}  # taken before the filters, which refuse unknown fields
    operations._record_replay(who, reason)(dead, replay_message(dead))
    (entry,) = [e for e in history.read(svc, MODEL) if e["kind"] == "replay"]
    assert entry["who"] == "Grace" and entry["why"].startswith("the endpoint is back — dead-lettered")
    assert operations._operator({}) == ("operator (admin key)", None)
    with pytest.raises(ValueError, match="by must be a string"):
        operations._operator({"by": 7})


def test_the_rollback_command_travels_on_the_deploy_queue_in_the_models_session():
    command = RollbackModel(model_name=MODEL, to_version="1", requested_by="a", reason="b", request_id="r")
    envelope = Envelope.start(command, cause="rollback:x:r", environment="dev")
    parsed = parse_envelope(envelope.to_json(), queue="deploy")
    assert parsed.command == command and parsed.session_id == MODEL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_since_durations(text, expected):
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert history.parse_since(text, now) == now - expected


def test_since_times_and_nonsense():
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert history.parse_since(None, now) is None
    assert history.parse_since("2026-11-01T00:00:00", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="since"):
        history.parse_since("last tuesday", now)


def test_entry_texts_are_bounded_and_a_long_detail_is_left_out():
    entry = history.Entry("hold", "x" * 5000, who="y" * 5000, detail={"blob": "z" * 5000})
    fields = entry.fields(datetime(2026, 11, 23, tzinfo=UTC))
    assert len(fields["what"]) == history.MAX_TEXT and len(fields["who"]) == history.MAX_TEXT
    assert "detail" not in fields
    assert all(len(v.encode()) <= 5000 for v in fields.values())


def test_the_replay_path_reports_each_replayed_dead_letter_and_nothing_on_a_dry_run():
    from shared import deadletters
    from tests.fakes import FakeDeadLetters

    svc, _, _ = two_deployed()
    operator.request_rollback(MODEL, None, "alice", "bad", "r1", svc)
    (envelope,) = [e for e, _ in svc.bus.sent]
    store = FakeDeadLetters()
    store.dead["deploy"] = [
        DeadLetter(
            "deploy",
            envelope.message_id,
            1,
            envelope.to_json().encode(),
            envelope.correlation_id,
            MODEL,
            {},
            "PermanentError",
            "boom",
            None,
            None,
            1,
            0,
        ),
    ]
    seen: list[tuple[str, str]] = []

    def recorder(dead: DeadLetter, message) -> None:
        seen.append((dead.message_id, message.message_id))
        history.replayed(svc, dead, message, who="operator (admin key)")

    deadletters.replay(store, store, dry_run=True, on_replayed=recorder)
    assert seen == []
    report = deadletters.replay(store, store, on_replayed=recorder)
    assert [o.status for o in report.outcomes] == ["replayed"]
    assert seen == [(envelope.message_id, report.outcomes[0].new_message_id)]
    assert [e["what"] for e in history.read(svc, MODEL) if e["kind"] == "replay"] == [
        "rollback replayed from the deploy dead-letter queue"
    ]


def test_a_deployment_already_starting_when_the_hold_comes_finishes():
    svc = services()
    svc.serving.slow_versions["1"] = 1  # one pending readiness check
    train_to_version(svc, accuracy=0.7, event_id="a")
    bus: FakeBus = svc.bus
    handlers.evaluate(bus.take("evaluate")[0], svc)
    handlers.promote(bus.take("promote")[0], svc)
    assert handlers.deploy(bus.take("deploy")[0], svc) == "starting"
    operator.hold(MODEL, "bob", "freeze", "h1", svc)
    (check,) = bus.take("deploy")  # the scheduled readiness check of the started deployment
    assert check.command.candidate_slot
    assert handlers.deploy(check, svc) == "deployed"  # finished: never a half-started entity left behind
    assert stages(svc) == {"1": "production"} and len(svc.serving.running) == 1
