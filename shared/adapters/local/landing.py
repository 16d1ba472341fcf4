"""The landing zone and lifecycle events of the embedded default: folders in the state dir."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit

from shared.ports import LandedFile


def local_path(uri: str) -> Path:
    """The file behind a ``file://`` URI or a plain path."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(unquote(parts.path))
    raise OSError(f"{uri} is not a local file (the local landing zone reads file:// URIs)")


def file_etag(stat: os.stat_result) -> str:
    """The local ETag of a file's content as ``stat`` sees it: a new write (or a file renamed in) changes it.

    The listing and the local BlobCreated events use this one function, so a landed file's event and
    a sweep name the same write alike.
    """
    return f"0x{stat.st_mtime_ns:X}-{stat.st_size:X}-{stat.st_ino:X}"


def _may_hold(folder: str, prefix: str) -> bool:
    """Whether a folder (``a/b/``) can hold a path that starts with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)


def oldest(files: Iterable[LandedFile], limit: int) -> list[LandedFile]:
    """The ``limit`` oldest files, plus those sharing the last one's time; memory stays near ``limit``."""
    if limit < 1:
        raise ValueError("limit must be at least 1")

    def key(landed: LandedFile) -> tuple[datetime, str]:
        return landed.last_modified, landed.path

    def trim(kept: list[LandedFile]) -> list[LandedFile]:
        kept.sort(key=key)
        if len(kept) <= limit:
            return kept
        last = kept[limit - 1].last_modified
        return [landed for landed in kept if landed.last_modified <= last]

    kept: list[LandedFile] = []
    for landed in files:
        kept.append(landed)
        if len(kept) >= 2 * limit + 1024:
            kept = trim(kept)
    return trim(kept)


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

    def list_since(self, container: str, prefix: str, after: datetime | None, limit: int) -> list[LandedFile]:
        """Files under ``root/container`` whose path starts with ``prefix``, newer than ``after``.

        Reads every file under the container (one ``stat`` each). Symlinks and anything resolving
        outside ``root`` are left out, as ``size`` would refuse them.
        """
        if self.root is None:
            raise ValueError("LocalLandingZone needs a root to list")
        if after is not None and after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        base = (self.root / container).resolve()
        if not base.is_relative_to(self.root) or base == self.root:
            raise OSError(f"container {container!r} is outside the landing zone {self.root}")
        if not base.is_dir():
            raise OSError(f"container {container!r} is not in the landing zone {self.root}")
        return oldest(self._files(base, container, prefix, after), limit)

    def _files(self, base: Path, container: str, prefix: str, after: datetime | None) -> Iterable[LandedFile]:
        for folder, dirs, names in os.walk(base):  # does not descend into symlinked folders
            here = Path(folder)
            relative_folder = here.relative_to(base).as_posix()
            relative_folder = "" if relative_folder == "." else relative_folder + "/"
            # Only folders that can still hold a path starting with the prefix are entered.
            dirs[:] = [d for d in dirs if _may_hold(relative_folder + d + "/", prefix)]
            for name in names:
                path = relative_folder + name
                file = here / name
                if not path.startswith(prefix) or file.is_symlink():
                    continue
                try:
                    stat = file.stat()
                except FileNotFoundError:  # removed since the walk saw it
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                if after is None or modified > after:
                    yield LandedFile(file.as_uri(), container, path, stat.st_size, modified, file_etag(stat))


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
