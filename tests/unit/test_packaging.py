"""The project's promises about itself: quick start, CI, deployment files, settings, cold start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci_command = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3.11 -m venv")
    ]
    assert len(ci_command) == 1
    assert ci_command[0] in _readme()


def test_readme_quick_start_runs_the_demo():
    assert re.search(r"^python3\.11 -m venv .*signalbox demo$", _readme(), re.MULTILINE)


def test_requirements_txt_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["ml"]) | set(extras["azure"])
    lines = {
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert lines == wanted


def test_funcignore_keeps_tests_and_local_state_out_of_the_deployment():
    ignored = (REPO / ".funcignore").read_text().splitlines()
    for entry in ("tests/", "bench/", ".signalbox/", "local.settings.json", ".venv/"):
        assert entry in ignored


def test_every_setting_is_in_the_sample_settings_and_the_readme():
    sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    readme = _readme()
    for field in Settings.model_fields.values():
        assert field.alias in sample, f"{field.alias} missing from local.settings.sample.json"
        name = field.alias
        assert name in readme or name.rsplit("_", 2)[0] in readme, f"{name} missing from README settings table"


def test_importing_the_app_and_indexing_imports_no_heavy_sdk():
    code = (
        "import sys, function_app\n"
        "names = [f.get_function_name() for f in function_app.app.get_functions()]\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('mlflow', 'sklearn', 'pandas', 'databricks', 'pydantic') or m.startswith('azure.ai.ml')]\n"
        "print(len(names), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    count, heavy = out.strip().split(" ", 1)
    assert int(count) >= 10
    assert heavy == "[]"


def test_every_test_module_has_its_own_basename():
    """The test folders have no __init__.py: two modules of one name stop pytest's collection."""
    from collections import Counter

    names = Counter(path.name for path in (REPO / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
