"""The ``signalbox`` command: run the local host, the demo, send events, read status, approve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from signalbox import dlq


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("SIGNALBOX_STATE_DIR", ".signalbox")),
        help="local state: queues, keys, MLflow store, landing zone (default .signalbox)",
    )


def _add_target(parser: argparse.ArgumentParser) -> None:
    _add_state(parser)
    parser.add_argument(
        "--host-url",
        default=os.environ.get("SIGNALBOX_HOST_URL", "http://127.0.0.1:7071"),
        help="the running local host (default http://127.0.0.1:7071)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="signalbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    host = commands.add_parser("host", help="run the function app on the local Functions host")
    host.add_argument("--port", type=int, default=7071)
    _add_state(host)
    host.add_argument("--no-auth", action="store_true", help="do not check keys (the Core Tools behaviour)")
    host.add_argument("--app", default="function_app:app", help="MODULE:ATTRIBUTE of the FunctionApp")
    host.add_argument("--script-root", type=Path, default=Path("."), help="folder with host.json and the app")
    host.add_argument("--functions", nargs="+", default=[], help="run only these functions")
    host.add_argument(
        "--request-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a client must send its request head within this (else the connection is dropped) "
        "and its whole body (else 408) (default 30)",
    )
    host.add_argument(
        "--with-mlflow",
        action="store_true",
        help="also start a local MLflow server (webhooks on) and register the host's webhook",
    )

    demo = commands.add_parser("demo", help="run the whole lifecycle on this machine, live")
    demo.add_argument("--state-dir", type=Path, default=None, help="default: a fresh temporary folder")
    demo.add_argument("--port", type=int, default=0, help="host port (default: a free one)")
    demo.add_argument("--keep", action="store_true", help="leave the host and servers running at the end")

    chaos = commands.add_parser(
        "chaos", help="the fault-injection run: many lifecycles while backends fail and the host is killed"
    )
    from signalbox.chaos.options import build_parser as chaos_options

    chaos_options(chaos)

    send = commands.add_parser("send", help="fire a well-formed event at a running host")
    kinds = send.add_subparsers(dest="kind", required=True)
    blob = kinds.add_parser("blob", help="land a file and deliver its BlobCreated event")
    blob.add_argument("file", type=Path)
    blob.add_argument("--path", help="blob path in the landing container (default iris/<file name>)")
    blob.add_argument("--container", default="landing")
    _add_target(blob)
    drift = kinds.add_parser("drift", help="deliver a drift-alert CloudEvent")
    drift.add_argument("model")
    drift.add_argument("--score", type=float, default=0.4)
    _add_target(drift)
    registered = kinds.add_parser("model-registered", help="deliver an Azure ML ModelRegistered event")
    registered.add_argument("model")
    registered.add_argument("version")
    _add_target(registered)
    github = kinds.add_parser("github", help="deliver a signed GitHub push webhook")
    github.add_argument("--branch", default="main")
    github.add_argument("--paths", default="src/model.py", help="comma-separated changed paths")
    github.add_argument("--repository", default="example/signalbox-models")
    github.add_argument("--sha", default=None)
    _add_target(github)

    status = commands.add_parser("status", help="a model's lifecycle (or all models and pending approvals)")
    status.add_argument("model", nargs="?", help="omit for every model and the approvals waiting")
    status.add_argument("--json", action="store_true")
    _add_target(status)

    dlq.add_parser(commands)

    reconcile = commands.add_parser(
        "reconcile", help="sweep the registry, launched runs and landing zone for what lost events left undone"
    )
    reconcile.add_argument("--model", action="append", help="this catalogue model only (repeatable; default: all)")
    reconcile.add_argument(
        "--sweep", action="append", choices=("registry", "runs", "landing"), help="this sweep only (repeatable)"
    )
    reconcile.add_argument("--dry-run", action="store_true", help="report what would be sent; send and move nothing")
    reconcile.add_argument("--json", action="store_true")
    _add_state(reconcile)

    for name in ("approve", "reject"):
        decide = commands.add_parser(name, help=f"{name} a version waiting for approval")
        decide.add_argument("model")
        decide.add_argument("version")
        decide.add_argument("--by", default=os.environ.get("USER", "cli"))
        decide.add_argument("--reason", help="why (recorded in the model's history)")
        _add_target(decide)

    rollback = commands.add_parser(
        "rollback", help="redeploy the previous production version (or --to VERSION, one that served before)"
    )
    rollback.add_argument("model")
    rollback.add_argument("--to", metavar="VERSION", help="the version to roll back to (default: the previous one)")
    rollback.add_argument("--by", required=True, help="who rolls back (recorded)")
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    _add_target(rollback)
    hold = commands.add_parser("hold", help="stop automatic deployment of a model until it is released")
    hold.add_argument("model")
    hold.add_argument("--by", required=True, help="who holds it (recorded)")
    hold.add_argument("--reason", required=True, help="why (recorded; shown to whoever tries to approve)")
    _add_target(hold)
    release = commands.add_parser("release", help="lift a hold; a staged winner that waited deploys")
    release.add_argument("model")
    release.add_argument("--by", required=True, help="who releases it (recorded)")
    release.add_argument("--reason", default=None, help="why (recorded)")
    _add_target(release)
    history = commands.add_parser("history", help="everything that happened to a model, newest first")
    history.add_argument("model")
    history.add_argument("--since", default=None, help="7d, 12h, 30m, 2w or an ISO 8601 time (default: all)")
    history.add_argument("--json", action="store_true")
    _add_target(history)
    return parser


def _reconcile(args: argparse.Namespace) -> int:
    """``signalbox reconcile``: the sweeps, run here over the state dir's registry, queues and landing zone.

    The commands it sends go to the local queues, where a running host (or the next one) takes them;
    ``local.settings.json`` in this folder supplies settings not in the environment, as for the host.
    """
    from shared.bootstrap import bootstrap
    from shared.errors import SignalboxError
    from shared.handlers.reconcile import SWEEPS, reconcile
    from signalbox.localhost.config import load_local_settings

    for name, value in load_local_settings(Path("local.settings.json")).items():
        os.environ.setdefault(name, value)
    os.environ["SIGNALBOX_STATE_DIR"] = str(args.state_dir.resolve())
    try:
        svc = bootstrap()
        models = args.model or list(svc.catalogue.models)
        reports = [reconcile(m, svc, sweeps=args.sweep or SWEEPS, dry_run=args.dry_run) for m in models]
    except SignalboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return 1 if any(r.failed for r in reports) else 0
    verb = "would send" if args.dry_run else "sent"
    for report in reports:
        detail = "; ".join(
            f"{sweep}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for sweep, counts in report.counts.items()
        )
        failed = "".join(f"; {sweep} FAILED: {why}" for sweep, why in report.failed.items())
        print(f"{report.model}: {verb} {report.sent} ({detail}{failed})")
    return 1 if any(r.failed for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``signalbox`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "dlq":
        return dlq.run(args)
    if args.command == "reconcile":
        return _reconcile(args)
    if args.command == "host":
        from signalbox.localhost.server import HostSettings, run_host

        settings = HostSettings(
            script_root=args.script_root,
            state_dir=args.state_dir,
            port=args.port,
            app_spec=args.app,
            auth=not args.no_auth,
            only=tuple(args.functions),
            request_timeout=args.request_timeout,
        )
        if args.with_mlflow:
            from signalbox.embedded import run_embedded

            return run_embedded(settings, sys.stdout)
        if (args.state_dir / "endpoints").is_dir():
            # Scoring servers a killed host left: adopt the routed ones, stop the ones cut short.
            from shared.adapters.local.serving import recover_endpoints

            recover_endpoints(args.state_dir)
        return run_host(settings, sys.stdout)
    if args.command == "demo":
        from signalbox.demo import run_demo

        return run_demo(state_dir=args.state_dir, port=args.port, keep=args.keep)
    if args.command == "chaos":
        from signalbox.chaos.options import config_from
        from signalbox.chaos.run import run_chaos

        return run_chaos(config_from(args))
    from signalbox import client

    try:
        if args.command == "send":
            result: Any = client.send(args)
        elif args.command == "status":
            result = client.status(args)
        elif args.command in ("rollback", "hold", "release"):
            result = client.operate(args)
        elif args.command == "history":
            result = client.history(args)
        else:
            result = client.decide(args, approve=args.command == "approve")
    except client.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
