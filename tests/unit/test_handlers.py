"""The lifecycle's rules, through the handlers over in-memory fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import domain, handlers
from shared.contracts import Envelope, TrainModel
from shared.errors import NotAwaitingApproval, PermanentError
from shared.events import BlobCreated, DriftAlert
from shared.ports import RunStatus
from shared.webhooks import GithubPush
from tests.fakes import FakeBus, FakeCompute, FakeEvaluator, FakeRegistry, FakeServing, services

MODEL = "iris-classifier"
REPO_ROOT = Path(__file__).resolve().parents[2]


def drain(svc) -> list[str]:
    """Run every queued command through its handler, as the pipeline functions would."""
    outcomes = []
    bus: FakeBus = svc.bus  # type: ignore[assignment]
    while bus.sent:
        envelope, _ = bus.sent.pop(0)
        outcomes.append(f"{envelope.command.kind}:{handlers.PIPELINE[envelope.queue](envelope, svc)}")
    return outcomes


def blob(event_id: str = "e1", path: str = "iris/batch.csv", size: int = 100, svc=None) -> BlobCreated:
    url = f"file:///landing/{path}"
    if svc is not None:
        svc.landing.sizes[url] = size
    return BlobCreated(
        event_id=event_id,
        url=url,
        account="local",
        container="landing",
        blob_path=path,
        content_length=size,
        content_type="text/csv",
        etag=None,
        api="PutBlob",
    )


def train_to_version(svc, *, accuracy: float, event_id: str) -> str:
    """Land data, run training to a registered version with the given score."""
    registry: FakeRegistry = svc.registry
    compute: FakeCompute = svc.compute["local"]
    handlers.land_blob(blob(event_id, f"iris/{event_id}.csv", svc=svc), svc)
    drain_until_poll = [e for e in svc.bus.take("train")]
    for envelope in drain_until_poll:
        handlers.train(envelope, svc)
    (poll,) = svc.bus.take("poll-run")
    run_id = poll.command.run_id
    version = registry.register(MODEL, run_id=f"mlflow-{run_id}")
    svc.evaluator.scores[version] = {"accuracy": accuracy, "f1_macro": accuracy}
    compute.states[run_id] = RunStatus(run_id, "succeeded", outputs={"mlflow_run_id": f"mlflow-{run_id}"})
    assert handlers.poll_run(poll, svc) == "evaluate"
    return version


def test_first_version_goes_all_the_way_to_production():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    assert drain(svc) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    registry: FakeRegistry = svc.registry
    tags = registry.get_version(MODEL, v1).tags
    assert tags["stage"] == "production" and tags["approval"] == "auto"
    assert registry.alias_version(MODEL, "champion") == v1 and registry.alias_version(MODEL, "challenger") is None
    decision = json.loads(tags[domain.DECISION])
    assert decision["won"] and "first version" in decision["reason"] and decision["champion"] is None
    deployment = json.loads(tags[domain.DEPLOYMENT])
    assert deployment["status"] == "deployed" and deployment["url"].endswith("/endpoints/iris/invocations")
    assert tags[domain.COMMIT_SHA] == "abc123" and tags[domain.REPOSITORY] == "example/signalbox"


def test_better_challenger_replaces_the_champion_and_the_old_one_is_surpassed():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    assert drain(svc) == ["evaluate:won", "promote:deploy", "deploy:deployed"]
    assert svc.registry.stage(MODEL, v1) == "surpassed" and svc.registry.stage(MODEL, v2) == "production"
    assert svc.serving.current("iris").version == v2
    assert [d.version for d in svc.serving.running] == [v2]  # blue/green: the old server was stopped
    assert svc.evaluator.calls[-2:] == [v2, v1]  # both scored on the same data


def test_worse_challenger_records_why_and_changes_nothing():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.9, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.8, event_id="b")
    assert drain(svc) == ["evaluate:lost", "promote:lost"]
    assert svc.registry.stage(MODEL, v2) is None
    assert "not better" in json.loads(svc.registry.get_version(MODEL, v2).tags[domain.DECISION])["reason"]
    assert svc.registry.alias_version(MODEL, "champion") == v1


def test_two_challengers_at_once_end_with_one_staged_and_one_production():
    svc = services(environment="prod")  # manual approval: both stop at staged
    v1 = train_to_version(svc, accuracy=0.6, event_id="a")
    drain(svc)
    handlers.request_approval_decision(MODEL, v1, True, "ops", svc)
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    v3 = train_to_version(svc, accuracy=0.8, event_id="c")
    drain(svc)
    stages = {v.version: v.tags.get("stage") for v in svc.registry.list_versions(MODEL)}
    assert stages == {v1: "production", v2: "staged", v3: None}
    assert "lost to staged v2" in svc.registry.get_version(MODEL, v3).tags["signalbox.outcome"]
    assert svc.registry.alias_version(MODEL, "challenger") == v2
    v4 = train_to_version(svc, accuracy=0.95, event_id="d")
    drain(svc)
    stages = {v.version: v.tags.get("stage") for v in svc.registry.list_versions(MODEL)}
    assert stages == {v1: "production", v2: "unstaged", v3: None, v4: "staged"}
    assert svc.registry.alias_version(MODEL, "challenger") == v4


def test_manual_approval_waits_then_deploys_and_rejection_unstages():
    svc = services(environment="staging")
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    assert drain(svc) == ["evaluate:won", "promote:pending-approval"]
    assert svc.registry.get_version(MODEL, v1).tags["approval"] == "pending"
    assert "ApprovalRequested" in svc.events.types()
    assert handlers.request_approval_decision(MODEL, v1, True, "alice", svc) == "approved"
    assert drain(svc) == ["promote:deploy", "deploy:deployed"]
    assert svc.registry.get_version(MODEL, v1).tags["approved_by"] == "alice"
    with pytest.raises(NotAwaitingApproval, match="not waiting for approval"):
        handlers.request_approval_decision(MODEL, v1, True, "alice", svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    drain(svc)
    handlers.request_approval_decision(MODEL, v2, False, "bob", svc)
    assert drain(svc) == ["promote:rejected"]
    tags = svc.registry.get_version(MODEL, v2).tags
    assert tags["stage"] == "unstaged" and tags["approval"] == "rejected"
    assert svc.registry.alias_version(MODEL, "champion") == v1


def test_failed_smoke_test_rolls_back_and_keeps_the_old_version():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    serving: FakeServing = svc.serving
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    serving.broken_versions.add(v2)
    assert drain(svc)[-1] == "deploy:rolled-back"
    assert svc.registry.stage(MODEL, v1) == "production" and serving.current("iris").version == v1
    record = json.loads(svc.registry.get_version(MODEL, v2).tags[domain.DEPLOYMENT])
    assert record["status"] == "rolled_back" and "smoke test failed" in record["reason"]
    assert [d.version for d in serving.running] == [v1]  # the candidate was stopped
    assert svc.registry.stage(MODEL, v2) == "unstaged"  # it cannot block the next winner
    v3 = train_to_version(svc, accuracy=0.8, event_id="c")
    assert drain(svc)[-1] == "deploy:deployed"
    assert svc.registry.stage(MODEL, v3) == "production" and serving.current("iris").version == v3


def test_a_deploy_overtaken_by_a_newer_winner_does_not_take_traffic():
    svc = services()
    train_to_version(svc, accuracy=0.6, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.8, event_id="b")
    drain_until = [e for e in svc.bus.take("evaluate")]
    handlers.evaluate(drain_until[0], svc)
    (promote,) = svc.bus.take("promote")
    handlers.promote(promote, svc)
    (deploy_v2,) = svc.bus.take("deploy")
    serving: FakeServing = svc.serving
    original_start = serving.start

    def start_while_a_newer_version_wins(endpoint, model_name, version):
        deployment = original_start(endpoint, model_name, version)
        v3 = train_to_version(svc, accuracy=0.9, event_id="c")
        for kind in ("evaluate", "promote"):
            for envelope in svc.bus.take(kind):
                handlers.PIPELINE[kind](envelope, svc)
        assert svc.registry.stage(MODEL, v3) == "staged"
        return deployment

    serving.start = start_while_a_newer_version_wins  # type: ignore[method-assign]
    assert handlers.deploy(deploy_v2, svc) == "superseded"
    serving.start = original_start  # type: ignore[method-assign]
    assert svc.registry.stage(MODEL, v2) == "unstaged" and serving.current("iris").version == "1"
    assert drain(svc) == ["deploy:deployed"]
    assert serving.current("iris").version == "3" and svc.registry.stage(MODEL, "1") == "surpassed"


def test_a_webhook_announcement_keeps_the_training_lifecycle():
    svc = services()
    registry: FakeRegistry = svc.registry
    version = registry.register(MODEL, **{domain.ENVIRONMENT: "staging", domain.CORRELATION_ID: "lifecycle-1"})
    handlers.new_version(MODEL, version, "mlflow", svc)
    (evaluate,) = svc.bus.take("evaluate")
    assert (evaluate.environment, evaluate.correlation_id) == ("staging", "lifecycle-1")


def test_every_step_is_idempotent_on_redelivery():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    (evaluate,) = svc.bus.take("evaluate")
    assert handlers.evaluate(evaluate, svc) == "won"
    assert handlers.evaluate(evaluate, svc) == "already-evaluated"
    (promote,) = svc.bus.take("promote")
    assert handlers.promote(promote, svc) == "deploy"
    assert handlers.promote(promote, svc) == "deploy"  # re-sends the same deploy id: dropped as duplicate
    (deploy,) = svc.bus.take("deploy")
    assert svc.bus.sent == []
    assert handlers.deploy(deploy, svc) == "deployed"
    assert handlers.deploy(deploy, svc) == "already-production"
    assert svc.evaluator.calls == [v1]


def test_the_same_event_twice_sends_one_command():
    svc = services()
    event = blob("same", svc=svc)
    handlers.land_blob(event, svc)
    handlers.land_blob(event, svc)
    handlers.new_version(MODEL, "1", "mlflow", svc)
    handlers.new_version(MODEL, "1", "azureml", svc)
    assert [e.command.kind for e, _ in svc.bus.sent] == ["train", "evaluate"]


def test_blobs_outside_the_prefix_are_ignored_and_empty_or_unreadable_files_refused():
    svc = services()
    assert handlers.land_blob(blob("x", "other/file.csv", svc=svc), svc) == "ignored"
    assert handlers.land_blob(blob("y", "iris/empty.csv", size=0, svc=svc), svc) == "refused"
    refusal = json.loads(svc.registry.model_tags(MODEL)[domain.LAST_REFUSAL])
    assert refusal["reason"] == "the file is empty"
    assert handlers.land_blob(blob("z", "iris/missing.csv"), svc) == "refused"
    assert "cannot be read" in json.loads(svc.registry.model_tags(MODEL)[domain.LAST_REFUSAL])["reason"]
    assert svc.bus.sent == []


def test_a_drift_storm_launches_one_training_per_cooldown():
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///landing/iris/a.csv")
    outcomes = [handlers.drift_alert(DriftAlert(f"alert-{n}", MODEL, "psi", 0.4, 0.2, "/m"), svc) for n in range(10)]
    assert outcomes == ["train"] + ["cooldown"] * 9
    svc.clock.advance(minutes=11)  # the catalogue's cooldown is PT10M
    assert handlers.drift_alert(DriftAlert("later", MODEL, None, None, None, "/m"), svc) == "train"
    trains = svc.bus.take("train")
    assert len(trains) == 2 and {t.command.reason for t in trains} == {"drift"}
    handlers.train(trains[0], svc)
    assert svc.compute["local"].launched[0].data_uri == "file:///landing/iris/a.csv"


def test_racing_drift_alerts_in_one_window_share_one_message_id():
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///landing/iris/a.csv")
    first = handlers.drift_detected(MODEL, "a", svc)
    svc.registry.model_tag_values[MODEL].pop(domain.LAST_DRIFT_TRAINING)  # as if the tag write raced
    second = handlers.drift_detected(MODEL, "b", svc)
    assert first == second == "train"
    assert len(svc.bus.sent) == 1


def push(branch: str | None, paths: tuple[str, ...], deleted: bool = False, delivery: str = "d1") -> GithubPush:
    return GithubPush(
        delivery_id=delivery,
        repository="example/models",
        branch=branch,
        commit_sha="f00d",
        deleted=deleted,
        changed_paths=paths,
    )


def test_github_push_maps_branches_to_environments_and_filters_paths():
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///landing/iris/a.csv")  # iris-batch has none
    assert handlers.code_pushed(push("feature/x", ("src/model.py",)), svc) == []
    assert handlers.code_pushed(push("main", ("docs/readme.md",)), svc) == []
    assert handlers.code_pushed(push("main", ("src/model.py",), deleted=True), svc) == []
    assert handlers.code_pushed(push(None, ("src/model.py",)), svc) == []
    assert handlers.code_pushed(push("main", ("src/model.py",)), svc) == [MODEL]
    assert handlers.code_pushed(push("main", ("src/model.py",)), svc) == [MODEL]  # redelivery: same message id
    (train,) = svc.bus.take("train")
    assert train.environment == "staging"
    assert (train.command.commit_sha, train.command.repository) == ("f00d", "example/models")


def test_polls_back_off_and_give_up_with_a_recorded_reason():
    svc = services(SIGNALBOX_POLL_MAX_ATTEMPTS=3)
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///x.csv")
    envelope = Envelope.start(TrainModel(model_name=MODEL, reason="manual"), cause="t", environment="dev")
    run_id = handlers.train(envelope, svc)
    delays = []
    for _ in range(3):
        ((poll, when),) = svc.bus.sent
        svc.bus.sent.clear()
        delays.append((when - svc.clock()).total_seconds())
        handlers.poll_run(poll, svc)
    assert delays == [2.0, 4.0, 8.0]
    assert svc.compute["local"].cancelled == [run_id]
    assert "gave up" in json.loads(svc.registry.model_tags(MODEL)[domain.LAST_FAILURE])["reason"]


def test_a_failed_job_is_recorded_not_retried():
    svc = services()
    svc.registry.set_model_tag(MODEL, domain.LATEST_DATA, "file:///x.csv")
    handlers.train(Envelope.start(TrainModel(model_name=MODEL, reason="manual"), cause="t", environment="dev"), svc)
    (poll,) = svc.bus.take("poll-run")
    compute: FakeCompute = svc.compute["local"]
    compute.states[poll.command.run_id] = RunStatus(poll.command.run_id, "failed", "ValueError: empty CSV")
    assert handlers.poll_run(poll, svc) == "failed"
    assert "empty CSV" in json.loads(svc.registry.model_tags(MODEL)[domain.LAST_FAILURE])["reason"]
    assert svc.bus.sent == []


def test_training_without_any_landed_data_is_a_clear_permanent_error():
    svc = services()
    envelope = Envelope.start(TrainModel(model_name=MODEL, reason="drift"), cause="t", environment="dev")
    with pytest.raises(PermanentError, match="no data has landed"):
        handlers.train(envelope, svc)


def test_guardrails_and_minimum_improvement_decide():
    from shared.catalogue import Evaluation

    spec = Evaluation(
        dataset="d", primary_metric="rmse", direction="minimize", min_improvement=0.1, guardrails={"mae": 5.0}
    )
    assert domain.judge(spec, {"rmse": 1.0, "mae": 1.0}, None, None).won
    assert not domain.judge(spec, {"rmse": 1.0, "mae": 6.0}, None, None).won
    assert not domain.judge(spec, {"rmse": 1.95, "mae": 1.0}, {"rmse": 2.0, "mae": 1.0}, "1").won
    assert domain.judge(spec, {"rmse": 1.5, "mae": 1.0}, {"rmse": 2.0, "mae": 1.0}, "1").won


def test_unknown_models_are_ignored_by_ingress():
    svc = services()
    assert handlers.new_version("nope", "1", "mlflow", svc) == "ignored"
    assert handlers.drift_detected("nope", "a", svc) == "ignored"
    assert handlers.drift_detected(MODEL, "a", svc) == "no-data"
    assert svc.bus.sent == []
    assert isinstance(svc.evaluator, FakeEvaluator) and isinstance(svc.compute["local"], FakeCompute)


def test_rule_based_models_run_a_scoring_job_and_nothing_else():
    svc = services()
    handlers.land_blob(blob("r1", "rules/batch.csv", svc=svc), svc)
    (train,) = svc.bus.take("train")
    run_id = handlers.train(train, svc)
    (job,) = svc.compute["local"].launched
    assert (job.purpose, job.job_reference, job.parameters["threshold"]) == (
        "score",
        "signalbox.examples.rules.score",
        "4.8",
    )
    (poll,) = svc.bus.take("poll-run")
    svc.compute["local"].states[run_id] = RunStatus(run_id, "succeeded", outputs={"rows": "45"})
    assert handlers.poll_run(poll, svc) == "scored"
    assert svc.bus.sent == [] and "ScoringCompleted" in svc.events.types()
    assert handlers.new_version("iris-rules", "1", "mlflow", svc) == "ignored"


def test_batch_models_move_the_production_alias_and_launch_batch_scoring():
    svc = services()
    registry: FakeRegistry = svc.registry
    version = registry.register("iris-batch", run_id="r", **{domain.DATA_URI: "file:///landing/iris-batch/a.csv"})
    svc.evaluator.scores[version] = {"accuracy": 0.9}
    handlers.new_version("iris-batch", version, "mlflow", svc)
    assert drain(svc) == ["evaluate:won", "promote:deploy", "deploy:batch"]
    assert registry.stage("iris-batch", version) == "production"
    assert registry.alias_version("iris-batch", "champion") == version
    (job,) = svc.compute["local"].launched
    assert (job.purpose, job.job_reference, job.data_uri) == (
        "score",
        "signalbox.examples.iris.batch_score",
        "file:///landing/iris-batch/a.csv",
    )
    assert svc.serving.routed == {}


def test_a_job_notification_finds_its_model_through_the_catalogue(tmp_path):
    from shared.catalogue import load_catalogue

    text = (
        (REPO_ROOT / "catalogue.toml")
        .read_text()
        .replace(
            'backend = "local"\njob = "signalbox.examples.iris.train"\nparameters = { C = "1.0" }',
            'backend = "databricks"\njob = "1234"\nparameters = { C = "1.0" }',
        )
    )
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    svc = services(load_catalogue(path))
    svc.compute = {"databricks": FakeCompute(backend="databricks")}
    assert handlers.job_notified("databricks", ["1234", None], "987", svc, event="jobs.on_success") == "poll"
    assert handlers.job_notified("databricks", ["5555", "other"], "988", svc, event="jobs.on_success") == "ignored"
    (poll,) = svc.bus.take("poll-run")
    assert (poll.command.model_name, poll.command.backend, poll.command.run_id) == (MODEL, "databricks", "987")


def _databricks_job_catalogue(tmp_path, job: str):
    from shared.catalogue import load_catalogue

    text = (
        (REPO_ROOT / "catalogue.toml")
        .read_text()
        .replace(
            'backend = "local"\njob = "signalbox.examples.iris.train"\nparameters = { C = "1.0" }',
            f'backend = "databricks"\njob = "{job}"\nparameters = {{ C = "1.0" }}',
        )
    )
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return load_catalogue(path)


def test_a_job_named_by_name_in_the_catalogue_matches_the_notification_by_the_job_name(tmp_path):
    svc = services(_databricks_job_catalogue(tmp_path, "iris-training"))
    svc.compute = {"databricks": FakeCompute(backend="databricks")}
    # The payload names the job by id and name; the catalogue by name.
    assert handlers.job_notified("databricks", ["771", "iris-training"], "41", svc, event="jobs.on_failure") == "poll"
    (poll,) = svc.bus.take("poll-run")
    assert poll.command.run_id == "41"


def test_job_start_is_ignored_and_each_ending_event_is_its_own_cause(tmp_path):
    svc = services(_databricks_job_catalogue(tmp_path, "1234"))
    svc.compute = {"databricks": FakeCompute(backend="databricks")}
    assert handlers.job_notified("databricks", ["1234"], "9", svc, event="jobs.on_start") == "ignored"
    assert svc.bus.take("poll-run") == []
    handlers.run_finished("databricks", "9", MODEL, svc, event="jobs.on_start")
    handlers.run_finished("databricks", "9", MODEL, svc, event="jobs.on_success")
    first, second = svc.bus.take("poll-run")
    assert first.message_id != second.message_id  # within the duplicate window, both get through


def test_a_slow_endpoint_is_awaited_by_scheduled_checks_then_deployed():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    svc.serving.slow_versions[v1] = 2
    outcomes = []
    while svc.bus.sent:
        envelope, when = svc.bus.sent.pop(0)
        if envelope.command.kind == "deploy" and envelope.command.attempt:
            assert when is not None and when > svc.clock()  # a scheduled check, not a sleep
        outcomes.append(handlers.PIPELINE[envelope.queue](envelope, svc))
    assert outcomes == ["won", "deploy", "starting", "starting", "deployed"]
    assert svc.registry.stage(MODEL, v1) == "production"
    assert len(svc.serving.running) == 1  # the same candidate throughout: started once


def test_a_deployment_that_fails_to_become_ready_rolls_back():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    svc.serving.failing_versions.add(v2)
    assert drain(svc)[-1] == "deploy:rolled-back"
    record = json.loads(svc.registry.get_version(MODEL, v2).tags[domain.DEPLOYMENT])
    assert "out of capacity" in record["reason"]
    assert svc.serving.current("iris").version == v1 and svc.registry.stage(MODEL, v1) == "production"


def test_the_overview_lists_every_model_and_the_approvals_waiting():
    from shared.lifecycle import overview

    svc = services(environment="staging")
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    data = overview(svc)
    assert [m["model"] for m in data["models"]] == ["iris-batch", "iris-classifier", "iris-rules"]
    (pending,) = data["pending_approvals"]
    assert (pending["model"], pending["version"]) == (MODEL, v1) and "first version" in pending["reason"]
    handlers.request_approval_decision(MODEL, v1, True, "alice", svc)
    drain(svc)
    assert overview(svc)["pending_approvals"] == []


def test_a_redelivered_deploy_after_traffic_moved_only_records_it():
    svc = services()
    train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    for kind in ("evaluate", "promote"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (deploy,) = svc.bus.take("deploy")
    serving: FakeServing = svc.serving
    serving.route("iris", serving.start("iris", MODEL, v2))  # as if the first delivery died right after routing
    assert handlers.deploy(deploy, svc) == "deployed"
    assert svc.registry.stage(MODEL, v2) == "production" and svc.registry.stage(MODEL, "1") == "surpassed"
    assert json.loads(svc.registry.get_version(MODEL, v2).tags[domain.DEPLOYMENT])["status"] == "deployed"


def test_an_evaluation_redelivered_after_its_verdict_was_recorded_still_reaches_promotion():
    svc = services()
    train_to_version(svc, accuracy=0.7, event_id="a")
    (evaluate,) = svc.bus.take("evaluate")
    assert handlers.evaluate(evaluate, svc) == "won"
    (first,) = svc.bus.take("promote")
    svc.bus.seen.discard(first.message_id)  # as if the send had failed after the verdict was tagged
    assert handlers.evaluate(evaluate, svc) == "already-evaluated"
    (again,) = svc.bus.take("promote")
    assert (again.message_id, again.command) == (first.message_id, first.command)
    assert svc.evaluator.calls == ["1"]


def test_a_deploy_redelivered_after_the_stage_tag_restores_the_champion_alias():
    svc = services()
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    for kind in ("evaluate", "promote"):
        for envelope in svc.bus.take(kind):
            handlers.PIPELINE[kind](envelope, svc)
    (deploy,) = svc.bus.take("deploy")
    assert handlers.deploy(deploy, svc) == "deployed"
    registry: FakeRegistry = svc.registry
    registry.delete_alias(MODEL, domain.CHAMPION)  # as if the first delivery died before the aliases
    registry.set_alias(MODEL, domain.CHALLENGER, v1)
    assert handlers.deploy(deploy, svc) == "already-production"
    assert registry.alias_version(MODEL, domain.CHAMPION) == v1
    assert registry.alias_version(MODEL, domain.CHALLENGER) is None


def test_a_promotion_redelivered_after_the_stage_tag_restores_the_challenger_alias():
    svc = services(environment="staging")  # manual approval: the version stays staged
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    for envelope in svc.bus.take("evaluate"):
        handlers.evaluate(envelope, svc)
    (promote,) = svc.bus.take("promote")
    assert handlers.promote(promote, svc) == "pending-approval"
    registry: FakeRegistry = svc.registry
    registry.delete_alias(MODEL, domain.CHALLENGER)  # as if the first delivery died before the alias
    assert handlers.promote(promote, svc) == "pending-approval"
    assert registry.alias_version(MODEL, domain.CHALLENGER) == v1 and registry.stage(MODEL, v1) == "staged"


def test_latest_data_is_recorded_at_the_first_landing_then_by_each_landings_training():
    svc = services()
    registry: FakeRegistry = svc.registry
    assert handlers.land_blob(blob("e1", "iris/a.csv", svc=svc), svc) == "train"
    assert registry.model_tags(MODEL)[domain.LATEST_DATA] == "file:///landing/iris/a.csv"
    assert handlers.drift_detected(MODEL, "alert-1", svc) == "train"  # data is known before any training
    assert handlers.land_blob(blob("e2", "iris/b.csv", svc=svc), svc) == "train"
    assert registry.model_tags(MODEL)[domain.LATEST_DATA] == "file:///landing/iris/a.csv"  # no write per event
    landings = [t for t in svc.bus.take("train") if t.command.reason == "landing"]
    for envelope in landings:
        handlers.train(envelope, svc)
    assert registry.model_tags(MODEL)[domain.LATEST_DATA] == "file:///landing/iris/b.csv"


def test_an_approval_or_rejection_records_who_and_why_in_the_history():
    svc = services(environment="staging")
    v1 = train_to_version(svc, accuracy=0.7, event_id="a")
    drain(svc)
    handlers.request_approval_decision(MODEL, v1, True, "alice", svc, reason="checked the confusion matrix")
    drain(svc)
    v2 = train_to_version(svc, accuracy=0.9, event_id="b")
    drain(svc)
    handlers.request_approval_decision(MODEL, v2, False, "bob", svc, reason="trained on last week's bad batch")
    drain(svc)
    decisions = [e for e in svc.registry.history(MODEL) if e.get("kind") == "approval" and e.get("who") != "auto"]
    said = {(e["what"], e["who"], e["why"]) for e in decisions if e["who"] in ("alice", "bob")}
    assert (f"v{v1} approved", "alice", "checked the confusion matrix") in said
    assert (f"v{v2} rejected", "bob", "trained on last week's bad batch") in said
