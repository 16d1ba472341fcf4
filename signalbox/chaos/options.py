"""The ``signalbox chaos`` options and configuration: light, so the CLI can list them without the run's imports."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChaosConfig:
    """What one run does; the defaults are the full run."""

    lifecycles: int = 1000
    models: int = 20
    fault_rate: float = 0.2
    duplicate_rate: float = 0.3
    poison_rate: float = 0.01  # lifecycles whose model fails every evaluation: they must end dead-lettered
    kills: int = 5
    rate: float = 8.0  # landed files per second
    deadline: float = 2400.0  # seconds for the whole run
    seed: int = 7
    job_seconds: float = 0.5
    stall_seconds: float = 4.0  # an injected timeout; the clients give up after CLIENT_TIMEOUT
    # Loss faults: what no retry brings back; only the reconciliation sweeps find it.
    event_loss_rate: float = 0.05  # BlobCreated events never delivered
    deadletter_rate: float = 0.03  # BlobCreated events that only reach Event Grid's dead-letter container
    webhook_loss_rate: float = 0.3  # MLflow model_version.created deliveries never sent
    manual_rate: float = 0.05  # per lifecycle: a version registered by hand too (no job, no poll: webhook or sweep)
    sweep_schedule: str = "0 * * * * *"  # SIGNALBOX_RECONCILE_SCHEDULE of the host (NCRONTAB)
    sweep_interval: float = 60.0  # seconds between sweeps that schedule makes (sweeps are one per minute at most)
    sweep_grace: float = 15.0  # SIGNALBOX_RECONCILE_GRACE_SECONDS of the host
    # Degrades of the platform (issue 13): runs it cannot place, config updates that take long.
    capacity_failure_rate: float = 0.05
    slow_update_rate: float = 0.2
    slow_update_seconds: float = 5.0
    state_dir: Path | None = None


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``signalbox chaos`` options."""
    parser = parser or argparse.ArgumentParser(prog="signalbox chaos", description=__doc__)
    defaults = ChaosConfig()
    parser.add_argument("--lifecycles", type=int, default=defaults.lifecycles)
    parser.add_argument("--models", type=int, default=defaults.models)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--duplicate-rate", type=float, default=defaults.duplicate_rate)
    parser.add_argument(
        "--poison-rate", type=float, default=defaults.poison_rate, help="share of lifecycles that must dead-letter"
    )
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="landed files per second")
    parser.add_argument("--deadline", type=float, default=defaults.deadline, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--event-loss-rate", type=float, default=defaults.event_loss_rate, help="share of BlobCreated never delivered"
    )
    parser.add_argument(
        "--deadletter-rate",
        type=float,
        default=defaults.deadletter_rate,
        help="share of BlobCreated delivered only to Event Grid's dead-letter container",
    )
    parser.add_argument(
        "--webhook-loss-rate",
        type=float,
        default=defaults.webhook_loss_rate,
        help="share of MLflow model_version.created webhooks never sent",
    )
    parser.add_argument(
        "--manual-rate",
        type=float,
        default=defaults.manual_rate,
        help="share of lifecycles that also register a version by hand (no job run to poll)",
    )
    parser.add_argument(
        "--sweep-schedule", default=defaults.sweep_schedule, help="the host's SIGNALBOX_RECONCILE_SCHEDULE (NCRONTAB)"
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=defaults.sweep_interval,
        help="seconds between two sweeps of that schedule (the latency bound; at least 60: one sweep per minute)",
    )
    parser.add_argument(
        "--sweep-grace", type=float, default=defaults.sweep_grace, help="the host's SIGNALBOX_RECONCILE_GRACE_SECONDS"
    )
    parser.add_argument(
        "--capacity-failure-rate",
        type=float,
        default=defaults.capacity_failure_rate,
        help="share of training runs the workspace cannot place (they must be relaunched)",
    )
    parser.add_argument(
        "--slow-update-rate",
        type=float,
        default=defaults.slow_update_rate,
        help="share of serving config updates that stay in progress --slow-update-seconds",
    )
    parser.add_argument("--slow-update-seconds", type=float, default=defaults.slow_update_seconds)
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the run's state here")
    return parser


def config_from(args: argparse.Namespace) -> ChaosConfig:
    """The run's configuration from parsed options."""
    if args.lifecycles < 1 or args.models < 1 or args.rate <= 0:
        raise SystemExit("--lifecycles, --models and --rate must be positive")
    if not 0 <= args.fault_rate < 1 or not 0 <= args.duplicate_rate <= 1 or not 0 <= args.poison_rate <= 1:
        raise SystemExit("--fault-rate must be in [0, 1), --duplicate-rate and --poison-rate in [0, 1]")
    shares = (args.event_loss_rate, args.deadletter_rate, args.webhook_loss_rate, args.manual_rate)
    if not all(0 <= r <= 1 for r in shares) or args.event_loss_rate + args.deadletter_rate > 1:
        raise SystemExit("the loss and manual rates must be in [0, 1], and --event-loss-rate + --deadletter-rate <= 1")
    if not 0 <= args.capacity_failure_rate <= 1 or not 0 <= args.slow_update_rate <= 1:
        raise SystemExit("--capacity-failure-rate and --slow-update-rate must be in [0, 1]")
    if args.sweep_interval < 60 or args.sweep_grace < 0 or args.slow_update_seconds < 0:
        raise SystemExit("--sweep-interval must be at least 60 (one sweep per model per minute), the others >= 0")
    return ChaosConfig(
        lifecycles=args.lifecycles,
        models=args.models,
        fault_rate=args.fault_rate,
        duplicate_rate=args.duplicate_rate,
        poison_rate=args.poison_rate,
        kills=args.kills,
        rate=args.rate,
        deadline=args.deadline,
        seed=args.seed,
        event_loss_rate=args.event_loss_rate,
        deadletter_rate=args.deadletter_rate,
        webhook_loss_rate=args.webhook_loss_rate,
        manual_rate=args.manual_rate,
        sweep_schedule=args.sweep_schedule,
        sweep_interval=args.sweep_interval,
        sweep_grace=args.sweep_grace,
        capacity_failure_rate=args.capacity_failure_rate,
        slow_update_rate=args.slow_update_rate,
        slow_update_seconds=args.slow_update_seconds,
        state_dir=args.state_dir,
    )
