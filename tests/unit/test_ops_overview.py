"""The ops page's functions in process, over fakes: the overview JSON, the page and its headers, queue depths.

The page itself renders in a browser (tests/integration/test_ops_page.py); here: what the
functions answer, that the page carries no registry data and only ever writes text into the
DOM, and the queue-depth adapters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from functions import ops_page
from shared import domain, runtime
from shared.adapters.local.queues import LocalQueues, OutboundMessage
from shared.adapters.servicebus.access import ServiceBusAccess
from shared.queue_depths import LocalQueueDepths, ServiceBusQueueDepths
from shared.queues import QUEUES
from shared.services import Services
from signalbox.localhost.index import HostedFunction, index_functions
from tests.fakes import FakeRegistry, services

REPO = Path(__file__).resolve().parents[2]
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def functions() -> dict[str, HostedFunction]:
    """The ops page blueprint indexed as the local host indexes it (once per process)."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(ops_page.bp)
    return {f.name: f for f in index_functions(app, default_auth_level="function")}


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    wired = services(SIGNALBOX_STATE_DIR=str(tmp_path / "state"))
    wired.queue_depths = LocalQueueDepths(LocalQueues(wired.settings.state_dir / "queues.sqlite3"))
    runtime.override(wired)
    try:
        yield wired
    finally:
        runtime.override(None)


def _get(function: HostedFunction, url: str, **params: str) -> func.HttpResponse:
    request = func.HttpRequest(method="GET", url=url, params=params, body=b"")
    response = function.call(**{function.trigger_arg: request})
    assert isinstance(response, func.HttpResponse)
    return response


def _lifecycle(svc: Services) -> FakeRegistry:
    """v1 surpassed, v2 in production (champion), v3 staged and waiting for a person, v4 lost."""
    registry: FakeRegistry = svc.registry  # type: ignore[assignment]
    model = "iris-classifier"
    won = domain.record(won=True, reason="first version: no champion; accuracy=0.9000")
    registry.register(model, stage="surpassed", **{domain.DECISION: won})
    registry.register(
        model,
        stage="production",
        **{
            domain.DECISION: won,
            domain.DEPLOYMENT: domain.record(status="deployed", endpoint="iris", slot="green", at="2026-11-23"),
        },
    )
    registry.register(
        model,
        stage="staged",
        approval="pending",
        **{
            domain.DECISION: domain.record(won=True, reason=EVIL),
            domain.REPOSITORY: EVIL,
            domain.ENVIRONMENT: "dev",
        },
    )
    registry.register(model, **{domain.DECISION: domain.record(won=False, reason="guardrail f1_macro broke")})
    registry.set_alias(model, domain.CHAMPION, "2")
    registry.set_alias(model, domain.CHALLENGER, "3")
    return registry


def test_the_functions_need_the_admin_key(functions: dict[str, HostedFunction]) -> None:
    assert {name: (f.route.template if f.route else None, f.auth_level) for name, f in functions.items()} == {
        "ops_page": ("ops", "admin"),
        "ops_overview": ("ops/overview", "admin"),
    }
    assert all(f.methods == {"GET"} for f in functions.values())


def test_overview_is_the_lifecycle_overview_plus_queue_depths(
    functions: dict[str, HostedFunction], svc: Services
) -> None:
    _lifecycle(svc)
    queues = LocalQueues(svc.settings.state_dir / "queues.sqlite3")
    queues.send("train", OutboundMessage(body="{}", message_id="t1"))
    queues.send("train", OutboundMessage(body="{}", message_id="t2"))
    later = datetime.now(UTC) + timedelta(hours=1)
    queues.send("poll-run", OutboundMessage(body="{}", message_id="p1", scheduled_enqueue_time=later))
    queues.send("evaluate", OutboundMessage(body="{}", message_id="e1"))
    queues.send("evaluate", OutboundMessage(body="{}", message_id="e2"))
    first, second = queues.receive("evaluate", max_messages=2)
    queues.dead_letter("evaluate", first.lock_token, reason="test", description="bad body")

    response = _get(functions["ops_overview"], "http://localhost/api/ops/overview")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    payload = json.loads(response.get_body())

    from shared.lifecycle import overview

    expected = json.loads(json.dumps(overview(svc), default=str))
    assert {k: v for k, v in payload.items() if k != "queues"} == expected
    assert set(payload["queues"]) == set(QUEUES)
    zero = {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0}
    assert payload["queues"]["train"] == {**zero, "active": 2}
    assert payload["queues"]["poll-run"] == {**zero, "scheduled": 1}
    assert payload["queues"]["evaluate"] == {**zero, "locked": 1, "dead_letter": 1}
    assert payload["queues"]["deploy"] == zero

    iris = next(m for m in payload["models"] if m["model"] == "iris-classifier")
    assert [(v["version"], v["stage"]) for v in iris["versions"]] == [
        ("1", "surpassed"),
        ("2", "production"),
        ("3", "staged"),
        ("4", None),
    ]
    assert iris["champion"] == "2" and iris["challenger"] == "3"
    assert payload["pending_approvals"] == [
        {"model": "iris-classifier", "version": "3", "environment": "dev", "reason": EVIL, "created_at": None}
    ]
    # Registry strings travel as JSON data, unchanged: the page escapes them when it renders them.
    assert iris["versions"][2]["repository"] == EVIL
    assert second.lock_token  # still locked: counted as locked, not active


def test_overview_still_answers_when_the_queue_depths_cannot_be_read(
    functions: dict[str, HostedFunction], svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def depths(self) -> dict[str, dict[str, int]]:
            raise PermissionError("the identity may not read the namespace")

    monkeypatch.setattr(svc, "queue_depths", Broken())
    payload = json.loads(_get(functions["ops_overview"], "http://localhost/api/ops/overview").get_body())
    assert payload["queues"] == {}
    assert "PermissionError: the identity may not read the namespace" in payload["queues_error"]
    assert len(payload["models"]) == len(svc.catalogue.models)


def test_the_page_carries_no_data_and_only_its_own_nonced_script(functions: dict[str, HostedFunction]) -> None:
    first = _get(functions["ops_page"], "http://localhost/api/ops", code="k")
    second = _get(functions["ops_page"], "http://localhost/api/ops", code="k")
    assert first.status_code == 200
    assert first.mimetype == "text/html"
    html = first.get_body().decode()
    policy = first.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", policy)
    assert nonce, policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert re.findall(r"<script[^>]*>", html) == [f'<script nonce="{nonce.group(1)}">']
    assert re.findall(r"<style[^>]*>", html) == [f'<style nonce="{nonce.group(1)}">']
    assert nonce.group(1) not in second.headers["Content-Security-Policy"], "a fresh nonce per response"
    assert first.headers["Referrer-Policy"] == "no-referrer"  # the URL carries the admin key
    assert first.headers["Cache-Control"] == "no-store"
    assert 'data-refresh="5"' in html
    # Self-contained: nothing loaded from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    # The script writes registry strings as text only: no HTML parsing sink anywhere.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html, sink


@pytest.mark.parametrize(("raw", "status"), [("2", 200), ("300", 200), ("0", 400), ("301", 400), ("soon", 400)])
def test_refresh_period_is_checked(functions: dict[str, HostedFunction], raw: str, status: int) -> None:
    response = _get(functions["ops_page"], "http://localhost/api/ops", refresh=raw)
    assert response.status_code == status
    if status == 400:
        assert "refresh must be a whole number of seconds from 1 to 300" in json.loads(response.get_body())["error"]
    else:
        assert f'data-refresh="{raw}"' in response.get_body().decode()


def test_render_page_refuses_a_nonce_that_could_break_out() -> None:
    with pytest.raises(ValueError):
        ops_page.render_page(nonce='x"><script>', refresh_seconds=5)


# -- the queue-depth adapters ----------------------------------------------------------------------


def test_local_queue_depths_count_every_queue(tmp_path: Path) -> None:
    depths = LocalQueueDepths(LocalQueues(tmp_path / "queues.sqlite3")).depths()
    assert list(depths) == list(QUEUES)
    assert all(counts == {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0} for counts in depths.values())


def test_service_bus_queue_depths_read_the_runtime_properties() -> None:
    asked: list[str] = []

    class Admin:
        def get_queue_runtime_properties(self, name: str) -> Any:
            asked.append(name)
            return SimpleNamespace(
                active_message_count=3, scheduled_message_count=1, dead_letter_message_count=2, total_message_count=6
            )

    access = ServiceBusAccess(fully_qualified_namespace="sb-x.servicebus.windows.net")
    depths = ServiceBusQueueDepths(access, client=Admin(), names=["train", "deploy"]).depths()
    assert asked == ["train", "deploy"]
    assert depths == {q: {"active": 3, "scheduled": 1, "locked": 0, "dead_letter": 2} for q in ("train", "deploy")}


def test_service_bus_queue_depths_build_the_admin_client_from_the_access() -> None:
    from azure.servicebus.management import ServiceBusAdministrationClient

    access = ServiceBusAccess(connection_string="Endpoint=sb://127.0.0.1/;SharedAccessKeyName=m;SharedAccessKey=k")
    depths = ServiceBusQueueDepths(access)
    client = depths._admin_client()
    assert isinstance(client, ServiceBusAdministrationClient)
    assert client.fully_qualified_namespace == "127.0.0.1"
    assert depths._admin_client() is client  # built once
    client.close()


def test_the_test_app_composes_every_blueprint_once_and_indexes_light() -> None:
    """What the end-to-end test's host imports, indexed in a fresh process as the host does: no heavy SDK."""
    script = (
        "import sys\n"
        "from signalbox.localhost.index import index_functions\n"
        "from tests.apps.ops_page_app import app\n"
        "routes = sorted(f.name + ':' + f.auth_level for f in index_functions(app) if f.route)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sklearn', 'pandas', 'pydantic')\n"
        "               or m.startswith(('azure.servicebus', 'azure.identity', 'shared.queue_depths')))\n"
        "print(' '.join(routes)); print(heavy)\n"
    )
    routes, heavy = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert {"ops_page:admin", "ops_overview:admin", "approval:function", "status_overview:function"} <= set(
        routes.split()
    )
    assert heavy == "[]"


# -- the page file: package data, in the function app and in the wheel ---------------------------------------


PAGE = REPO / "functions" / "ops_page.html"


def test_the_page_is_read_through_importlib_resources() -> None:
    template = ops_page.page_template()
    assert template == PAGE.read_text(encoding="utf-8")
    assert template.startswith("<!doctype html>") and template.rstrip().endswith("</html>")
    assert template.count("__NONCE__") == 2 and template.count("__REFRESH__") == 1
    html = ops_page.render_page(nonce="n0nce", refresh_seconds=7)
    assert "__NONCE__" not in html and "__REFRESH__" not in html
    assert '<script nonce="n0nce">' in html and '<style nonce="n0nce">' in html and 'data-refresh="7"' in html


def test_the_function_app_deployment_keeps_the_page() -> None:
    """``func azure functionapp publish`` leaves out what ``.funcignore`` matches (gitignore syntax)."""
    pathspec = pytest.importorskip("pathspec")
    ignored = pathspec.GitIgnoreSpec.from_lines((REPO / ".funcignore").read_text().splitlines())
    assert not ignored.match_file("functions/ops_page.html")
    assert not ignored.match_file("functions/ops_page.py")
    assert ignored.match_file("tests/unit/test_ops_overview.py")  # the matcher does match what is ignored


def test_the_wheel_ships_the_page_and_it_loads_from_the_wheel(tmp_path: Path) -> None:
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    [wheel] = tmp_path.glob("signalbox-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("functions/ops_page.html") == PAGE.read_bytes()
    # Imported from the zipped wheel (first on sys.path), not from the checkout: importlib.resources reads the zip.
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(wheel)!r})\n"
        "from functions import ops_page\n"
        "print(ops_page.__file__)\n"
        "sys.stdout.write(ops_page.page_template())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    where, page = out.split("\n", 1)
    assert where.startswith(str(wheel))
    assert page == PAGE.read_text(encoding="utf-8")


# -- the page's requests: each one a function of the app answers, with fields it accepts -------------------


# (method, route template in function_app, what the page's script says to call it, the body's fields or None)
PAGE_CALLS = [
    ("GET", "ops/overview", 'call("GET", "ops/overview")', None),
    ("GET", "history/{model}", 'call("GET", "history/" + pathOf(name) + "?since=" + HISTORY_SINCE)', None),
    ("GET", "ops/deadletters", 'call("GET", "ops/deadletters?source=" + source + "&limit=200")', None),
    (
        "GET",
        "ops/deadletters/{message_id}",
        'call("GET", "ops/deadletters/" + pathOf(d.message_id) + "?source="',
        None,
    ),
    (
        "POST",
        "approvals/{model}/{version:int}/{decision}",
        'call("POST", "approvals/" + pathOf(model, version, decision), {by: by, reason: reason})',
        {"by", "reason"},
    ),
    (
        "POST",
        "models/{model}/rollback",
        'call("POST", "models/" + pathOf(name) + "/rollback", {to: to, by: by, reason: reason, request_id: rid})',
        {"to", "by", "reason", "request_id"},
    ),
    ("POST", "models/{model}/hold", 'call("POST", "models/" + pathOf(name) + "/" + verb, body)', None),
    ("POST", "models/{model}/release", 'call("POST", "models/" + pathOf(name) + "/" + verb, body)', None),
    (
        "POST",
        "ops/deadletters/replay",
        'call("POST", "ops/deadletters/replay", selector(d, {dry_run: true}))',
        {"source", "queue", "message_id", "dry_run"},
    ),
    (
        "POST",
        "ops/deadletters/replay",
        'call("POST", "ops/deadletters/replay", selector(d, {by: by, reason: reason}))',
        {"source", "queue", "message_id", "by", "reason"},
    ),
    (
        "POST",
        "ops/deadletters/purge",
        'call("POST", "ops/deadletters/purge", selector(d, {dry_run: true}))',
        {"source", "queue", "message_id", "dry_run"},
    ),
    (
        "POST",
        "ops/deadletters/purge",
        'call("POST", "ops/deadletters/purge", selector(d, {confirm: input.value.trim(), by: by, reason: reason}))',
        {"source", "queue", "message_id", "confirm", "by", "reason"},
    ),
]


def test_every_request_the_page_sends_is_a_route_of_the_function_app_with_fields_it_accepts() -> None:
    import function_app
    from functions import operator
    from shared.deadletters import FILTER_FIELDS, eventgrid

    routes = {
        (method, f.route.template)
        for f in index_functions(function_app.app, default_auth_level="function")
        if f.route
        for method in f.methods
    }
    page = ops_page.page_template()
    # A dead letter's body must suit both sources: the queues' functions drop "source" before their filters,
    # Event Grid's take "queue" and "message_id" as its function and event id.
    queues = set(FILTER_FIELDS) | {"source"}
    grid = set(eventgrid.FILTER_FIELDS)
    accepted = {
        "models/{model}/rollback": operator._FIELDS["rollback"],
        # by/reason are taken before either source's filters (functions/operations.py ``_operator``).
        "ops/deadletters/replay": (queues | {"dry_run", "max_replays"}) & (grid | {"dry_run", "max_replays"})
        | {"by", "reason"},
        "ops/deadletters/purge": (queues | {"dry_run", "confirm"}) & (grid | {"dry_run", "confirm"}) | {"by", "reason"},
        "approvals/{model}/{version:int}/{decision}": {
            "by",
            "reason",
        },  # both recorded (who decided, and why in the history)
    }
    for method, template, snippet, fields in PAGE_CALLS:
        assert snippet in page, f"the page no longer sends {snippet}"
        assert (method, template) in routes, f"no {method} {template} in function_app"
        if fields is not None:
            assert fields <= accepted[template], (template, fields - accepted[template])
    # Hold and release share one body, built once; every dead letter's selector too.
    assert "var body = {by: by, reason: reason, request_id: rid};" in page
    assert {"by", "reason", "request_id"} <= operator._FIELDS["hold"] & operator._FIELDS["release"]
    assert "var body = {source: text(d.source), queue: text(d.queue), message_id: text(d.message_id)};" in page
    # Nothing else is called: every call( in the script is one of the above.
    assert page.count('call("') == len({snippet for _, _, snippet, _ in PAGE_CALLS})


def test_the_overview_says_which_models_are_held(functions: dict[str, HostedFunction], svc: Services) -> None:
    _lifecycle(svc)
    registry: FakeRegistry = svc.registry  # type: ignore[assignment]
    hold = {"by": "Ada", "reason": EVIL, "at": "2026-12-06T05:00:00+00:00", "request_id": "r-1"}
    registry.set_model_tag("iris-classifier", domain.HOLD, domain.record(**hold))
    payload = json.loads(_get(functions["ops_overview"], "http://localhost/api/ops/overview").get_body())
    held = {m["model"]: m["held"] for m in payload["models"]}
    assert held.pop("iris-classifier") == hold
    assert held and set(held.values()) == {None}
    released = domain.record(**hold, released=True, released_by="Ada")
    registry.set_model_tag("iris-classifier", domain.HOLD, released)
    payload = json.loads(_get(functions["ops_overview"], "http://localhost/api/ops/overview").get_body())
    assert next(m for m in payload["models"] if m["model"] == "iris-classifier")["held"] is None
