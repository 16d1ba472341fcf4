"""Dead letters: selection, replay (send then complete), max replays, dry run, purge confirmation.

Most tests run the domain (``shared/deadletters``) over the real local queues
(``LocalDeadLetters``) with a hand-moved clock. The Service Bus adapter is tested at the SDK
boundary: real ``azure.servicebus`` message objects (received ones decoded from AMQP bytes)
and a recording stand-in for the client, receiver and sender. That stand-in does not cover
the broker: lock durations, how a real dead-letter receiver orders or skips locked messages,
duplicate detection, and network or permission errors are not exercised here.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared import deadletters as dl
from shared.adapters.local.deadletters import LocalDeadLetters, local_dead_letters, to_dead_letter
from shared.adapters.local.queues import LocalQueues, MessageLockLost, OutboundMessage
from shared.adapters.servicebus.access import ServiceBusAccess
from shared.deadletters import DeadLetter, Filters, views
from shared.deadletters import requests as dl_requests
from shared.queues import QUEUES_FILE, load_queue_specs
from tests.fakes import FakeDeadLetters, services

REPO = Path(__file__).resolve().parents[2]
SPECS = load_queue_specs(QUEUES_FILE)  # train: lock PT1M, dedup P1D; promote: sessions
TRAIN, PROMOTE, EVALUATE = "train", "promote", "evaluate"


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queues(tmp_path: Path, clock: FakeClock) -> LocalQueues:
    return LocalQueues(tmp_path / "queues.sqlite3", specs=SPECS, clock=clock)


@pytest.fixture
def store(queues: LocalQueues) -> LocalDeadLetters:
    return LocalDeadLetters(queues)


def poison(
    queues: LocalQueues,
    queue: str,
    message_id: str,
    *,
    session_id: str | None = None,
    correlation_id: str | None = None,
    reason: str = "MaxDeliveryCountExceeded",
    description: str = "Message could not be consumed after 5 delivery attempts. Last error: boom",
    properties: dict[str, Any] | None = None,
    body: str | None = None,
) -> None:
    """Send one message and dead-letter it."""
    assert queues.send(
        queue,
        OutboundMessage(
            body=body or json.dumps({"id": message_id}),
            message_id=message_id,
            session_id=session_id,
            correlation_id=correlation_id or f"corr-{message_id}",
            subject="train",
            application_properties=properties or {"model_name": "iris"},
        ),
    )
    [got] = queues.receive(queue)
    assert got.message_id == message_id
    queues.dead_letter(queue, got.lock_token, reason=reason, description=description)


def active(queues: LocalQueues, queue: str) -> list[str]:
    return [m.message_id for m in queues.peek(queue)]


def dead(queues: LocalQueues, queue: str) -> list[str]:
    return [m.message_id for m in queues.peek(queue, dead_letter=True)]


# -- selection ----------------------------------------------------------------------------------------


def test_select_filters_by_queue_reason_since_ids_and_limit(queues, store, clock):
    poison(queues, TRAIN, "a", correlation_id="life-1")
    clock.advance(minutes=10)
    poison(queues, TRAIN, "b", correlation_id="life-2", reason="InvalidCommand", description="command.reason missing")
    clock.advance(minutes=10)
    poison(queues, EVALUATE, "c", correlation_id="life-1")

    def ids(**kw: Any) -> list[str]:
        return [d.message_id for d in dl.select(store, Filters(**kw))]

    assert ids() == ["a", "b", "c"]  # queue order of the definition, then sequence
    assert ids(queue=TRAIN) == ["a", "b"]
    assert ids(reason="invalidcommand") == ["b"]  # case-insensitive
    assert ids(correlation_id="life-1") == ["a", "c"]
    assert ids(message_id="b") == ["b"]
    assert ids(since=clock.now - timedelta(minutes=15)) == ["b", "c"]
    assert ids(limit=2) == ["a", "b"]
    assert ids(queue=EVALUATE, reason="MaxDeliveryCountExceeded") == ["c"]
    with pytest.raises(ValueError, match="unknown queue 'nope'"):
        dl.select(store, Filters(queue="nope"))


def test_list_summary_and_show_detail(queues, store):
    poison(queues, TRAIN, "a", description="x" * 300, properties={"model_name": "iris", "n": 2})
    [row] = [views.summary(d) for d in dl.list_dead_letters(store)]
    assert row["message_id"] == "a" and row["queue"] == TRAIN and row["reason"] == "MaxDeliveryCountExceeded"
    assert len(row["description"]) <= 100 and row["description"].endswith("…")
    assert row["delivery_count"] == 1 and row["replay_count"] == 0 and row["correlation_id"] == "corr-a"
    assert row["enqueued_time"] and row["dead_lettered_time"]
    shown = views.detail(dl.find(store, "a"))
    assert shown["description"] == "x" * 300
    assert shown["body"] == '{"id": "a"}' and shown["body_encoding"] == "utf-8"
    assert shown["application_properties"] == {"model_name": "iris", "n": 2}
    with pytest.raises(LookupError, match="no dead letter with message id 'zzz'"):
        dl.find(store, "zzz")


def test_binary_bodies_are_shown_as_base64(store):
    binary = DeadLetter(TRAIN, "b", 1, b"\xff\x00", None, None, {}, None, None, None, None, 1, 0)
    assert views.detail(binary)["body_encoding"] == "base64" and views.detail(binary)["body"] == "/wA="


def test_parse_filters_reads_json_and_query_strings_and_names_bad_fields(clock):
    parsed = dl_requests.parse_filters({"queue": TRAIN, "since": "2h", "limit": "5"}, now=clock.now)
    assert parsed == Filters(queue=TRAIN, since=clock.now - timedelta(hours=2), limit=5)
    assert dl_requests.parse_filters({"since": "PT30M"}, now=clock.now).since == clock.now - timedelta(minutes=30)
    assert dl_requests.parse_filters({"since": "2026-11-23T08:00:00Z"}, now=clock.now).since == datetime(
        2026, 11, 23, 8, tzinfo=UTC
    )
    for bad, message in (
        ({"queu": TRAIN}, "unknown field"),
        ({"limit": 0}, "limit must be at least 1"),
        ({"limit": "many"}, "limit must be a whole number"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-23T08:00:00"}, "time zone"),
        ({"reason": 3}, "reason must be a string"),
    ):
        with pytest.raises(ValueError, match=message):
            dl_requests.parse_filters(bad, now=clock.now)
    assert dl_requests.parse_max_replays({}) == 3 and dl_requests.parse_max_replays({"max_replays": 0}) == 0
    with pytest.raises(ValueError, match="max_replays"):
        dl_requests.parse_max_replays({"max_replays": -1})
    assert dl_requests.parse_flag({"dry_run": "true"}, "dry_run") is True
    with pytest.raises(ValueError, match="dry_run must be true or false"):
        dl_requests.parse_flag({"dry_run": "perhaps"}, "dry_run")


# -- replay ---------------------------------------------------------------------------------------------


def test_replay_sends_a_new_message_and_only_then_removes_the_dead_letter(queues, store):
    poison(queues, PROMOTE, "m-1", session_id="iris", correlation_id="life-1", properties={"model_name": "iris"})

    report = dl.replay(store, store, Filters(queue=PROMOTE))

    assert [o.status for o in report.outcomes] == ["replayed"]
    assert report.outcomes[0].new_message_id == "m-1:replay-1" == dl.replay_message_id("m-1", 1)
    assert dead(queues, PROMOTE) == []
    [replayed] = queues.peek(PROMOTE)
    assert replayed.message_id == "m-1:replay-1"
    assert replayed.body == b'{"id": "m-1"}'
    assert (replayed.correlation_id, replayed.session_id, replayed.subject) == ("life-1", "iris", "train")
    assert replayed.application_properties == {
        "model_name": "iris",
        dl.REPLAY_COUNT: 1,
        dl.ORIGINAL_MESSAGE_ID: "m-1",
    }
    assert replayed.dead_letter_reason is None and replayed.delivery_count == 0


def test_a_replay_that_fails_again_is_replayed_with_an_id_derived_from_the_original(queues, store):
    poison(queues, TRAIN, "m-1")
    dl.replay(store, store)
    [again] = queues.receive(TRAIN)
    queues.dead_letter(TRAIN, again.lock_token, reason="MaxDeliveryCountExceeded", description="still broken")
    [back] = dl.list_dead_letters(store)
    assert (back.message_id, back.replay_count, back.original_message_id) == ("m-1:replay-1", 1, "m-1")
    # --message-id finds the replays of a message by its original id too.
    assert [d.message_id for d in dl.select(store, Filters(message_id="m-1"))] == ["m-1:replay-1"]

    report = dl.replay(store, store)

    assert report.outcomes[0].new_message_id == "m-1:replay-2" and report.outcomes[0].replay_count == 2
    [replayed] = queues.peek(TRAIN)
    assert replayed.application_properties[dl.REPLAY_COUNT] == 2
    assert replayed.application_properties[dl.ORIGINAL_MESSAGE_ID] == "m-1"


def test_replay_drops_service_bus_dead_letter_properties():
    sb_style = DeadLetter(
        queue=TRAIN,
        message_id="m-1",
        sequence_number=7,
        body=b"{}",
        correlation_id="life-1",
        session_id=None,
        application_properties={
            "DeadLetterReason": "MaxDeliveryCountExceeded",
            "DeadLetterErrorDescription": "boom",
            "model_name": "iris",
            dl.REPLAY_COUNT: 1,
            dl.ORIGINAL_MESSAGE_ID: "m-0",
        },
        reason="MaxDeliveryCountExceeded",
        description="boom",
        enqueued_time=None,
        dead_lettered_time=None,
        delivery_count=5,
        replay_count=1,
    )
    message = dl.replay_message(sb_style)
    assert message.application_properties == {"model_name": "iris", dl.REPLAY_COUNT: 2, dl.ORIGINAL_MESSAGE_ID: "m-0"}
    assert message.message_id == "m-0:replay-2"


def test_replay_message_ids_are_deterministic_and_fit_service_bus():
    assert dl.replay_message_id("abc", 1) == dl.replay_message_id("abc", 1) != dl.replay_message_id("abc", 2)
    long_id = "x" * 128
    derived = dl.replay_message_id(long_id, 3)
    assert len(derived) <= 128 and derived == dl.replay_message_id(long_id, 3) and derived.endswith(":replay-3")
    assert "/" not in dl.replay_message_id("a-b", 1)  # stays usable in /api/ops/deadletters/{message_id}


class FailingSender:
    def __init__(self) -> None:
        self.calls = 0

    def send(self, queue: str, message: dl.ReplayMessage) -> bool:
        self.calls += 1
        raise ConnectionError("the bus is down")


def test_a_failed_send_leaves_the_dead_letter_in_place_and_unlocked(queues, store):
    poison(queues, TRAIN, "m-1")

    report = dl.replay(store, FailingSender())

    assert [o.status for o in report.outcomes] == ["failed"] and not report.ok
    assert "send failed, the dead letter stays in place" in report.outcomes[0].detail
    assert "the bus is down" in report.outcomes[0].detail
    assert dead(queues, TRAIN) == ["m-1"] and active(queues, TRAIN) == []
    # Not left locked: the next run replays it at once.
    assert [o.status for o in dl.replay(store, store).outcomes] == ["replayed"]
    assert active(queues, TRAIN) == ["m-1:replay-1"]


class SimulatedCrash(BaseException):
    """The process dies: nothing after it runs (not even the release of the lock)."""


class CrashBeforeComplete(LocalDeadLetters):
    def complete(self, queue: str, sequence_number: int) -> None:
        raise SimulatedCrash

    def release_all(self) -> None:  # a dead process releases nothing
        pass


def test_a_crash_between_send_and_complete_is_safe_to_replay_again(queues, store, clock):
    poison(queues, TRAIN, "m-1")

    with pytest.raises(SimulatedCrash):
        dl.replay(CrashBeforeComplete(queues), store)

    assert active(queues, TRAIN) == ["m-1:replay-1"]  # sent ...
    assert dead(queues, TRAIN) == ["m-1"]  # ... but not completed, and still locked by the dead run
    assert [o.status for o in dl.replay(store, store).outcomes] == ["skipped"]
    clock.advance(seconds=SPECS[TRAIN].lock_duration.total_seconds() + 1)  # the dead run's lock lapses

    report = dl.replay(store, store)

    [outcome] = report.outcomes
    assert outcome.status == "replayed" and outcome.new_message_id == "m-1:replay-1"
    assert "duplicate detection dropped the resend" in outcome.detail
    assert active(queues, TRAIN) == ["m-1:replay-1"]  # exactly one copy
    assert dead(queues, TRAIN) == []


class CompleteFails(LocalDeadLetters):
    def complete(self, queue: str, sequence_number: int) -> None:
        raise MessageLockLost("lock expired")


def test_a_failed_complete_is_reported_and_a_rerun_drops_the_duplicate(queues, store):
    poison(queues, TRAIN, "m-1")

    first = dl.replay(CompleteFails(queues), store)

    assert first.outcomes[0].status == "failed"
    assert "sent as m-1:replay-1" in first.outcomes[0].detail and "safe" in first.outcomes[0].detail
    second = dl.replay(store, store)
    assert [o.status for o in second.outcomes] == ["replayed"]
    assert active(queues, TRAIN) == ["m-1:replay-1"] and dead(queues, TRAIN) == []


def test_messages_at_the_maximum_replay_count_are_skipped(queues, store):
    poison(queues, TRAIN, "fresh")
    poison(queues, TRAIN, "tired", properties={dl.REPLAY_COUNT: 3, dl.ORIGINAL_MESSAGE_ID: "tired"})

    report = dl.replay(store, store)

    assert [(o.message_id, o.status) for o in report.outcomes] == [("fresh", "replayed"), ("tired", "skipped")]
    assert "maximum is 3" in report.outcomes[1].detail
    assert dead(queues, TRAIN) == ["tired"]
    assert [o.status for o in dl.replay(store, store, max_replays=4).outcomes] == ["replayed"]
    assert active(queues, TRAIN) == ["fresh:replay-1", "tired:replay-4"]
    with pytest.raises(ValueError, match="max_replays"):
        dl.replay(store, store, max_replays=-1)


def test_dry_run_lists_what_would_move_and_moves_nothing(queues, store):
    for n in range(3):
        poison(queues, TRAIN, f"m-{n}")
    before = queues.counts(TRAIN)

    report = dl.replay(store, FailingSender(), dry_run=True)

    assert [o.status for o in report.outcomes] == ["would_replay"] * 3
    assert [o.new_message_id for o in report.outcomes] == [f"m-{n}:replay-1" for n in range(3)]
    assert queues.counts(TRAIN) == before and active(queues, TRAIN) == []
    assert views.report_view(report)["dry_run"] is True and views.report_view(report)["counts"] == {"would_replay": 3}


def test_replay_reports_progress_and_honours_the_limit(queues, store):
    for n in range(5):
        poison(queues, TRAIN, f"m-{n}")
    seen: list[tuple[int, int]] = []

    report = dl.replay(store, store, Filters(limit=3), progress=lambda done, total: seen.append((done, total)))

    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert len(report.replayed) == 3 and dead(queues, TRAIN) == ["m-3", "m-4"]


def test_a_dead_letter_locked_by_another_run_is_skipped_not_replayed_twice(queues, store):
    poison(queues, TRAIN, "m-1")
    other = LocalDeadLetters(queues)
    assert other.lock(TRAIN, 1) is not None

    report = dl.replay(store, store)

    assert [o.status for o in report.outcomes] == ["skipped"] and "another run" in report.outcomes[0].detail
    assert active(queues, TRAIN) == []
    other.release(TRAIN, 1)
    assert dl.replay(store, store).outcomes[0].status == "replayed"


# -- purge -------------------------------------------------------------------------------------------------


def test_purge_needs_the_queue_name_as_confirmation(queues, store):
    poison(queues, TRAIN, "a")
    poison(queues, EVALUATE, "b")

    for confirm in (None, "", "evaluate", "all"):
        with pytest.raises(dl.ConfirmationRequired, match="confirm with 'train'"):
            dl.purge(store, Filters(queue=TRAIN), confirm=confirm)
    assert dead(queues, TRAIN) == ["a"]
    preview = dl.purge(store, Filters(queue=TRAIN), confirm=None, dry_run=True)
    assert [o.status for o in preview.outcomes] == ["would_purge"] and dead(queues, TRAIN) == ["a"]

    report = dl.purge(store, Filters(queue=TRAIN), confirm="train")

    assert [o.status for o in report.outcomes] == ["purged"]
    assert dead(queues, TRAIN) == [] and dead(queues, EVALUATE) == ["b"]
    with pytest.raises(dl.ConfirmationRequired, match="confirm with 'all'"):
        dl.purge(store, Filters(), confirm="train")
    assert [o.message_id for o in dl.purge(store, Filters(), confirm="all").purged] == ["b"]


def test_purge_with_filters_deletes_only_what_matches(queues, store):
    poison(queues, TRAIN, "a", reason="InvalidCommand")
    poison(queues, TRAIN, "b")
    dl.purge(store, Filters(queue=TRAIN, reason="InvalidCommand"), confirm=TRAIN)
    assert dead(queues, TRAIN) == ["b"]


# -- the local queues' dead-letter locks -------------------------------------------------------------------


def test_local_dead_letter_locks_expire_and_are_separate_from_the_main_queue(queues, clock):
    poison(queues, TRAIN, "m-1")
    [peeked] = queues.peek(TRAIN, dead_letter=True)
    locked = queues.lock_dead_letter(TRAIN, peeked.sequence_number)
    assert locked is not None and locked.lock_token and locked.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert queues.lock_dead_letter(TRAIN, peeked.sequence_number) is None  # held
    assert queues.receive(TRAIN) == []  # a dead letter is never delivered
    with pytest.raises(MessageLockLost):
        queues.complete(TRAIN, locked.lock_token)  # the main queue's complete does not settle dead letters
    clock.advance(minutes=2)
    with pytest.raises(MessageLockLost):
        queues.complete_dead_letter(TRAIN, locked.lock_token)
    relocked = queues.lock_dead_letter(TRAIN, peeked.sequence_number)
    assert relocked is not None
    queues.complete_dead_letter(TRAIN, relocked.lock_token)
    assert queues.counts(TRAIN)["dead_letter"] == 0
    assert queues.lock_dead_letter(TRAIN, peeked.sequence_number) is None  # gone


def test_to_dead_letter_reads_the_replay_count(queues):
    poison(queues, TRAIN, "m-1", properties={dl.REPLAY_COUNT: 2})
    [message] = queues.peek(TRAIN, dead_letter=True)
    assert to_dead_letter(message).replay_count == 2
    assert dl.replay_count_of({dl.REPLAY_COUNT: "2"}) == 2 and dl.replay_count_of({dl.REPLAY_COUNT: True}) == 0


# -- sessions: what bootstrap wires into Services.dead_letters ----------------------------------------------


def test_each_local_session_owns_its_locks_and_gives_them_back_at_the_end(queues):
    poison(queues, TRAIN, "m-1")
    [peeked] = queues.peek(TRAIN, dead_letter=True)
    sessions = local_dead_letters(queues)

    with sessions() as first:
        assert first.store is first.sender and isinstance(first.store, LocalDeadLetters)
        assert first.store.lock(TRAIN, peeked.sequence_number) is not None
        with sessions() as second:
            assert second.store is not first.store
            assert second.store.lock(TRAIN, peeked.sequence_number) is None  # held by the first session
    # The first session ended without settling it (an operation that broke off): the lock is back.
    with sessions() as third:
        assert third.store.lock(TRAIN, peeked.sequence_number) is not None
        third.store.complete(TRAIN, peeked.sequence_number)
    assert dead(queues, TRAIN) == []


def test_bootstrap_wires_dead_letters_beside_the_bus_and_the_queue_depths(tmp_path):
    """Locally one set of queues, on Service Bus one access: the bus, dead letters and depths share it."""
    from shared.bootstrap import bootstrap
    from shared.settings import Settings

    common = {"SIGNALBOX_STATE_DIR": str(tmp_path / "state"), "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml")}
    local = bootstrap(Settings.model_validate(common))
    with local.dead_letters() as ports:
        assert isinstance(ports.store, LocalDeadLetters)
        assert ports.store.queues is local.bus.queues is local.queue_depths.queues  # type: ignore[attr-defined]

    namespace = "sb-signalbox.servicebus.windows.net"
    cloud = bootstrap(
        Settings.model_validate(
            {**common, "SIGNALBOX_BUS": "servicebus", "ServiceBusConnection__fullyQualifiedNamespace": namespace}
        )
    )
    access = cloud.bus._access  # type: ignore[attr-defined]
    assert isinstance(access, ServiceBusAccess) and access.namespace == namespace
    assert cloud.queue_depths.access is access  # type: ignore[union-attr]
    with cloud.dead_letters() as ports:
        assert type(ports.store).__name__ == "ServiceBusDeadLetters"
        assert ports.store._access is access  # type: ignore[attr-defined]


def test_the_domain_and_its_ports_import_no_adapter():
    """The ports live beside the domain: Services, the domain, its requests and views import no adapter."""
    code = (
        "import sys\n"
        "import shared.services, shared.deadletters, shared.deadletters.requests, shared.deadletters.views\n"
        "print(sorted(m for m in sys.modules if m.startswith('shared.adapters') or m.split('.')[0] == 'azure'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_parse_confirm_takes_a_string_or_nothing():
    assert dl_requests.parse_confirm({"confirm": TRAIN}) == TRAIN and dl_requests.parse_confirm({}) is None
    with pytest.raises(ValueError, match="confirm must be a string"):
        dl_requests.parse_confirm({"confirm": ["train"]})


# -- the admin functions in process, over Services.dead_letters -------------------------------------------------


@pytest.fixture(scope="module")
def admin_functions() -> dict[str, Any]:
    """The operations blueprint indexed as the local host indexes it (once per process)."""
    import azure.functions as func

    from functions import operations
    from signalbox.localhost.index import index_functions

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(operations.bp)
    return {f.name: f for f in index_functions(app, default_auth_level="function")}


@pytest.fixture
def fake_dead_letters() -> Iterator[FakeDeadLetters]:
    from shared import runtime

    fake = FakeDeadLetters()
    svc = services()
    svc.dead_letters = fake.session
    runtime.override(svc)
    try:
        yield fake
    finally:
        runtime.override(None)


def call(function: Any, method: str, url: str, body: Any = None, **params: str) -> tuple[int, Any]:
    import azure.functions as func

    raw = json.dumps(body).encode() if body is not None else b""
    request = func.HttpRequest(method=method, url=url, params=params, body=raw)
    response = function.call(**{function.trigger_arg: request})
    return response.status_code, json.loads(response.get_body())


def test_the_admin_functions_work_in_a_session_of_services_dead_letters(admin_functions, fake_dead_letters):
    base = "http://localhost/api/ops/deadletters"
    fake_dead_letters.dead[TRAIN] = [
        DeadLetter(TRAIN, "a", 1, b"{}", "life-1", None, {}, "MaxDeliveryCountExceeded", "x", None, None, 5, 0),
        DeadLetter(TRAIN, "b", 2, b"{}", "life-2", None, {}, "InvalidCommand", "bad", None, None, 1, 0),
    ]

    status, listing = call(admin_functions["deadletters_list"], "GET", base, reason="invalidcommand")
    assert status == 200
    assert listing["filters"] == {"reason": "invalidcommand"} and listing["count"] == 1
    assert [row["message_id"] for row in listing["dead_letters"]] == ["b"]

    status, replayed = call(admin_functions["deadletters_replay"], "POST", f"{base}/replay", {"message_id": "a"})
    assert status == 200 and replayed["counts"] == {"replayed": 1} and replayed["max_replays"] == 3
    assert [(q, m.message_id) for q, m in fake_dead_letters.sent] == [(TRAIN, "a:replay-1")]

    status, refused = call(admin_functions["deadletters_purge"], "POST", f"{base}/purge", {"confirm": 1})
    assert status == 400 and "confirm must be a string" in refused["error"]
    status, purged = call(admin_functions["deadletters_purge"], "POST", f"{base}/purge", {"confirm": "all"})
    assert status == 200 and purged["counts"] == {"purged": 1}
    assert fake_dead_letters.dead[TRAIN] == [] and not fake_dead_letters.locked
    # One session per operation that reached the store (the refused purge never opened one).
    assert fake_dead_letters.sessions == 3


# -- the CLI directly on the local queues ----------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    from signalbox import dlq

    parser = argparse.ArgumentParser(prog="signalbox")
    dlq.add_parser(parser.add_subparsers(dest="command", required=True))
    return dlq.run(parser.parse_args(argv))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, LocalQueues]]:
    monkeypatch.setenv("SIGNALBOX_QUEUES_FILE", str(QUEUES_FILE))
    state_dir = tmp_path / "state"
    yield state_dir, LocalQueues(state_dir / "queues.sqlite3", specs=SPECS)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_purge_refuses_without_a_tty_or_yes(state, monkeypatch, capsys):
    state_dir, queues = state
    poison(queues, TRAIN, "a")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    code = run_cli(["dlq", "purge", TRAIN, "--state-dir", str(state_dir)])

    assert code == 2
    assert "refusing to purge without confirmation" in capsys.readouterr().err
    assert dead(queues, TRAIN) == ["a"]


def test_cli_purge_asks_to_type_the_queue_name_on_a_tty(state, monkeypatch, capsys):
    state_dir, queues = state
    poison(queues, TRAIN, "a")
    monkeypatch.setattr("sys.stdin", FakeTty("evaluate\n"))
    assert run_cli(["dlq", "purge", TRAIN, "--state-dir", str(state_dir)]) == 2
    assert "not confirmed" in capsys.readouterr().err and dead(queues, TRAIN) == ["a"]

    monkeypatch.setattr("sys.stdin", FakeTty("train\n"))
    assert run_cli(["dlq", "purge", TRAIN, "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr()
    assert "This deletes 1 dead letter(s) of queue 'train'" in out.err and "purged: train a" in out.out
    assert dead(queues, TRAIN) == []


def test_cli_replay_prints_progress_and_each_outcome(state, capsys):
    state_dir, queues = state
    for n in range(5):
        poison(queues, TRAIN, f"m-{n}")

    code = run_cli(["dlq", "replay", TRAIN, "--progress-every", "2", "--state-dir", str(state_dir)])

    assert code == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == ["replayed 2/5", "replayed 4/5", "replayed 5/5"]
    assert "replayed: train m-0 -> m-0:replay-1 (replay 1)" in out.out
    assert out.out.rstrip().endswith("replay: replayed 5")


def test_cli_refuses_a_state_dir_without_queues_and_bad_filters(tmp_path, state, capsys):
    assert run_cli(["dlq", "list", "--state-dir", str(tmp_path / "nowhere")]) == 1
    assert "no local queues at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    state_dir, queues = state
    poison(queues, TRAIN, "a")
    assert run_cli(["dlq", "list", "--since", "soon", "--state-dir", str(state_dir)]) == 2
    assert "since" in capsys.readouterr().err
    assert run_cli(["dlq", "show", "zzz", "--state-dir", str(state_dir)]) == 1
    assert "no dead letter with message id 'zzz'" in capsys.readouterr().err


# -- the Service Bus adapter at the SDK boundary -------------------------------------------------------------


def received(
    sequence_number: int,
    message_id: str,
    *,
    body: bytes = b'{"id": 1}',
    properties: dict[str, Any] | None = None,
    session_id: str | None = None,
) -> Any:
    """A real ``ServiceBusReceivedMessage``, decoded from the AMQP bytes a dead-letter receiver gets."""
    from azure.servicebus import ServiceBusReceivedMessage
    from azure.servicebus._pyamqp._encode import encode_payload
    from azure.servicebus._pyamqp.message import Header, Message, Properties
    from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes

    application_properties: dict[str | bytes, Any] = {
        "DeadLetterReason": "MaxDeliveryCountExceeded",
        "DeadLetterErrorDescription": "Message could not be consumed after 5 delivery attempts.",
        "model_name": "iris",
    }
    application_properties.update(properties or {})
    amqp = Message(
        header=Header(delivery_count=5),
        properties=Properties(
            message_id=message_id,
            correlation_id="life-1",
            group_id=session_id,
            subject="train",
            content_type="application/json",
        ),
        application_properties=application_properties,
        message_annotations={
            b"x-opt-sequence-number": {TYPE: AMQPTypes.long, VALUE: sequence_number},
            b"x-opt-enqueued-time": {TYPE: AMQPTypes.timestamp, VALUE: 1_795_435_200_000},
        },
        data=[body],
    )
    return ServiceBusReceivedMessage.from_bytes(bytes(encode_payload(bytearray(), amqp)))


class StandInReceiver:
    """Records calls; keeps a list of dead letters, locked ones skipped by receive (as the broker would)."""

    def __init__(self, broker: StandInClient, queue: str, kwargs: dict[str, Any]) -> None:
        self.broker, self.queue, self.kwargs = broker, queue, kwargs

    def __enter__(self) -> StandInReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def peek_messages(self, max_message_count: int = 1, *, sequence_number: int = 0) -> list[Any]:
        self.broker.log.append(("peek", self.queue, max_message_count, sequence_number))
        pending = [m for m in self.broker.dead[self.queue] if m.sequence_number >= sequence_number]
        return pending[:max_message_count]

    def receive_messages(self, max_message_count: int = 1, max_wait_time: float | None = None) -> list[Any]:
        free = [m for m in self.broker.dead[self.queue] if m.sequence_number not in self.broker.locked]
        batch = free[:max_message_count]
        self.broker.locked |= {m.sequence_number for m in batch}
        self.broker.log.append(("receive", self.queue, [m.sequence_number for m in batch]))
        return batch

    def complete_message(self, message: Any) -> None:
        self.broker.log.append(("complete", self.queue, message.sequence_number))
        self.broker.locked.discard(message.sequence_number)
        self.broker.dead[self.queue].remove(message)

    def abandon_message(self, message: Any) -> None:
        self.broker.log.append(("abandon", self.queue, message.sequence_number))
        self.broker.locked.discard(message.sequence_number)

    def close(self) -> None:
        self.broker.log.append(("close-receiver", self.queue))


class StandInSender:
    def __init__(self, broker: StandInClient, queue: str, fail: bool) -> None:
        self.broker, self.queue, self.fail = broker, queue, fail

    def send_messages(self, message: Any) -> None:
        if self.fail:
            raise ConnectionError("link detached")
        self.broker.log.append(("send", self.queue, message.message_id))
        self.broker.sent.append((self.queue, message))

    def close(self) -> None:
        pass


class StandInClient:
    def __init__(self, dead: dict[str, list[Any]], *, fail_send: bool = False) -> None:
        self.dead = dead
        self.locked: set[int] = set()
        self.log: list[tuple[Any, ...]] = []
        self.sent: list[tuple[str, Any]] = []
        self.receivers: list[StandInReceiver] = []
        self.fail_send = fail_send

    def get_queue_receiver(self, queue_name: str, **kwargs: Any) -> StandInReceiver:
        receiver = StandInReceiver(self, queue_name, kwargs)
        self.receivers.append(receiver)
        return receiver

    def get_queue_sender(self, queue_name: str) -> StandInSender:
        return StandInSender(self, queue_name, self.fail_send)

    def close(self) -> None:
        self.log.append(("close-client",))


def sb_store(client: StandInClient) -> Any:
    from shared.adapters.servicebus.deadletters import ServiceBusDeadLetters

    return ServiceBusDeadLetters(
        ServiceBusAccess(fully_qualified_namespace="sb-signalbox.servicebus.windows.net"),
        client_factory=lambda: client,
        queue_names=[TRAIN, PROMOTE],
        max_wait_time=0.01,
    )


def test_servicebus_peek_pages_through_the_dead_letter_sub_queue_and_decodes_properties():
    from azure.servicebus import ServiceBusSubQueue

    client = StandInClient({TRAIN: [received(n, f"m-{n}") for n in range(1, 6)], PROMOTE: []})
    store = sb_store(client)

    peeked = store.peek(TRAIN, 3)

    assert [d.message_id for d in peeked] == ["m-1", "m-2", "m-3"]
    assert client.receivers[0].kwargs == {"sub_queue": ServiceBusSubQueue.DEAD_LETTER}
    first = peeked[0]
    assert first.reason == "MaxDeliveryCountExceeded" and first.description.startswith("Message could not")
    assert first.application_properties["model_name"] == "iris"  # str keys and values, not bytes
    assert first.body == b'{"id": 1}' and first.correlation_id == "life-1" and first.subject == "train"
    assert first.enqueued_time == datetime(2026, 11, 23, 12, 0, tzinfo=UTC) and first.dead_lettered_time is None
    assert first.replay_count == 0
    assert [d.message_id for d in store.peek(TRAIN, 100)] == [f"m-{n}" for n in range(1, 6)]


def test_servicebus_replay_sends_then_completes_on_the_peek_lock_receiver():
    from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

    dead_letters = [
        received(1, "m-1", properties={"other": "x"}),
        received(2, "m-2", session_id="iris", properties={dl.REPLAY_COUNT: 1, dl.ORIGINAL_MESSAGE_ID: "m-0"}),
        received(3, "m-3"),
    ]
    client = StandInClient({TRAIN: dead_letters, PROMOTE: []})
    store = sb_store(client)

    report = dl.replay(store, store, Filters(queue=TRAIN, message_id="m-0"))
    store.close()

    assert [(o.message_id, o.status, o.new_message_id) for o in report.outcomes] == [
        ("m-2", "replayed", "m-0:replay-2")
    ]
    [(queue, sent)] = client.sent
    assert queue == TRAIN and type(sent).__name__ == "ServiceBusMessage"
    assert (sent.message_id, sent.session_id, sent.correlation_id) == ("m-0:replay-2", "iris", "life-1")
    assert sent.application_properties == {"model_name": "iris", dl.REPLAY_COUNT: 2, dl.ORIGINAL_MESSAGE_ID: "m-0"}
    assert b"".join(sent.body) == b'{"id": 1}'
    lock_receiver = next(r for r in client.receivers if "receive_mode" in r.kwargs)
    assert lock_receiver.kwargs["sub_queue"] == ServiceBusSubQueue.DEAD_LETTER
    assert lock_receiver.kwargs["receive_mode"] == ServiceBusReceiveMode.PEEK_LOCK
    settle = [entry for entry in client.log if entry[0] in ("send", "complete", "abandon")]
    # Sent, then completed; the others met on the way were given back at the end.
    assert settle[:2] == [("send", TRAIN, "m-0:replay-2"), ("complete", TRAIN, 2)]
    assert sorted(settle[2:]) == [("abandon", TRAIN, 1), ("abandon", TRAIN, 3)]
    assert [m.message_id for m in client.dead[TRAIN]] == ["m-1", "m-3"] and not client.locked


def test_servicebus_failed_send_abandons_and_never_completes():
    client = StandInClient({TRAIN: [received(1, "m-1")], PROMOTE: []}, fail_send=True)
    store = sb_store(client)

    report = dl.replay(store, store)
    store.close()

    assert [o.status for o in report.outcomes] == ["failed"] and "link detached" in report.outcomes[0].detail
    assert not [e for e in client.log if e[0] == "complete"]
    assert ("abandon", TRAIN, 1) in client.log
    assert [m.message_id for m in client.dead[TRAIN]] == ["m-1"]


def test_servicebus_lock_of_a_message_no_longer_there_is_none():
    client = StandInClient({TRAIN: [received(1, "m-1"), received(5, "m-5")], PROMOTE: []})
    store = sb_store(client)
    assert store.lock(TRAIN, 3) is None  # received past it
    assert store.lock(TRAIN, 5).message_id == "m-5"  # already held from that receive
    store.release_all()
    assert not client.locked
    client.dead[TRAIN].clear()
    assert store.lock(TRAIN, 1) is None  # nothing left to receive
    store.close()
    assert ("close-client",) in client.log


def test_servicebus_purge_completes_without_sending():
    client = StandInClient({TRAIN: [received(1, "m-1"), received(2, "m-2")], PROMOTE: []})
    store = sb_store(client)
    report = dl.purge(store, Filters(queue=TRAIN, message_id="m-2"), confirm=TRAIN)
    store.close()
    assert [o.status for o in report.outcomes] == ["purged"] and client.sent == []
    assert [m.message_id for m in client.dead[TRAIN]] == ["m-1"]


def test_servicebus_sessions_open_one_adapter_each_and_close_it():
    from shared.adapters.servicebus.deadletters import ServiceBusDeadLetters, servicebus_dead_letters

    clients: list[StandInClient] = []

    def connect() -> StandInClient:
        clients.append(StandInClient({TRAIN: [received(1, "m-1"), received(2, "m-2")], PROMOTE: []}))
        return clients[-1]

    access = ServiceBusAccess(fully_qualified_namespace="sb-signalbox.servicebus.windows.net")
    sessions = servicebus_dead_letters(access, client_factory=connect, queue_names=[TRAIN, PROMOTE], max_wait_time=0.01)
    with sessions() as ports:
        assert isinstance(ports.store, ServiceBusDeadLetters) and ports.store is ports.sender
        assert ports.store.lock(TRAIN, 2) is not None  # held, never settled: the session's end gives it back
    with sessions() as again:
        assert again.store is not ports.store
        assert [d.message_id for d in dl.select(again.store)] == ["m-1", "m-2"]
    assert len(clients) == 2
    first = clients[0]
    assert ("abandon", TRAIN, 1) in first.log and ("abandon", TRAIN, 2) in first.log and not first.locked
    assert all(("close-client",) in client.log for client in clients)
