"""Switching to a cloud adapter is a settings change only; the composition root picks them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.bootstrap import bootstrap
from shared.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def _catalogue(tmp_path: Path, backend: str) -> Path:
    text = (REPO / "catalogue.toml").read_text()
    text = text.replace(
        'backend = "local"\njob = "signalbox.examples.iris.train"\nparameters = { C = "1.0" }',
        f'backend = "{backend}"\njob = "123"\nparameters = {{ C = "1.0" }}',
    )
    text = text.replace(
        'dataset = "signalbox/examples/iris/evaluation.csv"',
        f'dataset = "{REPO}/signalbox/examples/iris/evaluation.csv"',
    )
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return path


def test_the_embedded_default_is_all_local(tmp_path):
    svc = bootstrap(
        Settings.model_validate(
            {"SIGNALBOX_STATE_DIR": str(tmp_path / "state"), "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml")}
        )
    )
    kinds = {type(svc.bus).__name__, type(svc.serving).__name__, type(svc.events).__name__, type(svc.landing).__name__}
    assert kinds == {"LocalBus", "LocalServing", "LocalLifecycleEvents", "LocalLandingZone"}
    assert set(svc.compute) == {"local"}


def test_cloud_adapters_come_from_settings_alone(tmp_path):
    settings = Settings.model_validate(
        {
            "SIGNALBOX_STATE_DIR": str(tmp_path / "state"),
            "SIGNALBOX_CATALOGUE": str(_catalogue(tmp_path, "databricks")),
            "SIGNALBOX_BUS": "servicebus",
            "ServiceBusConnection__fullyQualifiedNamespace": "sb-signalbox.servicebus.windows.net",
            "SIGNALBOX_EVENTS": "eventgrid",
            "SIGNALBOX_EVENTGRID_ENDPOINT": "https://signalbox.westeurope-1.eventgrid.azure.net/api/events",
            "SIGNALBOX_EVENTGRID_KEY": "k",
            "SIGNALBOX_SERVING": "databricks",
            "SIGNALBOX_LANDING": "blob",
            "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
            "DATABRICKS_TOKEN": "dapi-not-real",
            "MLFLOW_TRACKING_URI": "databricks",
            "MLFLOW_REGISTRY_URI": "databricks-uc",
        }
    )
    svc = bootstrap(settings)
    assert type(svc.bus).__name__ == "ServiceBusBus"
    assert type(svc.events).__name__ == "EventGridLifecycleEvents"
    assert type(svc.serving).__name__ == "DatabricksServing"
    assert type(svc.landing).__name__ == "BlobLandingZone"
    assert type(svc.compute["databricks"]).__name__ == "DatabricksCompute"


def test_a_catalogue_backend_without_its_settings_fails_at_start_up(tmp_path):
    settings = Settings.model_validate(
        {"SIGNALBOX_STATE_DIR": str(tmp_path / "state"), "SIGNALBOX_CATALOGUE": str(_catalogue(tmp_path, "azureml"))}
    )
    with pytest.raises(SettingsError, match=r"training\.backend azureml needs AZUREML_SUBSCRIPTION_ID"):
        bootstrap(settings)


def test_every_value_a_setting_accepts_has_one_factory_in_the_tables():
    """A backend is one package plus one table entry: the settings' choices and the tables agree."""
    import typing

    from shared import bootstrap
    from shared.catalogue import Training
    from shared.settings import Settings

    def choices(model: type, field: str) -> set[str]:
        return set(typing.get_args(model.model_fields[field].annotation))

    assert choices(Settings, "bus") == set(bootstrap.QUEUES)
    assert choices(Settings, "registry") == set(bootstrap.MLFLOW_URIS) == set(bootstrap.EVALUATOR)
    assert choices(Settings, "serving") == set(bootstrap.SERVING)
    assert choices(Settings, "landing") == set(bootstrap.LANDING)
    assert choices(Settings, "events") == set(bootstrap.EVENTS)
    assert choices(Training, "backend") == set(bootstrap.COMPUTE)


def test_importing_an_adapter_module_does_not_replace_its_package_factory():
    import importlib
    import pkgutil

    import shared.adapters
    from shared import bootstrap

    for info in pkgutil.walk_packages(shared.adapters.__path__, "shared.adapters."):
        importlib.import_module(info.name)
    tables = [
        bootstrap.QUEUES, bootstrap.EVALUATOR, bootstrap.COMPUTE, bootstrap.SERVING, bootstrap.LANDING, bootstrap.EVENTS
    ]  # fmt: skip
    for factory in [f for table in tables for f in table.values()] + [bootstrap.REGISTRY]:
        assert callable(factory) and factory.__name__.startswith("make_"), factory
    for package in ("local", "servicebus", "databricks", "azureml", "azure", "mlflow"):
        module = importlib.import_module(f"shared.adapters.{package}")
        assert all(callable(getattr(module, name)) for name in dir(module) if name.startswith("make_"))


def test_the_azure_ml_registry_evaluates_with_the_workspaces_model_files(tmp_path):
    """SIGNALBOX_REGISTRY=azureml: the evaluator downloads through the registry URI's workspace (no call made here)."""
    from shared.adapters.azureml.model_files import AzureMLModelFiles

    workspace = (
        "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg-ml"
        "/providers/Microsoft.MachineLearningServices/workspaces/mlw-signalbox"
    )
    settings = Settings.model_validate(
        {
            "SIGNALBOX_STATE_DIR": str(tmp_path / "state"),
            "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"),
            "SIGNALBOX_REGISTRY": "azureml",
            "SIGNALBOX_SERVING": "azureml",
            "AZUREML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-0000000000aa",
            "AZUREML_RESOURCE_GROUP": "rg-ml",
            "AZUREML_WORKSPACE": "mlw-signalbox",
            "MLFLOW_TRACKING_URI": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{workspace}",
        }
    )
    svc = bootstrap(settings)
    files = svc.evaluator._model_files  # type: ignore[attr-defined]
    assert isinstance(files, AzureMLModelFiles)
    assert (files.subscription_id, files.resource_group, files.workspace) == (
        "00000000-0000-0000-0000-0000000000aa",
        "rg-ml",
        "mlw-signalbox",
    )
    assert type(svc.serving).__name__ == "AzureMLServing"
