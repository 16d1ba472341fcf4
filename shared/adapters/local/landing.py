"""The landing zone and lifecycle events of the embedded default: folders in the state dir."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit


def local_path(uri: str) -> Path:
    """The file behind a ``file://`` URI or a plain path."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(unquote(parts.path))
    raise OSError(f"{uri} is not a local file (the local landing zone reads file:// URIs)")


class LocalLandingZone:
    """Landed files are plain files under ``root``; their URIs are ``file://`` URIs."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root.resolve() if root is not None else None

    def size(self, uri: str) -> int:
        """Bytes in the file; ``OSError`` when it is missing, unreadable or outside ``root``."""
        path = local_path(uri)
        # Resolved (symlinks, "..") before the check, and the resolved path is what is opened, so no
        # event (nor a link swapped in after the check) can make us open a file elsewhere.
        real = path.resolve()
        if self.root is not None and not real.is_relative_to(self.root):
            raise OSError(f"{path} is outside the landing zone {self.root}")
        with real.open("rb") as handle:  # opening proves it is readable, not just present
            handle.read(1)
            return os.fstat(handle.fileno()).st_size


class LocalLifecycleEvents:
    """Appends Signalbox's lifecycle events as CloudEvents to ``events.jsonl``."""

    def __init__(self, path: Path, source: str = "/signalbox/local") -> None:
        self.path = path
        self.source = source
        self._lock = threading.Lock()
        self._handle: TextIO | None = None

    def publish(self, event_type: str, subject: str, data: Mapping[str, object]) -> None:
        """Append one event."""
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": self.source,
            "type": f"io.signalbox.{event_type}",
            "subject": subject,
            "time": datetime.now(UTC).isoformat(),
            "datacontenttype": "application/json",
            "data": dict(data),
        }
        line = json.dumps(event, default=str) + "\n"
        with self._lock:
            # Kept open: one open per event was a fifth of the ingress path. Append mode writes each
            # line at the end even with other processes appending too.
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()
