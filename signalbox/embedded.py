"""The embedded default, whole: a local MLflow server (webhooks on), the local host, a watched landing zone."""

from __future__ import annotations

import contextlib
import importlib
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
    """Watches the local landing folder and delivers BlobCreated, as a Storage system topic would.

    What it announced is kept in ``announced`` (``landing-announced.jsonl`` beside the folder: one
    line per delivery, path and ETag), so a file dropped while the host was down, or dropped and
    not yet announced when the host was killed, is announced after the restart. A repeat is
    harmless: the event's cause is the file's name and ETag (``land_blob``), so duplicate detection
    keeps one training. The first start of a state dir with no record takes every file already
    there as announced (data from before Signalbox watched is not trained by surprise).
    """

    root: Path
    host: LocalHost
    interval: float = 0.5
    announced: Path | None = None  # default: ``landing-announced.jsonl`` next to ``root``
    _seen: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    # Event Grid's retry policy (signalbox.client.delivery_policy); a delivery that exhausts it is
    # dead-lettered to STATE_DIR/eventgrid-deadletters/landing_events/ and counted as announced.
    _retries: Any = None

    def start(self) -> None:
        """Read what was announced before (or take what is there as announced) and watch in a background thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = self.record
        if record.exists():
            self._seen = self._read(record)
            log.info("landing watcher: %d files announced before; announcing what changed since", len(self._seen))
        else:
            self._seen = {}
            for path in self.root.rglob("*"):
                with contextlib.suppress(OSError):
                    if path.is_file():
                        self._seen[self._name(path)] = self._signature(path)
        self._compact(record)
        threading.Thread(target=self._run, name="landing-watcher", daemon=True).start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    @property
    def record(self) -> Path:
        """Where the announcements are kept."""
        return self.announced or self.root.parent / "landing-announced.jsonl"

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    @staticmethod
    def _signature(path: Path) -> str:
        from shared.adapters.local.landing import file_etag

        return file_etag(path.stat())

    @staticmethod
    def _read(record: Path) -> dict[str, str]:
        seen: dict[str, str] = {}
        with record.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    seen[str(entry["path"])] = str(entry["etag"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that file is announced again
        return seen

    def _compact(self, record: Path) -> None:
        """Rewrite the record with the files still there (it only grows while the host runs)."""
        kept = {name: etag for name, etag in self._seen.items() if (self.root / name).is_file()}
        temporary = record.with_name(record.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for name, etag in kept.items():
                handle.write(json.dumps({"path": name, "etag": etag}) + "\n")
        os.replace(temporary, record)
        self._seen = kept

    def _remember(self, name: str, etag: str) -> None:
        self._seen[name] = etag
        # Appended after the delivery: a kill between the two announces the file again (harmless), never not at all.
        with self.record.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"path": name, "etag": etag}) + "\n")

    def _run(self) -> None:
        from shared.adapters.local.eventgrid_deadletters import Retries
        from signalbox.client import ClientError, blob_created_event, deliver_event_grid, delivery_policy

        self._retries = self._retries or Retries(delivery_policy())
        pending: dict[str, str] = {}
        while not self._stop.wait(self.interval):
            for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
                name = self._name(path)
                try:
                    signature = self._signature(path)
                except OSError:
                    continue
                if self._seen.get(name) == signature:
                    continue
                # Deliver once the file stopped changing between two looks (a copy in progress).
                if pending.get(name) != signature:
                    pending[name] = signature
                    continue
                container, _, blob_path = name.partition("/")
                attempt = f"{name}@{signature}"  # a new write of the file starts its retries afresh
                if not blob_path or not self._retries.due(attempt):
                    continue
                try:
                    event = blob_created_event(path, container, blob_path)
                    deliver_event_grid(self.host.base_url, self.host.settings.state_dir, "landing_events", [event])
                except OSError as exc:  # gone or changed since the last look: seen again next time
                    log.info("BlobCreated for %s not sent: %s", name, exc)
                    continue
                except ClientError as exc:
                    reason = self._retries.failed(attempt, exc.status)
                    if reason is None:
                        log.warning("BlobCreated for %s not accepted (will retry): %s", name, exc)
                        continue
                    state = self.host.settings.state_dir
                    dead = self._retries.dead_letter(attempt, reason, state, "landing_events", [event])
                    log.error("BlobCreated for %s not accepted (%s), dead-lettered (%s): %s", name, exc, reason, dead)
                self._retries.forget(attempt)
                self._remember(name, str(event["data"]["eTag"]).strip('"'))
                pending.pop(name, None)


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
        # Imported here, before the pumps start: after a crash work is waiting at once, and a first import
        # of mlflow (and requests) racing between this thread and a handler's fails as partially initialised.
        importlib.import_module("mlflow")
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
