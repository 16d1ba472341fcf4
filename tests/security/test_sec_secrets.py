"""Secrets never reach a log: a full ``signalbox demo`` run with every secret configured, and the host's output.

The demo (~40 s) runs the whole lifecycle: MLflow server, local host, training jobs, scoring
servers; every one of them logs under its state dir. Every file there is searched (the three stores
that hold keys by design excepted), with the demo's own stdout and stderr, for each secret in plain,
base64, URL-encoded and hex form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from signalbox.client import ClientError, deliver_event_grid
from signalbox.localhost.config import redact_keys
from signalbox.mlflow_server import KEY_FILE
from tests.hosting import REPO
from tests.security.stack import SECRETS, SecureHost, leaks

# Where keys live by design (mode 0600), not logs.
KEY_STORES = {"host-keys.json", "webhook-secrets.json", KEY_FILE}


def _searchable(state: Path) -> dict[Path, str]:
    out = {}
    for path in sorted(p for p in state.rglob("*") if p.is_file() and p.name not in KEY_STORES):
        # Binary files (SQLite stores, pickled models) are searched too, as latin-1 text.
        out[path] = path.read_bytes().decode("latin-1")
    return out


@pytest.mark.integration
def test_a_full_demo_run_logs_none_of_the_configured_secrets(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    env = {
        **os.environ,
        **SECRETS,
        # The CLI's admin key (signalbox dlq) and an MLflow token: configured, never to be printed.
        "SIGNALBOX_ADMIN_KEY": SECRETS["SIGNALBOX_EVENTGRID_KEY"] + "-admin",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "signalbox.cli", "demo", "--state-dir", str(state)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "The chain completed" in done.stdout

    host_keys = json.loads((state / "host-keys.json").read_text())
    secrets = {
        **SECRETS,
        "SIGNALBOX_ADMIN_KEY": env["SIGNALBOX_ADMIN_KEY"],
        "masterKey": host_keys["masterKey"],
        "functionKey": host_keys["functionKeys"]["default"],
        "eventGridKey": host_keys["systemKeys"]["eventgrid_extension"],
        "mlflowWebhookEncryptionKey": (state / KEY_FILE).read_text().strip(),
    }
    searched = {"demo stdout": done.stdout, "demo stderr": done.stderr} | {
        str(path.relative_to(state)): text for path, text in _searchable(state).items()
    }
    # The run really logged: the host, MLflow, a training job and a scoring server each left a log.
    logs = [name for name in searched if name.endswith(".log")]
    assert any("host" in n for n in logs) and any("mlflow" in n for n in logs), logs
    assert any(n.endswith("job.log") for n in logs) and any(n.startswith("endpoints/") for n in logs), logs
    found = {name: leaks(text, secrets) for name, text in searched.items()}
    assert {name: names for name, names in found.items() if names} == {}


def test_the_hosts_output_names_where_its_keys_are_not_the_keys(secure: SecureHost) -> None:
    # Keys in the URL (as Event Grid and browsers send them), right and wrong, and failures.
    for code in (secure.host.master, secure.host.function_key, secure.host.event_grid_key, "wrong"):
        requests.get(f"{secure.url}/api/status/nope", params={"code": code}, timeout=30)
        requests.post(f"{secure.url}/runtime/webhooks/EventGrid?functionName=landing_events&code={code}", timeout=30)
    log = secure.host.log()
    assert "host-keys.json" in log and "Functions:" in log  # the banner was printed
    assert leaks(log, secure.all_secrets) == []


def test_the_dlq_command_with_a_wrong_admin_key_does_not_print_it(secure: SecureHost, tmp_path: Path) -> None:
    for key, expected in (("wrong-admin-key-123", 401), (secure.host.master, 0)):
        command = ["dlq", "list", "--host-url", secure.url, "--state-dir", str(tmp_path)]
        done = subprocess.run(
            [sys.executable, "-m", "signalbox.cli", *command],
            cwd=REPO,
            env={**os.environ, "SIGNALBOX_ADMIN_KEY": key, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = done.stdout + done.stderr
        assert (str(expected) in output) if expected else done.returncode == 0, output
        assert key not in output and leaks(output, secure.all_secrets) == []


def test_client_errors_do_not_carry_the_key_from_the_url(tmp_path: Path) -> None:
    key = "eg-" + "k" * 40
    (tmp_path / "host-keys.json").write_text(json.dumps({"systemKeys": {"eventgrid_extension": key}}))
    with pytest.raises(ClientError) as failed:
        deliver_event_grid("http://127.0.0.1:9", tmp_path, "landing_events", [])  # nothing listens on port 9
    assert "cannot reach the host" in str(failed.value) and key not in str(failed.value)
    assert "code=<redacted>" in str(failed.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /api/x?code=abc HTTP/1.1", "GET /api/x?code=<redacted> HTTP/1.1"),
        ("/runtime/webhooks/EventGrid?functionName=f&code=a%2Bb&x=1", "?functionName=f&code=<redacted>&x=1"),
        ("?CODE=abc#frag", "?CODE=<redacted>#frag"),
        ("/api/x?barcode=1", "/api/x?barcode=1"),
    ],
)
def test_redact_keys(text: str, expected: str) -> None:
    assert expected in redact_keys(text)
