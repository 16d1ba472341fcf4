"""The local host's stable endpoint URLs: ``/endpoints/<name>/invocations`` forwarded to the routed server.

The upstream is read from the endpoint's ``route.json`` on every request, so a blue/green
switch written by ``LocalServing.route`` takes effect on the next call without a restart.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from shared.adapters.local.serving import resolve_route

__all__ = ["proxy_invocation"]

_JSON = "application/json"
# The upstream is always a local scoring server; an environment proxy must not intercept it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": _JSON}, json.dumps({"error": message}).encode("utf-8")


def proxy_invocation(
    state_dir: Path,
    endpoint: str,
    body: bytes,
    content_type: str | None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """Forward one scoring POST to the endpoint's routed server; returns (status, headers, body).

    404 when the endpoint has no route, 502 when its server is unreachable, 504 when it does
    not answer within ``timeout``; the server's own answers (4xx included) pass through.
    """
    upstream = resolve_route(state_dir, endpoint)
    if upstream is None:
        return _error(404, f"endpoint {endpoint!r} has no deployment routed")
    request = urllib.request.Request(  # noqa: S310 - resolve_route only yields http(s) URLs
        f"{upstream}/invocations",
        data=body,
        headers={"Content-Type": content_type or _JSON},
        method="POST",
    )
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            status: int = response.status
            payload: bytes = response.read()
            upstream_type = response.headers.get("Content-Type")
    except urllib.error.HTTPError as exc:
        status, payload, upstream_type = exc.code, exc.read(), exc.headers.get("Content-Type")
    except TimeoutError:
        return _error(504, f"endpoint {endpoint!r}: upstream {upstream} did not answer within {timeout:g}s")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return _error(504, f"endpoint {endpoint!r}: upstream {upstream} did not answer within {timeout:g}s")
        return _error(502, f"endpoint {endpoint!r}: upstream {upstream} unreachable: {exc.reason}")
    except OSError as exc:
        return _error(502, f"endpoint {endpoint!r}: upstream {upstream} failed: {exc}")
    return status, {"Content-Type": upstream_type or _JSON}, payload
