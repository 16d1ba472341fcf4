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
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the run's state here")
    return parser


def config_from(args: argparse.Namespace) -> ChaosConfig:
    """The run's configuration from parsed options."""
    if args.lifecycles < 1 or args.models < 1 or args.rate <= 0:
        raise SystemExit("--lifecycles, --models and --rate must be positive")
    if not 0 <= args.fault_rate < 1 or not 0 <= args.duplicate_rate <= 1 or not 0 <= args.poison_rate <= 1:
        raise SystemExit("--fault-rate must be in [0, 1), --duplicate-rate and --poison-rate in [0, 1]")
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
        state_dir=args.state_dir,
    )
