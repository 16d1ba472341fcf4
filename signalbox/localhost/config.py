"""What the local host reads at start: host.json, local.settings.json and its keys."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{2}):(?P<seconds>\d{2}(?:\.\d+)?)$")


class HostConfigError(ValueError):
    """host.json, local.settings.json or a binding is not usable; the message says where."""


def parse_timespan(text: str, *, where: str) -> timedelta:
    """Parse a .NET TimeSpan as host.json writes it (``00:05:00``, ``1.00:00:00``)."""
    match = _TIMESPAN.match(str(text).strip())
    if not match:
        raise HostConfigError(f"{where}: {text!r} is not a TimeSpan like 00:05:00")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**parts)


@dataclass(frozen=True)
class ServiceBusOptions:
    """``extensions.serviceBus`` of host.json, with the Functions host's defaults."""

    max_concurrent_calls: int = 16
    max_concurrent_sessions: int = 8
    max_auto_lock_renewal: timedelta = timedelta(minutes=5)
    auto_complete_messages: bool = True


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host applies."""

    route_prefix: str = "api"
    service_bus: ServiceBusOptions = ServiceBusOptions()
    function_timeout: timedelta | None = None

    @classmethod
    def load(cls, path: Path) -> HostConfig:
        """Read host.json; a missing file gives the defaults, a bad one a clear error."""
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HostConfigError(f"{path}: not valid JSON: {exc}") from None
        if str(raw.get("version", "")) != "2.0":
            raise HostConfigError(f'{path}: version must be "2.0" (the Functions v4 host)')
        extensions: dict[str, Any] = raw.get("extensions") or {}
        http = extensions.get("http") or {}
        sb = extensions.get("serviceBus") or {}
        where = f"{path}: extensions.serviceBus"
        defaults = ServiceBusOptions()
        try:
            options = ServiceBusOptions(
                max_concurrent_calls=int(sb.get("maxConcurrentCalls", defaults.max_concurrent_calls)),
                max_concurrent_sessions=int(sb.get("maxConcurrentSessions", defaults.max_concurrent_sessions)),
                max_auto_lock_renewal=(
                    parse_timespan(sb["maxAutoLockRenewalDuration"], where=f"{where}.maxAutoLockRenewalDuration")
                    if "maxAutoLockRenewalDuration" in sb
                    else defaults.max_auto_lock_renewal
                ),
                auto_complete_messages=bool(sb.get("autoCompleteMessages", True)),
            )
        except (TypeError, ValueError) as exc:
            raise HostConfigError(f"{where}: {exc}") from None
        if options.max_concurrent_calls < 1 or options.max_concurrent_sessions < 1:
            raise HostConfigError(f"{where}: maxConcurrentCalls and maxConcurrentSessions must be at least 1")
        timeout = raw.get("functionTimeout")
        return cls(
            route_prefix=str(http.get("routePrefix", "api")).strip("/"),
            service_bus=options,
            function_timeout=parse_timespan(timeout, where=f"{path}: functionTimeout") if timeout else None,
        )


def load_local_settings(path: Path) -> dict[str, str]:
    """Read ``Values`` of local.settings.json, as Core Tools does (absent file: none)."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HostConfigError(f"{path}: not valid JSON: {exc}") from None
    values = raw.get("Values") or {}
    if not isinstance(values, dict):
        raise HostConfigError(f"{path}: Values must be an object of app settings")
    return {str(k): str(v) for k, v in values.items()}


_SETTING_REF = re.compile(r"%([^%]+)%")


def resolve_app_setting_refs(text: str, *, where: str, environ: dict[str, str] | None = None) -> str:
    """Resolve ``%NAME%`` binding expressions from app settings, as the host does."""
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise HostConfigError(f"{where}: app setting {name!r} referenced as %{name}% is not set")
        return env[name]

    return _SETTING_REF.sub(value, text)


@dataclass(frozen=True)
class HostKeys:
    """The host's access keys: master (admin), default function key, system keys."""

    master: str
    function_default: str
    event_grid: str

    @classmethod
    def load_or_create(cls, state_dir: Path) -> tuple[HostKeys, bool]:
        """Keys from ``host-keys.json`` in the state dir; created (0600) on first start."""
        path = state_dir / "host-keys.json"
        if path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            return (
                cls(
                    master=raw["masterKey"],
                    function_default=raw["functionKeys"]["default"],
                    event_grid=raw["systemKeys"]["eventgrid_extension"],
                ),
                False,
            )
        keys = cls(
            master=secrets.token_urlsafe(32),
            function_default=secrets.token_urlsafe(32),
            event_grid=secrets.token_urlsafe(32),
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "masterKey": keys.master,
            "functionKeys": {"default": keys.function_default},
            "systemKeys": {"eventgrid_extension": keys.event_grid},
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
        return keys, True

    def allows(self, level: str, given: str | None, *, system: bool = False) -> bool:
        """Whether ``given`` opens an endpoint of auth ``level`` (``system``: an extension webhook); constant time."""
        if level == "anonymous":
            return True
        if not given:
            return False
        accepted = [self.master]
        if system:
            # As in Azure: an extension's webhook takes its system key (or the master key), not a
            # function key, which approvers and job notifications hold.
            accepted.append(self.event_grid)
        elif level == "function":
            accepted.append(self.function_default)
        # Compare against every key so the time taken does not reveal which one matched.
        matches = [secrets.compare_digest(given.encode(), key.encode()) for key in accepted]
        return any(matches)


_KEY_IN_QUERY = re.compile(r"([?&]code=)[^&#\s]*", re.IGNORECASE)


def redact_keys(text: str) -> str:
    """``text`` with the value of every ``code=`` query parameter (a host key) replaced, for logs and errors."""
    return _KEY_IN_QUERY.sub(r"\1<redacted>", text)
