"""Settings are validated at start-up; a wrong or missing one is named in the error."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError, check_cloud_settings, load_settings


def test_defaults_are_the_embedded_default(monkeypatch):
    for name in ("SIGNALBOX_BUS", "SIGNALBOX_SERVING", "SIGNALBOX_EVENTS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.bus, settings.serving, settings.events, settings.landing) == ("local", "local", "local", "local")
    check_cloud_settings(settings, {"local"})


def test_a_wrong_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("SIGNALBOX_BUS", "kafka")
    with pytest.raises(SettingsError, match="SIGNALBOX_BUS"):
        load_settings()


@pytest.mark.parametrize(
    ("values", "backends", "named"),
    [
        ({"SIGNALBOX_BUS": "servicebus"}, set(), "ServiceBusConnection__fullyQualifiedNamespace"),
        ({"SIGNALBOX_EVENTS": "eventgrid"}, set(), "SIGNALBOX_EVENTGRID_ENDPOINT"),
        ({}, {"databricks"}, "training.backend databricks needs DATABRICKS_HOST"),
        ({"AZUREML_WORKSPACE": "ws"}, {"azureml"}, "AZUREML_SUBSCRIPTION_ID, AZUREML_RESOURCE_GROUP"),
        ({"SIGNALBOX_SERVING": "azureml"}, set(), "SIGNALBOX_SERVING=azureml needs AZUREML_SUBSCRIPTION_ID"),
        ({"SIGNALBOX_REGISTRY": "azureml"}, set(), "SIGNALBOX_REGISTRY=azureml needs"),
        ({"SIGNALBOX_REGISTRY": "azureml"}, set(), "SIGNALBOX_SERVING=local cannot serve models from"),
        (
            {
                "SIGNALBOX_SERVING": "databricks",
                "DATABRICKS_HOST": "https://adb.example",
                "MLFLOW_TRACKING_URI": "sqlite:///x.db",
            },
            set(),
            "needs a shared MLFLOW_TRACKING_URI",
        ),
    ],
)
def test_missing_cloud_settings_fail_at_start_up_by_name(values, backends, named):
    settings = Settings.model_validate(values)
    with pytest.raises(SettingsError) as raised:
        check_cloud_settings(settings, backends)
    assert named in str(raised.value)


def test_complete_cloud_settings_pass():
    settings = Settings.model_validate(
        {
            "SIGNALBOX_BUS": "servicebus",
            "ServiceBusConnection__fullyQualifiedNamespace": "sb-signalbox.servicebus.windows.net",
            "SIGNALBOX_EVENTS": "eventgrid",
            "SIGNALBOX_EVENTGRID_ENDPOINT": "https://topic.westeurope-1.eventgrid.azure.net/api/events",
            "SIGNALBOX_SERVING": "databricks",
            "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
            "MLFLOW_TRACKING_URI": "databricks",
        }
    )
    check_cloud_settings(settings, {"databricks", "local"})


def test_secrets_are_kept_out_of_the_settings_repr():
    settings = Settings.model_validate(
        {"ServiceBusConnection": "Endpoint=sb://x/;SharedAccessKey=TOPSECRET", "DATABRICKS_TOKEN": "dapiTOPSECRET"}
    )
    assert "TOPSECRET" not in repr(settings)


def test_an_unresolved_key_vault_reference_is_refused_by_name():
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/github-webhook/)"
    with pytest.raises(Exception, match="unresolved Key Vault reference"):
        Settings.model_validate({"SIGNALBOX_GITHUB_WEBHOOK_SECRET": reference})
