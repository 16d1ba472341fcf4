"""Discover a FunctionApp's functions and bindings, and call them as the Python worker does."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from signalbox.localhost.config import HostConfigError

HTTP = "httpTrigger"
EVENT_GRID = "eventGridTrigger"
SERVICE_BUS = "serviceBusTrigger"
TIMER = "timerTrigger"
SUPPORTED_TRIGGERS = (HTTP, EVENT_GRID, SERVICE_BUS, TIMER)


def _plain(value: Any) -> Any:
    """Binding values as function.json writes them (enums by value)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    enum_value = getattr(value, "value", None)
    return enum_value if enum_value is not None and not isinstance(value, str | int | bool) else value


@dataclass(frozen=True)
class RouteTemplate:
    """An HTTP trigger route like ``approvals/{model}/{version:int}`` as a matcher."""

    template: str
    pattern: re.Pattern[str]
    int_params: frozenset[str]

    @classmethod
    def compile(cls, template: str) -> RouteTemplate:
        """Compile ``{name}``, ``{name:int}``, ``{name?}`` and ``{*rest}`` segments."""
        regex = ""
        ints: set[str] = set()
        for segment in template.strip("/").split("/"):
            match = re.fullmatch(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?(\?)?\}", segment)
            if not match:
                regex += "/" + re.escape(segment)
                continue
            catch_all, name, constraint, optional = match.groups()
            if constraint == "int":
                ints.add(name)
            body = r".+" if catch_all else (r"-?\d+" if constraint == "int" else r"[^/]+")
            part = f"/(?P<{name}>{body})"
            regex += f"(?:{part})?" if optional or catch_all else part
        return cls(
            template=template, pattern=re.compile("^" + regex + "/?$", re.IGNORECASE), int_params=frozenset(ints)
        )

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters when ``path`` (without the route prefix) matches."""
        found = self.pattern.match("/" + path.strip("/") if path.strip("/") else "")
        if not found:
            return None
        # The Functions host hands route parameters to the function percent-decoded.
        return {k: unquote(v) for k, v in found.groupdict().items() if v is not None}


@dataclass
class HostedFunction:
    """One indexed function: its trigger binding and the user's Python function."""

    name: str
    trigger_type: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    user_function: Callable[..., Any]
    route: RouteTemplate | None = None
    methods: frozenset[str] = field(default_factory=frozenset)
    auth_level: str = "function"

    @property
    def trigger_arg(self) -> str:
        """The parameter name the trigger's input binds to."""
        return str(self.trigger["name"])

    def describe(self) -> dict[str, Any]:
        """The function as ``GET /admin/functions`` lists it."""
        out: dict[str, Any] = {"name": self.name, "trigger": self.trigger_type, "bindings": self.bindings}
        if self.route is not None:
            out["route"] = self.route.template
            out["methods"] = sorted(self.methods) or ["*"]
            out["authLevel"] = self.auth_level
        return out

    def call(self, **kwargs: Any) -> Any:
        """Invoke the user function; coroutine functions run to completion on this thread."""
        params = inspect.signature(self.user_function).parameters
        unknown = [name for name in params if name not in kwargs and params[name].default is inspect.Parameter.empty]
        if unknown:
            raise HostConfigError(f"function {self.name}: parameter(s) {unknown} have no binding")
        result = self.user_function(**{k: v for k, v in kwargs.items() if k in params})
        if inspect.iscoroutine(result):
            return asyncio.run(result)
        return result


def load_app(spec: str, script_root: Path) -> Any:
    """Import ``module:attribute`` (default ``function_app:app``) from the script root."""
    module_name, _, attribute = spec.partition(":")
    if str(script_root) not in sys.path:
        sys.path.insert(0, str(script_root))
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app", None)
    if app is None or not hasattr(app, "get_functions"):
        raise HostConfigError(f"{spec}: no FunctionApp named {attribute or 'app'!r} in module {module_name!r}")
    return app


def index_functions(app: Any, *, default_auth_level: str = "function") -> list[HostedFunction]:
    """Index the app once (``get_functions`` may be called only once per app)."""
    hosted: list[HostedFunction] = []
    for function in app.get_functions():
        name = function.get_function_name()
        bindings = [_plain(b.get_dict_repr()) for b in function.get_bindings()]
        trigger = _plain(function.get_trigger().get_dict_repr())
        trigger_type = trigger["type"]
        if trigger_type not in SUPPORTED_TRIGGERS:
            raise HostConfigError(
                f"function {name}: trigger {trigger_type!r} is not supported by the local host "
                f"(supported: {', '.join(SUPPORTED_TRIGGERS)})"
            )
        entry = HostedFunction(
            name=name,
            trigger_type=trigger_type,
            trigger=trigger,
            bindings=bindings,
            user_function=function.get_user_function(),
        )
        if trigger_type == HTTP:
            entry.route = RouteTemplate.compile(trigger.get("route") or name)
            entry.methods = frozenset(str(m).upper() for m in trigger.get("methods") or [])
            entry.auth_level = str(trigger.get("authLevel") or default_auth_level).lower()
        hosted.append(entry)
    names = [f.name for f in hosted]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise HostConfigError(f"function names must be unique; defined twice: {sorted(duplicated)}")
    return hosted
