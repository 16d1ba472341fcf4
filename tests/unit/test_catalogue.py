"""The catalogue is validated at start-up; an error names the file, the entry and the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.catalogue import CatalogueError, load_catalogue
from shared.errors import UnknownModel

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[models.churn]
kind = "trained"
[models.churn.training]
job = "jobs.churn"
[models.churn.data]
container = "landing"
prefix = "churn/"
[models.churn.evaluation]
dataset = "eval.csv"
primary_metric = "auc"
[models.churn.approval]
prod = "manual"
dev = "auto"
[models.churn.deployment]
endpoint = "churn"
[models.churn.drift]
cooldown = "PT30M"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return path


def test_the_shipped_catalogue_is_valid():
    catalogue = load_catalogue(REPO / "catalogue.toml")
    assert {"iris-classifier", "iris-batch", "iris-rules"} <= set(catalogue.models)
    assert catalogue.get("iris-rules").kind == "rule_based"


def test_a_valid_entry_reads_with_defaults(tmp_path):
    entry = load_catalogue(write(tmp_path, GOOD)).get("churn")
    assert entry.training.backend == "local" and entry.evaluation.direction == "maximize"
    assert entry.drift.cooldown == timedelta(minutes=30)
    assert entry.approval_for("prod") == "manual" and entry.approval_for("dev") == "auto"
    assert entry.approval_for("staging") == "manual"  # unlisted environments need a person


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "trained"', 'kind = "magic"'), "models.churn: kind:"),
        (('job = "jobs.churn"', 'job = ""'), "models.churn: training.job:"),
        (('prod = "manual"', 'prod = "sometimes"'), "models.churn: approval.prod:"),
        (('endpoint = "churn"', 'endpoint = "Not Valid!"'), "models.churn: deployment.endpoint:"),
        (('cooldown = "PT30M"', 'cooldown = "half an hour"'), "models.churn: drift.cooldown:"),
        (
            ('endpoint = "churn"', 'endpoint = "churn"\nworkload_size = "Huge"'),
            "models.churn: deployment.workload_size:",
        ),
        (
            ('endpoint = "churn"', 'endpoint = "churn"\nscale_to_zero_enabled = "yes"'),
            "models.churn: deployment.scale_to_zero_enabled:",
        ),
        (('primary_metric = "auc"', 'primary_metric = "auc"\nsurprise = 1'), "models.churn: evaluation.surprise:"),
        (
            ('[models.churn.evaluation]\ndataset = "eval.csv"\nprimary_metric = "auc"\n', ""),
            "models.churn: evaluation: required",
        ),
    ],
)
def test_errors_name_the_file_the_entry_and_the_field(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_missing_file_and_bad_toml_are_clear(tmp_path):
    with pytest.raises(CatalogueError, match="catalogue file not found"):
        load_catalogue(tmp_path / "nope.toml")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_catalogue(write(tmp_path, "[models.x\n"))
    with pytest.raises(CatalogueError, match=r"no \[models.NAME\] entries"):
        load_catalogue(write(tmp_path, "title = 'empty'\n"))


def test_batch_models_need_a_scoring_job(tmp_path):
    path = write(tmp_path, GOOD.replace('endpoint = "churn"', 'endpoint = "churn"\nmode = "batch"'))
    with pytest.raises(CatalogueError, match=r"deployment\.scoring_job: required"):
        load_catalogue(path)


def test_blobs_route_to_the_longest_matching_prefix(tmp_path):
    text = GOOD + GOOD.replace("churn", "churnvip").replace('prefix = "churnvip/"', 'prefix = "churn/vip/"')
    catalogue = load_catalogue(write(tmp_path, text))
    assert catalogue.for_blob("landing", "churn/a.csv").name == "churn"
    assert catalogue.for_blob("landing", "churn/vip/a.csv").name == "churnvip"
    assert catalogue.for_blob("other", "churn/a.csv") is None
    with pytest.raises(UnknownModel, match="known: churn, churnvip"):
        catalogue.get("nope")


def test_serving_sizing_defaults_to_small_with_scale_to_zero_and_can_be_set(tmp_path):
    entry = load_catalogue(write(tmp_path, GOOD)).get("churn")
    assert entry.deployment is not None
    assert (entry.deployment.workload_size, entry.deployment.scale_to_zero_enabled) == ("Small", True)
    sized = GOOD.replace(
        'endpoint = "churn"', 'endpoint = "churn"\nworkload_size = "Large"\nscale_to_zero_enabled = false'
    )
    entry = load_catalogue(write(tmp_path, sized)).get("churn")
    assert entry.deployment is not None
    assert (entry.deployment.workload_size, entry.deployment.scale_to_zero_enabled) == ("Large", False)
    shipped = load_catalogue(REPO / "catalogue.toml").get("iris-classifier").deployment
    assert shipped is not None and (shipped.workload_size, shipped.scale_to_zero_enabled) == ("Small", True)
