"""The ops page: every model's lifecycle, the queues and the approvals waiting, on one page.

``GET /api/ops?code=<admin key>`` answers one self-contained HTML page (inline CSS and
vanilla JS, nothing loaded from elsewhere) that reads ``GET /api/ops/overview`` every few
seconds and posts approvals to ``POST /api/approvals/{model}/{version}/{approve|reject}``
with the same key. Registry strings (model names, tags, decision records) are user data:
the page only ever puts them into the DOM as text (``textContent``, never HTML), and a
Content-Security-Policy with a per-response nonce refuses any script or style it did not send.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import TYPE_CHECKING

import azure.functions as func

from functions.http_util import problem
from shared import runtime

if TYPE_CHECKING:
    pass

bp = func.Blueprint()
log = logging.getLogger("signalbox")

DEFAULT_REFRESH_SECONDS = 5
MIN_REFRESH_SECONDS = 1
MAX_REFRESH_SECONDS = 300


@bp.route(route="ops", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def ops_page(req: func.HttpRequest) -> func.HttpResponse:
    """The ops page (admin key, as ``?code=`` so a browser can open it); ``?refresh=SECONDS`` (1-300, default 5)."""
    try:
        refresh = parse_refresh(req.params.get("refresh"))
    except ValueError as exc:
        return problem(400, str(exc))
    nonce = secrets.token_urlsafe(18)
    return func.HttpResponse(
        render_page(nonce=nonce, refresh_seconds=refresh),
        status_code=200,
        mimetype="text/html",
        charset="utf-8",
        headers=page_headers(nonce),
    )


@bp.route(route="ops/overview", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def ops_overview(req: func.HttpRequest) -> func.HttpResponse:
    """Every model's lifecycle, the pending approvals and the queue depths (JSON, admin key)."""
    from shared.lifecycle import overview

    svc = runtime.services()
    payload = overview(svc)
    try:
        if svc.queue_depths is None:
            raise LookupError("no queue-depth adapter is configured")
        payload["queues"] = svc.queue_depths.depths()
    except Exception as exc:
        # The lifecycle is still worth showing when the queues cannot be read (e.g. no Service Bus read rights).
        log.warning("ops page: queue depths unavailable: %s: %s", type(exc).__name__, exc)
        payload["queues"] = {}
        payload["queues_error"] = f"queue depths unavailable: {type(exc).__name__}: {exc}"
    return func.HttpResponse(
        json.dumps(payload, default=str),
        status_code=200,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


# -- helpers (plain functions, tested without a host) ----------------------------------------------


def parse_refresh(raw: str | None) -> int:
    """The page's refresh period in seconds from ``?refresh=``; ``ValueError`` says what is accepted."""
    if raw is None or raw == "":
        return DEFAULT_REFRESH_SECONDS
    if not raw.isdigit() or not MIN_REFRESH_SECONDS <= int(raw) <= MAX_REFRESH_SECONDS:
        raise ValueError(
            f"refresh must be a whole number of seconds from {MIN_REFRESH_SECONDS} to {MAX_REFRESH_SECONDS}, "
            f"got {raw[:40]!r}"
        )
    return int(raw)


def page_headers(nonce: str) -> dict[str, str]:
    """Only the page's own script and style run; it talks to its own origin only; no caching, no referrer."""
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        f"style-src 'nonce-{nonce}'; "
        "connect-src 'self'; "
        "img-src data:; "
        "base-uri 'none'; "
        "form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        # The URL carries the admin key: never send it on, never keep the page.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def render_page(*, nonce: str, refresh_seconds: int) -> str:
    """The page. It holds no registry data: the script fetches the overview and renders it as text."""
    if not nonce.replace("-", "").replace("_", "").isalnum():
        raise ValueError("nonce must be URL-safe base64")
    return _PAGE.replace("__NONCE__", nonce).replace("__REFRESH__", str(int(refresh_seconds)))


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Signalbox ops</title>
<link rel="icon" href="data:,">
<style nonce="__NONCE__">
:root {
  --ink: #1c2430; --muted: #5d6b7c; --line: #d8dee6; --bg: #f4f6f9; --card: #fff;
  --green: #1f7a3d; --green-bg: #e3f4e8; --amber: #8a5a00; --amber-bg: #fff1cc;
  --blue: #28527a; --blue-bg: #e3edf7; --grey: #4d5560; --grey-bg: #eceff2;
  --red: #a32020; --red-bg: #fde6e6; --violet: #5b3a8c; --violet-bg: #efe7fa;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .4rem 1rem; padding: .8rem 1.4rem;
  background: #17202c; color: #fff; }
header h1 { margin: 0; font-size: 1.25rem; letter-spacing: .02em; }
header .env { padding: .05rem .5rem; border-radius: 999px; background: #33455c; font-size: .8rem; }
header .summary { color: #c9d3df; }
header .status { margin-left: auto; font-size: .85rem; color: #c9d3df; }
header .status.error { color: #ffb4b4; font-weight: 600; }
main { padding: 1rem 1.4rem 2rem; display: grid; gap: 1rem; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem;
  overflow-x: auto; }
section h2 { margin: 0 0 .6rem; font-size: 1rem; }
#models-section { grid-column: 1 / -1; }
@media (max-width: 900px) { main { grid-template-columns: minmax(0, 1fr); } }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top;
  overflow-wrap: anywhere; }
th { font-size: .78rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); font-weight: 600;
  overflow-wrap: normal; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num.nonzero { font-weight: 700; }
td.num.bad { color: var(--red); background: var(--red-bg); font-weight: 700; }
.empty { color: var(--muted); font-style: italic; margin: .2rem 0; }
.flash { margin: 0 0 .6rem; padding: .4rem .6rem; border-radius: 6px; }
.flash:empty { display: none; }
.flash.ok { background: var(--green-bg); color: var(--green); }
.flash.error { background: var(--red-bg); color: var(--red); }
button { font: inherit; padding: .25rem .8rem; border-radius: 6px; border: 1px solid transparent; cursor: pointer; }
button.approve { background: var(--green); color: #fff; }
button.reject { background: #fff; color: var(--red); border-color: var(--red); margin-left: .4rem; }
button:disabled { opacity: .5; cursor: default; }
td.actions { white-space: nowrap; overflow-wrap: normal; width: 1%; }
.models { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); }
.model { border: 1px solid var(--line); border-radius: 8px; padding: .7rem .9rem; background: #fbfcfd; }
.model h3 { margin: 0; font-size: 1.05rem; overflow-wrap: anywhere; }
.model .kind { font-weight: 400; color: var(--muted); font-size: .85rem; margin-left: .4rem; }
.meta { color: var(--muted); margin: .2rem 0 .5rem; overflow-wrap: anywhere; }
.meta a { color: var(--blue); }
.notice { margin: .3rem 0; padding: .3rem .5rem; border-radius: 6px; background: var(--amber-bg); color: var(--amber); }
.notice.bad { background: var(--red-bg); color: var(--red); }
ol.timeline { list-style: none; margin: .4rem 0 0; padding: 0 0 0 1.1rem; border-left: 2px solid var(--line); }
ol.timeline > li { position: relative; margin: 0 0 .7rem; padding-left: .5rem; }
ol.timeline > li::before { content: ""; position: absolute; left: -1.55rem; top: .3rem; width: .75rem; height: .75rem;
  border-radius: 50%; background: #fff; border: 2px solid #9aa7b6; }
ol.timeline > li.stage-production::before { background: var(--green); border-color: var(--green); }
ol.timeline > li.stage-staged::before { background: #e0a800; border-color: #e0a800; }
ol.timeline > li.stage-surpassed::before { background: var(--blue); border-color: var(--blue); }
.vhead { display: flex; flex-wrap: wrap; align-items: center; gap: .3rem; }
.vnum { font-weight: 700; font-size: 1rem; margin-right: .2rem; }
.badge { display: inline-block; padding: .02rem .5rem; border-radius: 999px; font-size: .78rem; font-weight: 600;
  border: 1px solid transparent; }
.badge.stage-production { background: var(--green-bg); color: var(--green); border-color: #b6e0c2; }
.badge.stage-staged { background: var(--amber-bg); color: var(--amber); border-color: #f0d68a; }
.badge.stage-surpassed { background: var(--blue-bg); color: var(--blue); border-color: #b9cfe6; }
.badge.stage-unstaged { background: var(--grey-bg); color: var(--grey); border-color: #d0d6dc; }
.badge.stage-none { background: #fff; color: var(--muted); border: 1px dashed #b5bfca; }
.badge.alias { background: var(--violet-bg); color: var(--violet); }
.badge.approval-pending { background: #fff; color: var(--amber); border-color: #e0a800; }
.badge.approval-approved, .badge.approval-auto { background: #fff; color: var(--green); border-color: #b6e0c2; }
.badge.approval-rejected { background: #fff; color: var(--red); border-color: #efb3b3; }
.badge.won { background: var(--green-bg); color: var(--green); }
.badge.lost { background: var(--red-bg); color: var(--red); }
time, .when { color: var(--muted); font-size: .82rem; margin-left: auto; }
.line { margin: .15rem 0 0; overflow-wrap: anywhere; }
.line .label { color: var(--muted); }
.line.bad { color: var(--red); }
.line.good { color: var(--green); }
code { font: .85em ui-monospace, "DejaVu Sans Mono", monospace; background: var(--grey-bg); padding: 0 .25rem;
  border-radius: 4px; }
</style>
</head>
<body data-refresh="__REFRESH__">
<header>
  <h1>Signalbox ops</h1>
  <span class="env" id="environment">…</span>
  <span class="summary" id="summary"></span>
  <span class="status" id="status" role="status">loading…</span>
</header>
<main>
  <section id="approvals-section" aria-labelledby="approvals-title">
    <h2 id="approvals-title">Pending approvals</h2>
    <p class="flash" id="flash" role="alert"></p>
    <div id="approvals"><p class="empty">Loading…</p></div>
  </section>
  <section id="queues-section" aria-labelledby="queues-title">
    <h2 id="queues-title">Queues</h2>
    <div id="queues"><p class="empty">Loading…</p></div>
  </section>
  <section id="models-section" aria-labelledby="models-title">
    <h2 id="models-title">Models</h2>
    <div id="models"><p class="empty">Loading…</p></div>
  </section>
</main>
<script nonce="__NONCE__">
(function () {
  "use strict";
  // Every registry string reaches the DOM through textContent / text nodes: never as HTML.
  var code = new URLSearchParams(window.location.search).get("code") || "";
  var refreshMs = Math.max(1, Number(document.body.getAttribute("data-refresh")) || 5) * 1000;
  // /api/ops -> /api/ : the overview and the approvals live beside the page, whatever the route prefix.
  var base = window.location.pathname.replace(/\/ops\/?$/, "/");
  var timer = null;
  var shown = {};
  var sent = {};
  var STAGES = ["production", "staged", "unstaged", "surpassed"];

  function h(tag, props) {
    var el = document.createElement(tag);
    var key;
    for (key in props || {}) {
      var value = props[key];
      if (value === null || value === undefined || value === false) { continue; }
      if (key === "class") { el.className = value; }
      else if (key === "onclick") { el.addEventListener("click", value); }
      else { el.setAttribute(key, String(value)); }
    }
    for (var i = 2; i < arguments.length; i++) { add(el, arguments[i]); }
    return el;
  }

  function add(el, child) {
    if (child === null || child === undefined || child === false) { return; }
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function text(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  function when(value) {
    if (!value) { return ""; }
    var parsed = new Date(String(value).replace(" ", "T"));
    if (isNaN(parsed.getTime())) { return String(value); }
    return parsed.toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function call(method, path, payload) {
    var headers = {"Accept": "application/json"};
    if (code) { headers["x-functions-key"] = code; }
    var init = {method: method, headers: headers, cache: "no-store", credentials: "omit"};
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(base + path, init).then(function (response) {
      return response.text().then(function (body) {
        var data = null;
        try { data = body ? JSON.parse(body) : null; } catch (ignored) { data = null; }
        if (!response.ok) {
          var message = data && (data.message || data.error) ? (data.message || data.error) : response.statusText;
          if (response.status === 401) { message += " (open this page as /api/ops?code=<admin key>)"; }
          throw new Error(response.status + ": " + message);
        }
        return data;
      });
    });
  }

  function setStatus(kind, message) {
    var el = document.getElementById("status");
    el.className = "status " + kind;
    el.textContent = message;
  }

  function flash(kind, message) {
    var el = document.getElementById("flash");
    el.className = "flash " + kind;
    el.textContent = message;
  }

  // Re-render a section only when its data changed, so buttons stay put between refreshes.
  function section(id, value, build) {
    var key = JSON.stringify(value);
    if (shown[id] === key) { return; }
    shown[id] = key;
    var el = document.getElementById(id);
    while (el.firstChild) { el.removeChild(el.firstChild); }
    add(el, build(value));
  }

  function decide(model, version, decision, row) {
    var buttons = row.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
    var path = "approvals/" + encodeURIComponent(model) + "/" + encodeURIComponent(version) + "/" + decision;
    return call("POST", path, {by: "ops-page"}).then(function (answer) {
      sent[model + "\u0000" + version] = decision;
      flash("ok", (decision === "approve" ? "Approved " : "Rejected ") + model + " v" + version + " (" +
        text(answer && answer.decision) + "): the lifecycle follows on this page.");
    }, function (error) {
      for (var j = 0; j < buttons.length; j++) { buttons[j].disabled = false; }
      flash("error", "Could not " + decision + " " + model + " v" + version + ": " + error.message);
    }).then(function () { shown.approvals = null; refresh(); });
  }

  function approvals(pending) {
    if (!pending.length) { return h("p", {"class": "empty"}, "No version is waiting for approval."); }
    return h("table", {"class": "approvals"},
      h("thead", null, h("tr", null, h("th", null, "Model"), h("th", null, "Version"), h("th", null, "Env"),
        h("th", null, "Why it won"), h("th", null, "Created"), h("th", null, ""))),
      h("tbody", null, pending.map(function (p) {
        var row = h("tr", {"class": "pending", "data-model": text(p.model), "data-version": text(p.version)});
        var done = sent[text(p.model) + "\u0000" + text(p.version)];
        var approve = h("button", {"class": "approve", "type": "button", "data-action": "approve", "disabled": !!done,
          "onclick": function () { decide(text(p.model), text(p.version), "approve", row); }}, "Approve");
        var reject = h("button", {"class": "reject", "type": "button", "data-action": "reject", "disabled": !!done,
          "onclick": function () { decide(text(p.model), text(p.version), "reject", row); }}, "Reject");
        add(row, [h("td", null, text(p.model)), h("td", null, "v" + text(p.version)),
          h("td", null, text(p.environment)), h("td", null, text(p.reason)), h("td", null, when(p.created_at)),
          h("td", {"class": "actions"}, done ? h("span", {"class": "empty"}, done + " sent…") : [approve, reject])]);
        return row;
      })));
  }

  function queues(data) {
    if (data.error) { return h("p", {"class": "notice bad"}, data.error); }
    var names = Object.keys(data.queues).sort();
    if (!names.length) { return h("p", {"class": "empty"}, "No queues."); }
    function cell(value, kind) {
      var n = Number(value) || 0;
      return h("td", {"class": "num" + (n ? " " + kind : "")}, String(n));
    }
    return h("table", {"class": "queues"},
      h("thead", null, h("tr", null, h("th", null, "Queue"), h("th", {"class": "num"}, "Active"),
        h("th", {"class": "num"}, "Scheduled"), h("th", {"class": "num"}, "Locked"),
        h("th", {"class": "num"}, "Dead-letter"))),
      h("tbody", null, names.map(function (name) {
        var q = data.queues[name] || {};
        return h("tr", {"data-queue": name}, h("td", null, name), cell(q.active, "nonzero"),
          cell(q.scheduled, "nonzero"), cell(q.locked, "nonzero"), cell(q.dead_letter, "bad"));
      })));
  }

  function stageBadge(stage) {
    var known = STAGES.indexOf(stage) >= 0;
    return h("span", {"class": "badge stage " + (known ? "stage-" + stage : "stage-none"),
      "title": known ? null : "never made it through evaluation"}, stage ? text(stage) : "no stage");
  }

  function version(v) {
    var stage = text(v.stage);
    var li = h("li", {"class": "version stage-" + (STAGES.indexOf(stage) >= 0 ? stage : "none"),
      "data-version": text(v.version), "data-stage": stage});
    var head = h("div", {"class": "vhead"}, h("span", {"class": "vnum"}, "v" + text(v.version)), stageBadge(stage));
    (v.aliases || []).forEach(function (alias) { add(head, h("span", {"class": "badge alias"}, text(alias))); });
    if (v.approval) {
      var approval = text(v.approval);
      add(head, h("span", {"class": "badge approval approval-" + approval.replace(/[^a-z]/g, "")},
        "approval: " + approval + (v.approved_by ? " by " + text(v.approved_by) : "")));
    }
    add(head, h("time", null, when(v.created_at)));
    add(li, head);
    var d = v.decision;
    if (d) {
      add(li, h("p", {"class": "line decision"}, h("span", {"class": "badge " + (d.won ? "won" : "lost")},
        d.won ? "won" : "lost"), " ", text(d.reason)));
    }
    var dep = v.deployment;
    if (dep) {
      var status = text(dep.status);
      var where = dep.endpoint ? " to " + text(dep.endpoint) : "";
      var slot = dep.slot ? " (slot " + text(dep.slot) + ")" : "";
      var tone = status === "rolled_back" ? " bad" : status === "deployed" ? " good" : "";
      add(li, h("p", {"class": "line deployment" + tone},
        h("span", {"class": "label"}, "deployment:"), " ",
        status === "rolled_back" ? "rolled back" + where + ": " + text(dep.reason)
          : status.replace(/_/g, " ") + where + slot + (dep.reason ? ": " + text(dep.reason) : ""),
        dep.at ? h("span", {"class": "when"}, " · " + when(dep.at)) : null));
    }
    if (v.outcome) {
      add(li, h("p", {"class": "line outcome"}, h("span", {"class": "label"}, "outcome:"), " ", text(v.outcome)));
    }
    if (v.commit_sha || v.repository) {
      add(li, h("p", {"class": "line code"}, h("span", {"class": "label"}, "code:"), " ",
        v.commit_sha ? h("code", {"title": text(v.commit_sha)}, text(v.commit_sha).slice(0, 10)) : null,
        v.repository ? " " + text(v.repository) : null));
    }
    return li;
  }

  function model(m) {
    var card = h("article", {"class": "model", "data-model": text(m.model)},
      h("h3", null, text(m.model), h("span", {"class": "kind"}, text(m.kind))));
    var meta = h("div", {"class": "meta"});
    if (m.endpoint) {
      var url = text(m.endpoint);
      add(meta, ["endpoint ", /^https?:\/\//i.test(url) ? h("a", {"href": url, "rel": "noreferrer"}, url) : url]);
    }
    add(meta, [m.endpoint ? " · " : "", "champion ", m.champion ? "v" + text(m.champion) : "none",
      " · challenger ", m.challenger ? "v" + text(m.challenger) : "none"]);
    add(card, meta);
    if (m.last_failure) {
      add(card, h("p", {"class": "notice bad"}, "last failure: " + text(m.last_failure.reason) +
        (m.last_failure.at ? " (" + when(m.last_failure.at) + ")" : "")));
    }
    if (m.last_refusal) {
      add(card, h("p", {"class": "notice"}, "last refused data: " + text(m.last_refusal.reason) +
        (m.last_refusal.at ? " (" + when(m.last_refusal.at) + ")" : "")));
    }
    var versions = (m.versions || []).slice().sort(function (a, b) { return Number(a.version) - Number(b.version); });
    add(card, versions.length ? h("ol", {"class": "timeline"}, versions.map(version))
      : h("p", {"class": "empty"}, "No versions yet."));
    return card;
  }

  function render(data) {
    document.getElementById("environment").textContent = text(data.environment);
    var models = data.models || [];
    var pending = data.pending_approvals || [];
    var q = data.queues || {};
    var dead = Object.keys(q).reduce(function (total, name) { return total + (Number(q[name].dead_letter) || 0); }, 0);
    document.getElementById("summary").textContent = models.length + " model" + (models.length === 1 ? "" : "s") +
      " · " + pending.length + " waiting for approval · " + dead + " dead-lettered";
    section("approvals", pending, approvals);
    section("queues", {queues: q, error: data.queues_error || null}, queues);
    section("models", models, function (all) {
      return all.length ? h("div", {"class": "models"}, all.map(model))
        : h("p", {"class": "empty"}, "The catalogue has no models.");
    });
  }

  function refresh() {
    window.clearTimeout(timer);
    return call("GET", "ops/overview").then(function (data) {
      render(data || {});
      setStatus("ok", "updated " + new Date().toLocaleTimeString() + " · every " + refreshMs / 1000 + " s");
    }, function (error) {
      setStatus("error", "refresh failed: " + error.message);
    }).then(function () { timer = window.setTimeout(refresh, refreshMs); });
  }

  refresh();
})();
</script>
</body>
</html>
"""
