"""Start a real ``signalbox host`` process for a benchmark and talk to it over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

from signalbox.localhost.process import HostProcess

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "catalogue.toml"
MODEL = "iris-classifier"  # a trained catalogue model; its landing prefix is iris/


class Host(HostProcess):
    """A running ``signalbox host`` process with its state dir."""

    @property
    def event_grid_url(self) -> str:
        """Where Event Grid posts, without the function name."""
        return f"{self.url}/runtime/webhooks/EventGrid"

    def log(self) -> str:
        """The host's output so far."""
        return self.output()


def start_host(state_dir: Path, functions: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Host:
    """Start ``signalbox host`` on a free port with the embedded defaults; return once it answers."""
    args = ("--functions", *functions) if functions else ()
    host = Host(state_dir, args=args, env={**os.environ, "SIGNALBOX_CATALOGUE": str(CATALOGUE), **(env or {})})
    host.start(timeout=60)
    return host
