"""Small helpers for HTTP functions' answers."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func


def json_response(payload: Any, status: int = 200) -> func.HttpResponse:
    """A JSON answer."""
    return func.HttpResponse(json.dumps(payload, default=str), status_code=status, mimetype="application/json")


def problem(status: int, message: str) -> func.HttpResponse:
    """A clear error answer (never a traceback)."""
    return json_response({"error": message}, status)
