"""The functions ``function_app`` registers, read in a fresh interpreter.

``FunctionApp.get_functions()`` may run only once per app object (a second call raises ValueError),
and the host and other tests index the app too, so tests read the registrations from a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from typing import Any

from tests.hosting import REPO

_LIST_FUNCTIONS = """
import json, azure.functions as func, function_app
levels = {func.AuthLevel.ANONYMOUS: "anonymous", func.AuthLevel.FUNCTION: "function", func.AuthLevel.ADMIN: "admin"}
out = []
for f in function_app.app.get_functions():
    t = f.get_trigger()
    level = getattr(t, "auth_level", None)
    out.append({
        "name": f.get_function_name(),
        "trigger": t.get_dict_repr()["type"],
        "route": getattr(t, "route", None),
        "methods": sorted(str(getattr(m, "value", m)) for m in (getattr(t, "methods", None) or [])),
        "auth": None if level is None else levels[level],
    })
print(json.dumps(out))
"""


@cache
def registered_functions() -> tuple[dict[str, Any], ...]:
    """Name, trigger type, route, methods and auth level (``anonymous``/``function``/``admin``) of each function."""
    done = subprocess.run(
        [sys.executable, "-c", _LIST_FUNCTIONS], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return tuple(json.loads(done.stdout))
