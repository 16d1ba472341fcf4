"""``signalbox dlq list|show|replay|purge``: the dead-letter queues, from the command line.

By default it works directly on the local queues of ``--state-dir`` (no host needed); with
``--host-url`` it goes through a running host's admin functions (``/api/ops/deadletters``),
with the admin (master) key from ``--admin-key`` / ``$SIGNALBOX_ADMIN_KEY`` or else the state
dir's ``host-keys.json`` (a Function App in Azure: pass its master key). Both ways run the
same code (``shared/deadletters``: its requests, operations and views) and print the same thing.

With ``--source eventgrid`` the same actions work on the events Event Grid dead-lettered (its
subscriptions' dead-letter container; locally ``STATE_DIR/eventgrid-deadletters``, which the local
host fills when a delivery exhausts its retries): the positional argument is then the function (or
subscription), ``--message-id``/``--event-id`` the event id, and a replay delivers each event to its
function through the host's Event Grid webhook (directly: ``--deliver-to``, default
``$SIGNALBOX_HOST_URL``, with the state dir's Event Grid system key).

Exit codes: 0 done; 1 something failed (a replay or purge failure, a dead letter not found,
the host unreachable or refusing); 2 bad input, or a purge that was not confirmed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
ALL_QUEUES = "all"  # = shared.deadletters.ALL_QUEUES (this module stays import-light)
_FILTER_ARGS = ("reason", "since", "message_id", "correlation_id", "limit")
EVENTGRID = "eventgrid"  # = shared.deadletters.eventgrid.EVENTGRID


class CommandError(RuntimeError):
    """The command cannot be carried out; the message says why."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- the command line ------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("SIGNALBOX_STATE_DIR", ".signalbox")),
        help="local state with queues.sqlite3 and host-keys.json (default .signalbox)",
    )
    parser.add_argument(
        "--host-url",
        default=None,
        help="go through this running host's admin functions instead of the local queues directly",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("SIGNALBOX_ADMIN_KEY") or None,
        help="the host's admin (master) key for --host-url (default: $SIGNALBOX_ADMIN_KEY, else the state dir's "
        "host-keys.json); needed for a Function App in Azure",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON answer")
    parser.add_argument(
        "--source",
        choices=("queues", EVENTGRID),
        default="queues",
        help="queues: the queues' dead-letter sub-queues (default); eventgrid: the events Event Grid dead-lettered",
    )
    parser.add_argument(
        "--deliver-to",
        default=os.environ.get("SIGNALBOX_HOST_URL") or "http://127.0.0.1:7071",
        help="--source eventgrid without --host-url: the host whose Event Grid webhook a replay delivers to "
        "(default $SIGNALBOX_HOST_URL, else http://127.0.0.1:7071)",
    )


def _filters(parser: argparse.ArgumentParser, *, queue_help: str) -> None:
    parser.add_argument("queue", nargs="?", help=f"{queue_help}; --source eventgrid: a function (or subscription)")
    parser.add_argument("--reason", help="dead-letter reason, e.g. MaxDeliveryCountExceeded (case-insensitive)")
    parser.add_argument("--since", help="dead-lettered at or after: 2026-11-23T10:00:00Z, or an age: 15m, 2h, 1d")
    parser.add_argument("--message-id", "--event-id", help="this message id (or replays of it); eventgrid: event id")
    parser.add_argument("--correlation-id", help="this correlation id (one lifecycle)")
    parser.add_argument("--limit", type=int, help="at most this many dead letters (in queue, then sequence order)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dlq`` and its actions to the ``signalbox`` command's subparsers."""
    dlq: argparse.ArgumentParser = subparsers.add_parser(
        "dlq",
        help="dead-letter queues: list, show, replay, purge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_action", required=True)

    listing = actions.add_parser("list", help="dead letters of one queue, or of every queue")
    _filters(listing, queue_help="a queue (default: every queue)")
    _common(listing)

    show = actions.add_parser("show", help="one dead letter with its body and application properties")
    show.add_argument("message_id", help="the message id (--source eventgrid: the event id)")
    show.add_argument("--queue", "--function", help="look only in this queue (--source eventgrid: this function)")
    _common(show)

    replay = actions.add_parser(
        "replay", help="send dead letters again (new message id, same correlation and session), then remove them"
    )
    _filters(replay, queue_help="a queue (default: every queue)")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; move nothing")
    replay.add_argument(
        "--max-replays",
        type=int,
        default=3,
        help="skip messages already replayed this many times (default 3)",
    )
    replay.add_argument(
        "--progress-every", type=int, default=100, help="a progress line on stderr every N messages (0: none)"
    )
    _common(replay)

    purge = actions.add_parser("purge", help="delete dead letters for good (asks to type the queue name)")
    _filters(purge, queue_help=f"a queue (default: every queue; confirm with {ALL_QUEUES!r})")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    purge.add_argument(
        "--progress-every", type=int, default=100, help="a progress line on stderr every N messages (0: none)"
    )
    _common(purge)
    return dlq


def run(args: argparse.Namespace) -> int:
    """Carry out ``signalbox dlq ...``; the exit code."""
    try:
        source = getattr(args, "source", "queues")
        backend: Backend
        if args.host_url:
            backend = HostBackend(args.host_url.rstrip("/"), args.state_dir, args.admin_key, source=source)
        elif source == EVENTGRID:
            backend = EventGridDirectBackend(args.state_dir, args.deliver_to, args.admin_key)
        else:
            backend = DirectBackend(args.state_dir)
        action = args.dlq_action
        if action == "list":
            return _list(backend, args)
        if action == "show":
            return _show(backend, args)
        if action == "replay":
            return _replay(backend, args)
        return _purge(backend, args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def _filter_data(args: argparse.Namespace) -> dict[str, Any]:
    eventgrid = getattr(args, "source", "queues") == EVENTGRID
    data = {("function" if eventgrid else "queue"): args.queue} if args.queue else {}
    for name in _FILTER_ARGS:
        value = getattr(args, name)
        if value is not None:
            if eventgrid and name == "correlation_id":
                raise CommandError("--correlation-id is for queue dead letters; Event Grid events have none", 2)
            data["event_id" if eventgrid and name == "message_id" else name] = value
    return data


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else text)


def _progress(every: int, verb: str) -> Callable[[int, int], None] | None:
    if every <= 0:
        return None

    def report(done: int, total: int) -> None:
        if done % every == 0 or (done == total and total >= every):
            print(f"{verb} {done}/{total}", file=sys.stderr, flush=True)

    return report


def _list(backend: Backend, args: argparse.Namespace) -> int:
    answer = backend.list(_filter_data(args))
    if answer.get("filters", {}).get("source") == EVENTGRID:
        _emit(args, answer, format_eventgrid_list(answer["dead_letters"], args.queue))
    else:
        _emit(args, answer, format_list(answer["dead_letters"], args.queue))
    return EXIT_OK


def _show(backend: Backend, args: argparse.Namespace) -> int:
    answer = backend.show(args.message_id, args.queue)
    _emit(args, answer, format_detail(answer))
    return EXIT_OK


def _replay(backend: Backend, args: argparse.Namespace) -> int:
    if args.max_replays < 0:
        raise CommandError(f"--max-replays must be at least 0, got {args.max_replays}", EXIT_REFUSED)
    answer = backend.replay(
        _filter_data(args),
        dry_run=args.dry_run,
        max_replays=args.max_replays,
        progress=_progress(args.progress_every, "replayed"),
    )
    _emit(args, answer, format_report(answer, "replay"))
    return EXIT_FAILED if answer["counts"].get("failed") else EXIT_OK


def _purge(backend: Backend, args: argparse.Namespace) -> int:
    data = _filter_data(args)
    progress = _progress(args.progress_every, "purged")
    if args.dry_run:
        answer = backend.purge(data, confirm=None, dry_run=True, progress=progress)
        _emit(args, answer, format_report(answer, "purge"))
        return EXIT_OK
    expected = args.queue or ALL_QUEUES
    what = "function" if getattr(args, "source", "queues") == EVENTGRID else "queue"
    if args.yes:
        confirm = expected
    elif sys.stdin is not None and sys.stdin.isatty():
        preview = backend.purge(data, confirm=None, dry_run=True, progress=None)
        count = len(preview["outcomes"])
        if count == 0:
            _emit(args, preview, "nothing to purge")
            return EXIT_OK
        what = f"{what} {args.queue!r}" if args.queue else f"every {what}"
        print(f"This deletes {count} dead letter(s) of {what} for good.", file=sys.stderr)
        try:
            confirm = input(f"Type {expected!r} to confirm: ").strip()
        except EOFError:
            confirm = ""
        if confirm != expected:
            raise CommandError(f"not confirmed (expected {expected!r}): nothing was purged", EXIT_REFUSED)
    else:
        raise CommandError(
            "refusing to purge without confirmation: stdin is not a terminal, so pass --yes "
            f"(or run it in a terminal and type {expected!r} when asked)",
            EXIT_REFUSED,
        )
    answer = backend.purge(data, confirm=confirm, dry_run=False, progress=progress)
    _emit(args, answer, format_report(answer, "purge"))
    return EXIT_FAILED if answer["counts"].get("failed") else EXIT_OK


# -- where the work happens: the local queues, or a host ------------------------------------------


class Backend(Protocol):
    """The four operations, answering the admin functions' JSON."""

    def list(self, filters: dict[str, Any]) -> dict[str, Any]: ...

    def show(self, message_id: str, queue: str | None) -> dict[str, Any]: ...

    def replay(
        self,
        filters: dict[str, Any],
        *,
        dry_run: bool,
        max_replays: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]: ...

    def purge(
        self,
        filters: dict[str, Any],
        *,
        confirm: str | None,
        dry_run: bool,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]: ...


class DirectBackend:
    """The local queues of a state dir, opened here (a host may run on them at the same time)."""

    def __init__(self, state_dir: Path) -> None:
        from shared.adapters.local.deadletters import LocalDeadLetters, local_queues

        try:
            self.ports = LocalDeadLetters(local_queues(state_dir, must_exist=True))
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    def _filters(self, data: dict[str, Any]) -> Any:
        from shared.deadletters.requests import parse_filters

        try:
            return parse_filters(data, now=datetime.now(UTC))
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None

    def list(self, filters: dict[str, Any]) -> dict[str, Any]:
        from shared import deadletters
        from shared.deadletters import views

        parsed = self._filters(filters)
        try:
            found = deadletters.list_dead_letters(self.ports, parsed)
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None
        return views.listing(parsed, found)

    def show(self, message_id: str, queue: str | None) -> dict[str, Any]:
        from shared import deadletters
        from shared.deadletters import views

        try:
            return views.detail(deadletters.find(self.ports, message_id, queue=queue))
        except LookupError as exc:
            raise CommandError(str(exc.args[0])) from None
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None

    def replay(
        self,
        filters: dict[str, Any],
        *,
        dry_run: bool,
        max_replays: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        from shared import deadletters
        from shared.deadletters import views

        parsed = self._filters(filters)
        try:
            report = deadletters.replay(
                self.ports, self.ports, parsed, dry_run=dry_run, max_replays=max_replays, progress=progress
            )
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None
        return views.report(parsed, report)

    def purge(
        self,
        filters: dict[str, Any],
        *,
        confirm: str | None,
        dry_run: bool,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        from shared import deadletters
        from shared.deadletters import views

        parsed = self._filters(filters)
        try:
            report = deadletters.purge(self.ports, parsed, confirm=confirm, dry_run=dry_run, progress=progress)
        except ValueError as exc:  # ConfirmationRequired included
            raise CommandError(str(exc), EXIT_REFUSED) from None
        return views.report(parsed, report)


class EventGridDirectBackend:
    """The local Event Grid dead-letter folder of a state dir; a replay delivers to a running host."""

    def __init__(self, state_dir: Path, deliver_to: str, admin_key: str | None = None) -> None:
        from shared.adapters.local.eventgrid_deadletters import local_eventgrid_dead_letters
        from signalbox.client import host_keys

        self.store = local_eventgrid_dead_letters(state_dir)
        self.deliver_to = deliver_to.rstrip("/")
        keys = host_keys(state_dir)
        self.key = admin_key or str(keys.get("systemKeys", {}).get("eventgrid_extension", "")) or None

    def _filters(self, data: dict[str, Any], *extra: str) -> Any:
        from shared.deadletters import eventgrid

        try:
            return eventgrid.parse_filters(data, now=datetime.now(UTC), extra=extra)
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None

    def list(self, filters: dict[str, Any]) -> dict[str, Any]:
        from shared.deadletters import eventgrid

        parsed = self._filters(filters)
        return eventgrid.listing(parsed, eventgrid.select(self.store, parsed))

    def show(self, message_id: str, queue: str | None) -> dict[str, Any]:
        from shared.deadletters import eventgrid

        try:
            return eventgrid.detail(eventgrid.find(self.store, message_id, function=queue))
        except LookupError as exc:
            raise CommandError(str(exc.args[0])) from None

    def replay(
        self,
        filters: dict[str, Any],
        *,
        dry_run: bool,
        max_replays: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        from shared.deadletters import eventgrid

        parsed = self._filters(filters)
        delivery = eventgrid.HttpEventGridDelivery(self.deliver_to, self.key)
        try:
            report = eventgrid.replay(
                self.store, delivery, parsed, dry_run=dry_run, max_replays=max_replays, progress=progress
            )
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_REFUSED) from None
        return eventgrid.report_view(parsed, report)

    def purge(
        self,
        filters: dict[str, Any],
        *,
        confirm: str | None,
        dry_run: bool,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        from shared.deadletters import eventgrid

        parsed = self._filters(filters)
        try:
            report = eventgrid.purge(self.store, parsed, confirm=confirm, dry_run=dry_run, progress=progress)
        except ValueError as exc:  # ConfirmationRequired included
            raise CommandError(f"{exc}: nothing was purged", EXIT_REFUSED) from None
        return eventgrid.report_view(parsed, report)


class HostBackend:
    """A running host's admin functions; the admin key from the state dir's ``host-keys.json``."""

    def __init__(self, host_url: str, state_dir: Path, admin_key: str | None = None, *, source: str = "queues") -> None:
        from signalbox.client import host_keys

        self.base = f"{host_url}/api/ops/deadletters"
        self.source = {"source": source} if source != "queues" else {}
        self.state_dir = state_dir
        key = admin_key or str(host_keys(state_dir).get("masterKey", ""))
        # No key file: the host may run with --no-auth; if not, its 401 says what is missing.
        self.headers = {"x-functions-key": key} if key else {}

    def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        import requests

        try:
            response = requests.request(method, url, headers=self.headers, timeout=600, **kwargs)
        except requests.RequestException as exc:
            raise CommandError(f"cannot reach the host at {url}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:300]}
        if response.status_code >= 400:
            message = payload.get("error") or payload.get("message") if isinstance(payload, dict) else payload
            hint = ""
            if response.status_code == 401:
                hint = (
                    f" (the admin key comes from --admin-key, $SIGNALBOX_ADMIN_KEY or "
                    f"{self.state_dir / 'host-keys.json'}: is --state-dir the host's?)"
                )
            code = EXIT_REFUSED if response.status_code == 400 else EXIT_FAILED
            raise CommandError(f"host answered {response.status_code}: {message}{hint}", code)
        if not isinstance(payload, dict):
            raise CommandError(f"host answered something unexpected: {str(payload)[:300]}")
        return payload

    def list(self, filters: dict[str, Any]) -> dict[str, Any]:
        return self._call("GET", self.base, params={**filters, **self.source})

    def show(self, message_id: str, queue: str | None) -> dict[str, Any]:
        from urllib.parse import quote

        where = ({"function": queue} if self.source else {"queue": queue}) if queue else {}
        return self._call("GET", f"{self.base}/{quote(message_id, safe='')}", params={**where, **self.source})

    def replay(
        self,
        filters: dict[str, Any],
        *,
        dry_run: bool,
        max_replays: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        # One request: the host logs the progress of a long replay.
        if progress is not None and not dry_run:
            print("replaying through the host (its log shows the progress)...", file=sys.stderr, flush=True)
        return self._call(
            "POST",
            f"{self.base}/replay",
            json={**filters, **self.source, "dry_run": dry_run, "max_replays": max_replays},
        )

    def purge(
        self,
        filters: dict[str, Any],
        *,
        confirm: str | None,
        dry_run: bool,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        body = {**filters, **self.source, "dry_run": dry_run}
        if confirm is not None:
            body["confirm"] = confirm
        return self._call("POST", f"{self.base}/purge", json=body)


# -- printing ------------------------------------------------------------------------------------


def _when(text: str | None) -> str:
    if not text:
        return "-"
    return text.replace("T", " ")[:19]


def _cut(text: str | None, width: int) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: tuple[str, ...], table: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in (headers, *table)]


def format_eventgrid_list(rows: list[dict[str, Any]], function: str | None) -> str:
    """The ``list --source eventgrid`` table."""
    if not rows:
        return f"no Event Grid dead letters for {function}" if function else "no Event Grid dead letters"
    headers = ("EVENT ID", "FUNCTION", "EVENT TYPE", "REASON", "ATTEMPTS", "LAST OUTCOME", "DEAD-LETTERED", "REPLAYS")
    table = [
        (
            str(r["event_id"]),
            r.get("function") or f"? ({r.get('subscription')})",
            _cut(r.get("event_type"), 40),
            r.get("reason") or "-",
            str(r.get("delivery_attempts") if r.get("delivery_attempts") is not None else "-"),
            (r.get("last_delivery_outcome") or "-")
            + (f" ({r['last_http_status_code']})" if r.get("last_http_status_code") else ""),
            _when(r.get("dead_lettered_time")),
            str(r.get("replay_count", 0)),
        )
        for r in rows
    ]
    return "\n".join([*_table(headers, table), f"{len(rows)} Event Grid dead letter(s)"])


def format_list(rows: list[dict[str, Any]], queue: str | None) -> str:
    """The ``list`` table."""
    if rows and rows[0].get("source") == EVENTGRID:
        return format_eventgrid_list(rows, queue)
    if not rows:
        return f"no dead letters in queue {queue}" if queue else "no dead letters"
    headers = (
        "MESSAGE ID",
        "QUEUE",
        "REASON",
        "DESCRIPTION",
        "ENQUEUED",
        "DEAD-LETTERED",
        "DELIVERIES",
        "CORRELATION ID",
        "REPLAYS",
    )
    table = [
        (
            str(r["message_id"]),
            str(r["queue"]),
            r.get("reason") or "-",
            _cut(r.get("description"), 40),
            _when(r.get("enqueued_time")),
            _when(r.get("dead_lettered_time")),
            str(r.get("delivery_count", "")),
            r.get("correlation_id") or "-",
            str(r.get("replay_count", 0)),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in (headers, *table)]
    lines.append(f"{len(rows)} dead letter(s)")
    return "\n".join(lines)


def format_detail(d: dict[str, Any]) -> str:
    """The ``show`` view."""
    if d.get("source") == EVENTGRID:
        names = [k for k in d if k not in ("source", "event")]
        lines = [f"{k.replace('_', ' ')}: {d[k] if d[k] is not None else '-'}" for k in names]
        return "\n".join([*lines, "event (as it is replayed):", json.dumps(d.get("event"), indent=2)])
    fields = (
        "message_id",
        "queue",
        "sequence_number",
        "reason",
        "description",
        "enqueued_time",
        "dead_lettered_time",
        "delivery_count",
        "correlation_id",
        "session_id",
        "subject",
        "content_type",
        "replay_count",
        "original_message_id",
    )
    lines = [f"{name.replace('_', ' ')}: {d.get(name) if d.get(name) is not None else '-'}" for name in fields]
    lines.append("application properties:")
    properties = d.get("application_properties") or {}
    lines += [f"  {key}: {value}" for key, value in properties.items()] or ["  (none)"]
    body = d.get("body", "")
    if d.get("body_encoding") == "utf-8":
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), indent=2)
    lines.append(f"body ({d.get('body_encoding', 'utf-8')}):")
    lines.append(body)
    return "\n".join(lines)


_VERBS = {
    "replayed": "replayed",
    "would_replay": "would replay",
    "purged": "purged",
    "would_purge": "would purge",
    "skipped": "skipped",
    "failed": "FAILED",
}


def format_report(answer: dict[str, Any], operation: str) -> str:
    """One line per dead letter, then the totals."""
    lines = []
    for o in answer["outcomes"]:
        if o.get("source") == EVENTGRID:
            line = f"{_VERBS.get(o['status'], o['status'])}: {o.get('function') or o['subscription']} {o['event_id']}"
            if o.get("replay_count") is not None and o["status"] in ("replayed", "would_replay"):
                line += f" (replay {o['replay_count']})"
        else:
            line = f"{_VERBS.get(o['status'], o['status'])}: {o['queue']} {o['message_id']}"
        if o.get("new_message_id"):
            line += f" -> {o['new_message_id']} (replay {o['replay_count']})"
        if o.get("detail"):
            line += f": {o['detail']}"
        lines.append(line)
    counts = answer.get("counts", {})
    if not lines:
        lines.append(f"nothing to {operation}")
    totals = ", ".join(f"{_VERBS.get(k, k)} {v}" for k, v in sorted(counts.items())) or "none"
    suffix = " (dry run: nothing moved)" if answer.get("dry_run") else ""
    lines.append(f"{operation}: {totals}{suffix}")
    return "\n".join(lines)
