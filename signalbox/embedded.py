"""The embedded default, whole: a local MLflow server (webhooks on), the local host, a watched landing zone."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signalbox.localhost.server import HostSettings, LocalHost

log = logging.getLogger("signalbox.embedded")

SECRET_NAMES = (
    "SIGNALBOX_MLFLOW_WEBHOOK_SECRET",
    "SIGNALBOX_GITHUB_WEBHOOK_SECRET",
    "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET",
)


def webhook_secrets(state_dir: Path) -> dict[str, str]:
    """The webhook secrets of this state dir, generated once (0600); environment variables win."""
    path = state_dir / "webhook-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    missing = [name for name in SECRET_NAMES if name not in stored]
    if missing:
        stored.update({name: secrets.token_urlsafe(32) for name in missing})
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(stored, handle, indent=2)
    return {name: os.environ.get(name) or stored[name] for name in SECRET_NAMES}


@dataclass
class LandingWatcher:
    """Watches the local landing folder and delivers BlobCreated, as a Storage system topic would."""

    root: Path
    host: LocalHost
    interval: float = 0.5
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Watch in a background thread; files already there count as delivered."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._seen = {p: self._signature(p) for p in self.root.rglob("*") if p.is_file()}
        threading.Thread(target=self._run, name="landing-watcher", daemon=True).start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    @staticmethod
    def _signature(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _run(self) -> None:
        from signalbox.client import ClientError, blob_created_event, deliver_event_grid

        pending: dict[Path, tuple[int, int]] = {}
        while not self._stop.wait(self.interval):
            for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
                try:
                    signature = self._signature(path)
                except OSError:
                    continue
                if self._seen.get(path) == signature:
                    continue
                # Deliver once the file stopped changing between two looks (a copy in progress).
                if pending.get(path) != signature:
                    pending[path] = signature
                    continue
                relative = path.relative_to(self.root)
                container, blob_path = relative.parts[0], "/".join(relative.parts[1:])
                if not blob_path:
                    continue
                try:
                    deliver_event_grid(
                        self.host.base_url,
                        self.host.settings.state_dir,
                        "landing_events",
                        [blob_created_event(path, container, blob_path)],
                    )
                except ClientError as exc:
                    log.warning("BlobCreated for %s not accepted (will retry): %s", relative, exc)
                    continue
                self._seen[path] = signature
                pending.pop(path, None)


@dataclass
class Embedded:
    """A running embedded default."""

    mlflow: Any
    host: LocalHost
    watcher: LandingWatcher

    @property
    def landing_dir(self) -> Path:
        """Drop files under ``landing/<container>/<path>`` to land them."""
        return self.watcher.root

    def stop(self) -> None:
        """Stop the watcher, the host (finishing running work), the endpoints and the MLflow server."""
        self.watcher.stop()
        self.host.stop()
        stop_endpoints(self.host.settings.state_dir)
        self.mlflow.stop()


def stop_endpoints(state_dir: Path) -> None:
    """Stop every local scoring server recorded in the state dir."""
    from shared.adapters.local.serving import LocalServing
    from shared.ports import Deployment

    serving = LocalServing(state_dir, "", "")
    for slot_file in sorted((state_dir / "endpoints").glob("*/*.json")):
        if slot_file.name == "route.json":
            continue
        try:
            raw = json.loads(slot_file.read_text(encoding="utf-8"))
            serving.stop(
                Deployment(
                    endpoint=slot_file.parent.name,
                    model_name=raw["model_name"],
                    version=str(raw["version"]),
                    slot=raw["slot"],
                    url=raw["url"],
                )
            )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not stop the scoring server of %s: %s", slot_file, exc)


def start_embedded(settings: HostSettings) -> Embedded:
    """Start MLflow, the host and the landing watcher, wired together through settings.

    Call it on the thread that stays until the end: the MLflow server is bound to that thread's life.
    """
    from shared.adapters.local.serving import recover_endpoints
    from signalbox.mlflow_server import MlflowServer, ensure_model_version_webhook

    state = settings.state_dir.resolve()
    settings.state_dir = state
    secrets_now = webhook_secrets(state)
    os.environ.update(secrets_now)
    os.environ.setdefault("SIGNALBOX_CATALOGUE", str((settings.script_root / "catalogue.toml").resolve()))
    # Ended with this process even on kill -9; a server a killed host left anyway is stopped by start().
    mlflow = MlflowServer(state, die_with_parent=True)
    mlflow.start()
    try:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.url
        # Before the host takes work: a killed host's routed servers keep serving, its cut-short ones stop.
        recover_endpoints(state)
        host = LocalHost(settings)
        os.environ["SIGNALBOX_HOST_URL"] = host.base_url
        host.start()
    except BaseException:
        mlflow.stop()
        raise
    ensure_model_version_webhook(
        mlflow.url, "signalbox", f"{host.base_url}/api/webhooks/mlflow", secrets_now["SIGNALBOX_MLFLOW_WEBHOOK_SECRET"]
    )
    watcher = LandingWatcher(state / "landing", host)
    watcher.start()
    return Embedded(mlflow=mlflow, host=host, watcher=watcher)


def run_embedded(settings: HostSettings, out: Any) -> int:
    """``signalbox host --with-mlflow``: the whole embedded default in the foreground."""
    import signal

    from signalbox.localhost.server import configure_logging

    configure_logging(stream=out)
    stopping = threading.Event()
    # Installed before anything starts, so a SIGTERM during start-up still stops MLflow too.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    embedded = start_embedded(settings)
    embedded.host.print_banner(out)
    print(f"MLflow server and UI: {embedded.mlflow.url} (registry webhook -> /api/webhooks/mlflow)", file=out)
    print(f"Landing zone: drop files under {embedded.landing_dir}/<container>/<path>", file=out)
    out.flush()
    stopping.wait()
    embedded.stop()
    return 0
