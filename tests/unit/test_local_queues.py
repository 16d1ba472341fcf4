"""The local queues keep Azure Service Bus semantics, across threads and processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.local.queues import (
    LocalQueues,
    MessageLockLost,
    OutboundMessage,
    QueueError,
    SessionIdRequired,
    UnknownQueue,
)
from shared.queues import QUEUES

REPO = Path(__file__).resolve().parents[2]

TRAIN = "train"  # non-session: max delivery 5, TTL P1D, dedup window P1D
PROMOTE = "promote"  # session queue
POLL_RUN = "poll-run"  # non-session, its own duplicate history
# The shipped lock durations (shared/queues.json): short, so a crashed consumer's work returns fast.
LOCK = QUEUES[TRAIN].lock_duration.total_seconds()
SESSION_LOCK = QUEUES[PROMOTE].lock_duration.total_seconds()


class FakeClock:
    """A clock the test moves by hand, so expiry needs no sleeping."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queues.sqlite"


@pytest.fixture
def queues(db: Path, clock: FakeClock) -> LocalQueues:
    return LocalQueues(db, clock=clock)


def msg(
    message_id: str,
    session_id: str | None = None,
    *,
    scheduled_enqueue_time: datetime | None = None,
    time_to_live: timedelta | None = None,
) -> OutboundMessage:
    return OutboundMessage(
        body=json.dumps({"id": message_id}),
        message_id=message_id,
        session_id=session_id,
        scheduled_enqueue_time=scheduled_enqueue_time,
        time_to_live=time_to_live,
    )


def test_send_receive_complete(queues: LocalQueues, clock: FakeClock) -> None:
    sent = OutboundMessage(
        body='{"model": "churn"}',
        message_id="m-1",
        correlation_id="corr-1",
        subject="TrainModel",
        application_properties={"schema": 1, "urgent": True, "ratio": 0.5, "who": "test"},
    )
    assert queues.send(TRAIN, sent) is True

    [got] = queues.receive(TRAIN, max_messages=10)

    assert got.queue == TRAIN
    assert got.message_id == "m-1"
    assert got.body == b'{"model": "churn"}'
    assert (got.correlation_id, got.subject, got.content_type) == ("corr-1", "TrainModel", "application/json")
    assert got.application_properties == {"schema": 1, "urgent": True, "ratio": 0.5, "who": "test"}
    assert got.application_properties["urgent"] is True
    assert got.session_id is None
    assert got.delivery_count == 1
    assert got.sequence_number == 1
    assert got.enqueued_time == clock.now
    assert got.expires_at == clock.now + QUEUES[TRAIN].default_message_ttl
    assert got.locked_until == clock.now + QUEUES[TRAIN].lock_duration
    assert got.lock_token
    assert got.scheduled_enqueue_time is None
    assert got.dead_letter_reason is None
    assert got.locked_until.tzinfo is not None

    assert queues.receive(TRAIN) == [], "a locked message is invisible to other receivers"
    queues.complete(TRAIN, got.lock_token)
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    assert queues.receive(TRAIN) == []
    with pytest.raises(MessageLockLost):
        queues.complete(TRAIN, got.lock_token)


def test_receive_is_fifo_and_returns_distinct_messages(queues: LocalQueues) -> None:
    assert queues.send_many(TRAIN, [msg(f"m-{i}") for i in range(5)]) == [True] * 5

    first = queues.receive(TRAIN, max_messages=3)
    second = queues.receive(TRAIN, max_messages=3)

    assert [m.message_id for m in first] == ["m-0", "m-1", "m-2"]
    assert [m.message_id for m in second] == ["m-3", "m-4"]
    assert [m.sequence_number for m in first + second] == [1, 2, 3, 4, 5]
    assert len({m.lock_token for m in first + second}) == 5


def test_abandon_redelivers_with_delivery_count_two(queues: LocalQueues) -> None:
    queues.send(TRAIN, msg("m-1"))
    [first] = queues.receive(TRAIN)

    queues.abandon(TRAIN, first.lock_token, error="ValueError: flaky")

    [again] = queues.receive(TRAIN)
    assert again.message_id == "m-1"
    assert again.delivery_count == 2
    assert again.lock_token != first.lock_token
    with pytest.raises(MessageLockLost):
        queues.complete(TRAIN, first.lock_token)
    queues.complete(TRAIN, again.lock_token)
    assert queues.counts(TRAIN)["dead_letter"] == 0


def test_max_delivery_count_dead_letters_with_last_error(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("poison"))
    max_deliveries = QUEUES[TRAIN].max_delivery_count

    for attempt in range(1, max_deliveries + 1):
        [got] = queues.receive(TRAIN)
        assert got.delivery_count == attempt
        queues.abandon(TRAIN, got.lock_token, error=f"RuntimeError: attempt {attempt}")

    assert queues.receive(TRAIN) == []
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 1}
    [dead] = queues.peek(TRAIN, dead_letter=True)
    assert dead.message_id == "poison"
    assert dead.delivery_count == max_deliveries
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_error_description == (
        f"Message could not be consumed after {max_deliveries} delivery attempts. "
        f"Last error: RuntimeError: attempt {max_deliveries}"
    )
    assert dead.dead_lettered_at == clock.now
    assert queues.peek(TRAIN) == []


def test_abandon_without_error_dead_letters_with_plain_description(queues: LocalQueues) -> None:
    spec = replace(QUEUES[TRAIN], max_delivery_count=1)
    one_shot = LocalQueues(queues.path, specs={TRAIN: spec}, clock=FakeClock())
    one_shot.send(TRAIN, msg("m-1"))
    [got] = one_shot.receive(TRAIN)

    one_shot.abandon(TRAIN, got.lock_token)

    [dead] = one_shot.peek(TRAIN, dead_letter=True)
    assert dead.dead_letter_error_description == "Message could not be consumed after 1 delivery attempts."


def test_crashed_consumer_at_max_delivery_is_dead_lettered_with_last_error(
    queues: LocalQueues, clock: FakeClock
) -> None:
    queues.send(TRAIN, msg("m-1"))
    max_deliveries = QUEUES[TRAIN].max_delivery_count
    for attempt in range(1, max_deliveries):
        [got] = queues.receive(TRAIN)
        queues.abandon(TRAIN, got.lock_token, error=f"TimeoutError: attempt {attempt}")
    [last] = queues.receive(TRAIN)
    assert last.delivery_count == max_deliveries

    # The consumer dies holding the lock: no abandon, no complete.
    clock.advance(seconds=LOCK + 1)

    assert queues.receive(TRAIN) == [], "a message at MaxDeliveryCount is not delivered again"
    [dead] = queues.peek(TRAIN, dead_letter=True)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_error_description == (
        f"Message could not be consumed after {max_deliveries} delivery attempts. "
        f"Last error: TimeoutError: attempt {max_deliveries - 1}"
    )
    with pytest.raises(MessageLockLost):
        queues.complete(TRAIN, last.lock_token)


def test_lock_expiry_redelivers_to_another_receiver(db: Path, clock: FakeClock) -> None:
    receiver_a = LocalQueues(db, clock=clock)
    receiver_b = LocalQueues(db, clock=clock)
    receiver_a.send(TRAIN, msg("m-1"))
    [held] = receiver_a.receive(TRAIN)

    clock.advance(seconds=LOCK - 1)
    assert receiver_b.receive(TRAIN) == []
    clock.advance(seconds=1)  # exactly locked_until: the lock has lapsed

    [taken] = receiver_b.receive(TRAIN)
    assert taken.message_id == "m-1"
    assert taken.delivery_count == 2
    with pytest.raises(MessageLockLost):
        receiver_a.complete(TRAIN, held.lock_token)
    receiver_b.complete(TRAIN, taken.lock_token)
    assert receiver_a.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_renew_lock_extends_the_lock(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("m-1"))
    [got] = queues.receive(TRAIN)

    clock.advance(seconds=LOCK * 0.8)
    renewed = queues.renew_lock(TRAIN, got.lock_token)
    assert renewed == clock.now + QUEUES[TRAIN].lock_duration

    clock.advance(seconds=LOCK * 0.8)  # 1.6 locks after receive: past the original lock, within the renewed one
    assert queues.receive(TRAIN) == []
    assert queues.counts(TRAIN)["locked"] == 1
    [peeked] = queues.peek(TRAIN)
    assert peeked.locked_until == renewed
    assert peeked.lock_token == ""
    queues.complete(TRAIN, got.lock_token)
    assert queues.peek(TRAIN) == []


def test_renew_lock_after_expiry_or_with_unknown_token_raises(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("m-1"))
    [got] = queues.receive(TRAIN)
    clock.advance(seconds=LOCK * 2)

    with pytest.raises(MessageLockLost):
        queues.renew_lock(TRAIN, got.lock_token)
    with pytest.raises(MessageLockLost):
        queues.renew_lock(TRAIN, "not-a-token")
    with pytest.raises(MessageLockLost):
        queues.abandon(TRAIN, "not-a-token")
    with pytest.raises(MessageLockLost):
        queues.dead_letter(TRAIN, got.lock_token, reason="r", description="d")


def test_complete_after_lock_expiry_raises_and_message_stays(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("m-1"))
    [got] = queues.receive(TRAIN)
    clock.advance(seconds=LOCK + 1)

    with pytest.raises(MessageLockLost, match="unknown or has expired"):
        queues.complete(TRAIN, got.lock_token)

    assert queues.counts(TRAIN)["active"] == 1
    [again] = queues.receive(TRAIN)
    assert again.delivery_count == 2


def test_explicit_dead_letter(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("m-1"))
    [got] = queues.receive(TRAIN)

    queues.dead_letter(TRAIN, got.lock_token, reason="InvalidContract", description="schema_version 9")

    assert queues.receive(TRAIN) == []
    [dead] = queues.peek(TRAIN, dead_letter=True)
    assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("InvalidContract", "schema_version 9")
    assert dead.dead_lettered_at == clock.now
    with pytest.raises(MessageLockLost):
        queues.complete(TRAIN, got.lock_token)


def test_scheduled_message_is_invisible_until_its_time(queues: LocalQueues, clock: FakeClock) -> None:
    at = clock.now + timedelta(minutes=10)
    queues.send(TRAIN, msg("later", scheduled_enqueue_time=at))
    queues.send(TRAIN, msg("now"))

    [first] = queues.receive(TRAIN, max_messages=10)
    assert first.message_id == "now"
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 1, "locked": 1, "dead_letter": 0}
    assert [m.message_id for m in queues.peek(TRAIN)] == ["later", "now"], "peek shows scheduled messages"
    queues.complete(TRAIN, first.lock_token)

    clock.advance(minutes=9, seconds=59)
    assert queues.receive(TRAIN) == []
    clock.advance(seconds=1)

    [later] = queues.receive(TRAIN)
    assert later.message_id == "later"
    assert later.scheduled_enqueue_time == at
    assert later.enqueued_time == at
    assert later.expires_at == at + QUEUES[TRAIN].default_message_ttl


def test_naive_scheduled_time_is_rejected(queues: LocalQueues) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        queues.send(TRAIN, msg("m-1", scheduled_enqueue_time=datetime(2025, 3, 1, 12, 0)))
    assert queues.counts(TRAIN)["active"] == 0


def test_ttl_expiry_dead_letters(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("short", time_to_live=timedelta(seconds=30)))
    queues.send(TRAIN, msg("long"))
    [peeked, _] = queues.peek(TRAIN)
    assert peeked.expires_at == clock.now + timedelta(seconds=30)

    clock.advance(seconds=30)

    [got] = queues.receive(TRAIN, max_messages=10)
    assert got.message_id == "long"
    [dead] = queues.peek(TRAIN, dead_letter=True)
    assert dead.message_id == "short"
    assert dead.dead_letter_reason == "TTLExpiredException"
    assert dead.dead_letter_error_description == "The message expired and was dead lettered."
    assert dead.dead_lettered_at == clock.now


def test_ttl_expiry_without_dead_lettering_deletes(db: Path, clock: FakeClock) -> None:
    spec = replace(QUEUES[TRAIN], dead_lettering_on_expiration=False)
    queues = LocalQueues(db, specs={TRAIN: spec}, clock=clock)
    queues.send(TRAIN, msg("m-1", time_to_live=timedelta(seconds=30)))
    clock.advance(minutes=1)

    assert queues.receive(TRAIN) == []
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_message_ttl_is_capped_at_the_queue_default(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send(TRAIN, msg("m-1", time_to_live=timedelta(days=30)))

    [peeked] = queues.peek(TRAIN)
    assert peeked.expires_at == clock.now + QUEUES[TRAIN].default_message_ttl


def test_duplicate_detection_window(queues: LocalQueues, clock: FakeClock) -> None:
    assert queues.send(TRAIN, msg("dup")) is True
    assert queues.send(TRAIN, msg("dup")) is False
    [got] = queues.receive(TRAIN, max_messages=10)
    queues.complete(TRAIN, got.lock_token)

    clock.advance(hours=23, minutes=59)
    assert queues.send(TRAIN, msg("dup")) is False, "detection holds after the original was completed"
    assert queues.send(POLL_RUN, msg("dup")) is True, "the window is per queue"
    assert queues.counts(POLL_RUN)["active"] == 1

    clock.advance(minutes=1)  # the window counts from the first accepted send
    assert queues.send(TRAIN, msg("dup")) is True
    assert queues.send(TRAIN, msg("dup")) is False
    assert queues.counts(TRAIN)["active"] == 1


def test_send_many_dedups_within_the_batch(queues: LocalQueues) -> None:
    queues.send(TRAIN, msg("a"))

    flags = queues.send_many(TRAIN, [msg("a"), msg("b"), msg("b"), msg("c")])

    assert flags == [False, True, False, True]
    assert [m.message_id for m in queues.peek(TRAIN)] == ["a", "b", "c"]


def test_send_many_is_one_transaction(queues: LocalQueues) -> None:
    with pytest.raises(SessionIdRequired):
        queues.send_many(PROMOTE, [msg("ok", session_id="s1"), msg("bad")])

    assert queues.counts(PROMOTE)["active"] == 0
    assert queues.send(PROMOTE, msg("ok", session_id="s1")) is True, "nothing of the failed batch was recorded"


def test_sessions_are_fifo_one_at_a_time_and_parallel_across_sessions(queues: LocalQueues) -> None:
    order = [("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A"), ("b2", "B")]
    queues.send_many(PROMOTE, [msg(mid, session_id=sid) for mid, sid in order])

    batch = queues.receive(PROMOTE, max_messages=10)
    assert [(m.message_id, m.session_id) for m in batch] == [("a1", "A"), ("b1", "B")], "one per session"
    assert queues.receive(PROMOTE, max_messages=10) == [], "each session has a message in flight"
    a1, b1 = batch

    queues.complete(PROMOTE, a1.lock_token)
    [a2] = queues.receive(PROMOTE, max_messages=10)
    assert a2.message_id == "a2", "session A moves on while B's message is still locked"

    queues.complete(PROMOTE, b1.lock_token)
    queues.complete(PROMOTE, a2.lock_token)
    batch = queues.receive(PROMOTE, max_messages=10)
    assert [m.message_id for m in batch] == ["a3", "b2"]
    for m in batch:
        queues.complete(PROMOTE, m.lock_token)
    assert queues.receive(PROMOTE, max_messages=10) == []


def test_session_abandon_redelivers_that_message_first(queues: LocalQueues) -> None:
    queues.send_many(PROMOTE, [msg(f"m{i}", session_id="model-x") for i in range(3)])
    [first] = queues.receive(PROMOTE)

    queues.abandon(PROMOTE, first.lock_token, error="boom")

    [again] = queues.receive(PROMOTE, max_messages=5)
    assert again.message_id == "m0"
    assert again.delivery_count == 2
    queues.complete(PROMOTE, again.lock_token)
    [then] = queues.receive(PROMOTE, max_messages=5)
    assert then.message_id == "m1"


def test_session_lock_expiry_redelivers_the_head_first(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send_many(PROMOTE, [msg(f"m{i}", session_id="model-x") for i in range(2)])
    [held] = queues.receive(PROMOTE)

    clock.advance(seconds=SESSION_LOCK + 1)

    [again] = queues.receive(PROMOTE, max_messages=5)
    assert (again.message_id, again.delivery_count) == ("m0", 2)
    assert held.lock_token != again.lock_token


def test_session_id_required(queues: LocalQueues) -> None:
    with pytest.raises(SessionIdRequired, match="SessionId was not set"):
        queues.send(PROMOTE, msg("no-session"))
    with pytest.raises(SessionIdRequired, match="does not require sessions"):
        queues.send(TRAIN, msg("has-session", session_id="s1"))

    assert queues.counts(PROMOTE)["active"] == 0
    assert queues.counts(TRAIN)["active"] == 0
    assert queues.send(PROMOTE, msg("no-session", session_id="s1")) is True, "a rejected send is not a duplicate"


def test_unknown_queue(queues: LocalQueues) -> None:
    with pytest.raises(UnknownQueue, match=r"'nope'.*deploy, evaluate, poll-run, promote, train"):
        queues.send("nope", msg("m-1"))
    with pytest.raises(UnknownQueue):
        queues.receive("nope")
    with pytest.raises(UnknownQueue):
        queues.counts("nope")
    assert issubclass(UnknownQueue, QueueError)


def test_durable_across_reopen(db: Path, clock: FakeClock) -> None:
    first = LocalQueues(db, clock=clock)
    first.send_many(TRAIN, [msg("m-1"), msg("m-2"), msg("m-3")])
    first.send(PROMOTE, msg("p-1", session_id="s1"))
    [held] = first.receive(TRAIN)
    [doomed] = first.receive(TRAIN)
    first.dead_letter(TRAIN, doomed.lock_token, reason="Bad", description="bad body")
    first.close()
    with pytest.raises(QueueError, match="closed"):
        first.receive(TRAIN)

    reopened = LocalQueues(db, clock=clock)

    assert reopened.counts(TRAIN) == {"active": 1, "scheduled": 0, "locked": 1, "dead_letter": 1}
    assert reopened.counts(PROMOTE)["active"] == 1
    assert reopened.send(TRAIN, msg("m-1")) is False, "the duplicate history survives"
    reopened.complete(TRAIN, held.lock_token)
    [rest] = reopened.receive(TRAIN, max_messages=10)
    assert rest.message_id == "m-3"
    assert rest.sequence_number == 3
    reopened.send(TRAIN, msg("m-4"))
    assert [m.sequence_number for m in reopened.peek(TRAIN)] == [3, 4], "sequence numbers keep increasing"


def test_counts(queues: LocalQueues, clock: FakeClock) -> None:
    queues.send_many(TRAIN, [msg(f"m-{i}") for i in range(4)])
    queues.send(TRAIN, msg("later", scheduled_enqueue_time=clock.now + timedelta(hours=1)))
    locked = queues.receive(TRAIN, max_messages=2)
    queues.dead_letter(TRAIN, locked[0].lock_token, reason="r", description="d")

    assert queues.counts(TRAIN) == {"active": 2, "scheduled": 1, "locked": 1, "dead_letter": 1}
    assert queues.counts(PROMOTE) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_racing_threads_never_receive_the_same_message(queues: LocalQueues) -> None:
    total, workers = 200, 4
    queues.send_many(TRAIN, [msg(f"m-{i}") for i in range(total)])
    received: list[list[str]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def consume(slot: int) -> None:
        try:
            start.wait()
            while batch := queues.receive(TRAIN, max_messages=3):
                for m in batch:
                    queues.complete(TRAIN, m.lock_token)
                    received[slot].append(m.message_id)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(slot,)) for slot in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    everything = Counter(mid for ids in received for mid in ids)
    assert len(everything) == total
    assert set(everything.values()) == {1}, "each message was received exactly once"
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


_WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from shared.adapters.local.queues import LocalQueues

queues = LocalQueues(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
done = []
while batch := queues.receive("train", max_messages=2):
    for message in batch:
        time.sleep(0.001)  # a little work, so the two processes interleave
        queues.complete("train", message.lock_token)
        done.append(message.message_id)
print(json.dumps(done), flush=True)
"""


def _start_worker(db: Path, script: str = _WORKER) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO), str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"worker failed to start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def test_two_processes_process_each_message_exactly_once(db: Path) -> None:
    total = 200
    # Real clock: the workers in other processes use it too.
    queues = LocalQueues(db)
    queues.send_many(TRAIN, [msg(f"m-{i}") for i in range(total)])
    procs = [_start_worker(db), _start_worker(db)]

    results = []
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    everything = Counter(mid for ids in results for mid in ids)
    assert len(everything) == total
    assert set(everything.values()) == {1}, "each message was processed exactly once"
    assert all(ids for ids in results), "both processes took part"
    assert queues.counts(TRAIN) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


_CRASHING_WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from shared.adapters.local.queues import LocalQueues

queues = LocalQueues(sys.argv[2])
print("ready", flush=True)
[message] = queues.receive("train")
print(json.dumps([message.message_id, message.locked_until.isoformat()]), flush=True)
time.sleep(60)
"""


def test_kill_9_of_a_consumer_loses_nothing(db: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    queues = LocalQueues(db, clock=clock)
    queues.send(TRAIN, msg("m-1"))
    proc = _start_worker(db, _CRASHING_WORKER)
    try:
        assert proc.stdout is not None
        message_id, locked_until = json.loads(proc.stdout.readline())
    finally:
        proc.kill()  # SIGKILL: no abandon, no cleanup
        proc.wait(timeout=10)
    assert message_id == "m-1"

    assert queues.receive(TRAIN) == [], "the dead consumer's lock still holds"
    clock.now = datetime.fromisoformat(locked_until)

    [again] = queues.receive(TRAIN)
    assert (again.message_id, again.delivery_count) == ("m-1", 2)
    queues.complete(TRAIN, again.lock_token)


# -- crash recovery: short locks, renewed while a handler works --------------------------------------


def test_shipped_locks_are_short_so_a_crashed_consumer_s_work_returns_within_a_minute() -> None:
    for spec in QUEUES.values():
        assert timedelta(seconds=5) <= spec.lock_duration <= timedelta(seconds=60), spec


def test_a_renewed_session_lock_holds_the_session_and_a_dead_holder_releases_it_within_one_lock(
    queues: LocalQueues, clock: FakeClock
) -> None:
    queues.send_many(PROMOTE, [msg("a1", session_id="A"), msg("a2", session_id="A"), msg("b1", session_id="B")])
    a1, b1 = queues.receive(PROMOTE, max_messages=10)
    assert (a1.message_id, b1.message_id) == ("a1", "b1")
    queues.complete(PROMOTE, b1.lock_token)
    for _ in range(6):  # three lock durations, renewed at half the lock as the host's pump does
        clock.advance(seconds=SESSION_LOCK / 2)
        queues.renew_lock(PROMOTE, a1.lock_token)
        assert queues.receive(PROMOTE, max_messages=10) == [], "session A stays with its holder"

    # The holder is killed: no renewal, no settlement. The session is free one lock duration later.
    clock.advance(seconds=SESSION_LOCK - 0.001)
    assert queues.receive(PROMOTE, max_messages=10) == []
    clock.advance(seconds=0.001)
    [again] = queues.receive(PROMOTE, max_messages=10)
    assert (again.message_id, again.delivery_count) == ("a1", 2), "the head first, counted as a delivery"
    with pytest.raises(MessageLockLost):
        queues.renew_lock(PROMOTE, a1.lock_token)


def _pump(db: Path, lock_seconds: float, options: Any, work: Any) -> tuple[Any, LocalQueues]:
    from signalbox.localhost.index import HostedFunction
    from signalbox.localhost.triggers import QueuePump

    spec = replace(QUEUES[PROMOTE], lock_duration=timedelta(seconds=lock_seconds), max_delivery_count=10)
    queues = LocalQueues(db, specs={PROMOTE: spec})
    function = HostedFunction(
        name="work",
        trigger_type="serviceBusTrigger",
        trigger={"name": "msg", "queueName": PROMOTE, "isSessionsEnabled": True},
        bindings=[],
        user_function=work,
    )
    return QueuePump(function, queues, options, lambda *_: None, poll_interval=0.02), queues


def test_the_pump_renews_the_session_lock_while_the_function_runs(db: Path, tmp_path: Path) -> None:
    from signalbox.localhost.config import HostConfig

    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"serviceBus": {}}}))
    calls: list[tuple[str, int, float, float]] = []

    def work(msg: Any) -> None:
        began = time.monotonic()
        time.sleep(5.0 if msg.message_id == "a1" else 0.0)  # two and a half lock durations
        calls.append((msg.message_id, msg.delivery_count, began, time.monotonic()))

    # host.json without the setting: the extension's default, 5 minutes, covers the five seconds.
    # A 2 s lock renewed each second leaves a loaded machine a second of slack per renewal.
    pump, queues = _pump(db, 2.0, HostConfig.load(host_json).service_bus, work)
    queues.send_many(PROMOTE, [msg("a1", session_id="A"), msg("a2", session_id="A")])
    pump.start()
    try:
        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pump.stop()
    assert [(c[0], c[1]) for c in calls] == [("a1", 1), ("a2", 1)], "never redelivered while it ran"
    assert calls[1][2] >= calls[0][3], "the session's next message waited for the first to finish"
    assert queues.counts(PROMOTE) == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}


def test_the_pump_stops_renewing_after_host_json_s_max_auto_lock_renewal(db: Path, tmp_path: Path) -> None:
    from signalbox.localhost.config import HostConfig

    host_json = tmp_path / "host.json"
    host_json.write_text(
        json.dumps({"version": "2.0", "extensions": {"serviceBus": {"maxAutoLockRenewalDuration": "00:00:04"}}})
    )
    calls: list[tuple[str, int]] = []
    release = threading.Event()

    def work(msg: Any) -> None:
        calls.append((msg.message_id, msg.delivery_count))
        if msg.delivery_count == 1:
            release.wait(20)  # runs past the renewal limit: the lock lapses and the session moves on

    options = HostConfig.load(host_json).service_bus
    assert options.max_auto_lock_renewal == timedelta(seconds=4)
    pump, queues = _pump(db, 2.0, options, work)
    queues.send(PROMOTE, msg("a1", session_id="A"))
    began = time.monotonic()
    pump.start()
    try:
        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        redelivered_after = time.monotonic() - began
    finally:
        release.set()
        pump.stop()
    assert calls[:2] == [("a1", 1), ("a1", 2)]
    # Renewed for 4 s (host.json), then lapsed at most one lock (2 s) later; not before.
    assert 4.0 <= redelivered_after < 10.0, redelivered_after
