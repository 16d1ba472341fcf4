"""infra/ (Bicep) and .github/workflows, checked without a Bicep compiler.

pycep parses every template (a syntax error fails here); the checks then follow the parsed
expressions: the queues come from shared/queues.json, every setting the code reads is an app
setting, the Event Grid filter and SIGNALBOX_LANDING_CONTAINER share one parameter, no secret is
written down, every role goes to the managed identity, and the workflows deploy with OIDC.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lark.exceptions import LarkError
from pycep import BicepParser

from shared.events import BLOB_CREATED_TYPE, DRIFT_ALERT_TYPE
from shared.queues import parse_iso_duration
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MAIN = INFRA / "main.bicep"
QUEUES_JSON = REPO / "shared" / "queues.json"
WORKFLOWS = REPO / ".github" / "workflows"

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
PARAMETER_FILES = sorted((INFRA / "parameters").glob("*.parameters.json"))
ENVIRONMENTS = ("dev", "staging", "prod")

# Built-in role definition ids (learn.microsoft.com/azure/role-based-access-control/built-in-roles)
# and the one resource type each may be assigned on: the identity gets these and nothing else.
EXPECTED_ROLES = {
    ("69a216fc-b8fb-44d8-bc22-1f3c2cd27a39", "Microsoft.ServiceBus/namespaces"),  # Service Bus Data Sender
    ("4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0", "Microsoft.ServiceBus/namespaces"),  # Service Bus Data Receiver
    ("b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "Microsoft.Storage/storageAccounts"),  # Storage Blob Data Owner
    ("2a2b9908-6ea1-4ae2-8e65-a410df84e7d1", "Microsoft.Storage/storageAccounts"),  # Storage Blob Data Reader
    ("4633458b-17de-408a-b874-0445c86b69e6", "Microsoft.KeyVault/vaults"),  # Key Vault Secrets User
    ("d5a91429-5739-47e2-a06b-3470a27159e7", "Microsoft.EventGrid/topics"),  # EventGrid Data Sender
    ("43d0d8ad-25c7-4714-9337-8ba259a9fe05", "Microsoft.ServiceBus/namespaces"),  # Monitoring Reader (queue depths)
    ("f6c7c914-8db3-469d-8ca1-694a8f32e121", "Microsoft.MachineLearningServices/workspaces"),  # AzureML Data Scientist
}
# Roles the identity must not get: data or management rights beyond what the app uses.
FORBIDDEN_ROLES = {
    "090c5cfd-751d-490a-894a-3ce6f1109419": "Azure Service Bus Data Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
}
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"

# Environment variables the code reads outside Settings that are deliberately not app settings in Azure.
LOCAL_ONLY_ENVIRONMENT = {
    "SIGNALBOX_QUEUES_FILE",  # tests point the code at another queue definition
    "DATABRICKS_CONFIG_PROFILE",  # a ~/.databrickscfg profile on a workstation
    "PYTHONPATH",  # extended for local training jobs, never configured
    # shared/adapters/databricks/mlflow_auth.py: whether to sign in to Databricks with the managed identity.
    "IDENTITY_ENDPOINT",  # set by App Service / Functions themselves wherever a managed identity exists
    "DATABRICKS_AUTH_TYPE",  # databricks-sdk's own switch (azure-msi), for a machine without IDENTITY_ENDPOINT
    "ARM_USE_MSI",  # the same, in the Terraform/databricks-sdk spelling
    "DATABRICKS_CLIENT_SECRET",  # a service principal secret instead of the identity: never in Azure's settings
}


# --------------------------------------------------------------------------------------------------
# parsing helpers


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def bicep(path: Path) -> dict[str, Any]:
    return _parser().parse(file_path=path)


def unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource/module, whether plain, conditional (`if`) or a loop (`for`)."""
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def path_of(expr: Any) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; a plain identifier as [name]; None for anything else."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        operands = expr["operator"]["operands"]
        left, right = path_of(operands["operand_1"]), path_of(operands["operand_2"])
        if left is not None and right is not None:
            return left + right
    return None


def root_of(expr: Any) -> str | None:
    """The identifier an accessor chain starts from (`a` in `a.b[0].c`), if it starts from one."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and "operator" in expr:
        operator = expr["operator"]
        if operator.get("type") in ("property_accessor", "index_accessor", "nested_resource_accessor"):
            return root_of(operator["operands"]["operand_1"])
    return None


def resources(doc: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in doc.get("resources", {}).items() if res["type"] == type_}


def one_resource(doc: dict[str, Any], type_: str) -> tuple[str, dict[str, Any]]:
    found = resources(doc, type_)
    assert len(found) == 1, f"expected one {type_}, found {sorted(found)}"
    return next(iter(found.items()))


def module_file(name: str) -> Path:
    return INFRA / "modules" / f"{name}.bicep"


def main_module(path: Path) -> dict[str, Any]:
    """main.bicep's module declaration that deploys ``path``."""
    found = [mod for mod in bicep(MAIN)["modules"].values() if (MAIN.parent / mod["detail"]["path"]).resolve() == path]
    assert len(found) == 1, f"main.bicep should deploy {path.relative_to(REPO)} once"
    return found[0]


def passed(path: Path, param: str) -> Any:
    """The expression main.bicep passes to parameter ``param`` of module ``path``."""
    params = unwrap(main_module(path)["config"])["params"]
    assert param in params, f"main.bicep passes no {param} to {path.name}"
    return params[param]


def symbols(node: Any) -> Iterator[str]:
    """Identifiers an expression reads: roots of accessor chains and of `${...}` interpolations."""
    if isinstance(node, str):
        yield from re.findall(r"\$\{\s*([A-Za-z_]\w*)\b(?!\s*\()", node)
    elif isinstance(node, dict):
        operator = node.get("operator")
        if isinstance(operator, dict) and operator.get("type") == "property_accessor":
            left = operator["operands"]["operand_1"]
            if isinstance(left, str):
                yield left
            else:
                yield from symbols(left)
            return  # operand_2 names members, not symbols
        if isinstance(operator, dict) and operator.get("type") == "index_accessor":
            left = operator["operands"]["operand_1"]
            if isinstance(left, str):
                yield left
            else:
                yield from symbols(left)
            yield from symbols(operator["operands"]["operand_2"])
            return
        for key, value in node.items():
            yield from symbols(key)
            yield from symbols(value)
    elif isinstance(node, list):
        for item in node:
            yield from symbols(item)


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def app_settings() -> dict[str, Any]:
    doc = bicep(module_file("functionapp"))
    configs = [
        unwrap(r["config"])
        for r in resources(doc, "Microsoft.Web/sites/config").values()
        if unwrap(r["config"])["name"] == "appsettings"
    ]
    assert len(configs) == 1, "functionapp.bicep should have one sites/config 'appsettings' resource"
    properties = configs[0]["properties"]
    assert isinstance(properties, dict), "the app settings should be written out as an object"
    return properties


def settings_the_code_reads() -> set[str]:
    fields = {field.alias for field in Settings.model_fields.values() if field.alias}
    return fields | {"ServiceBusConnection__fullyQualifiedNamespace"}


def environment_reads() -> set[str]:
    """Names the deployed code reads with os.environ.get / os.environ[...] / os.getenv."""
    names: set[str] = set()
    sources = [REPO / "function_app.py", *sorted((REPO / "shared").rglob("*.py")), *(REPO / "functions").glob("*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            target: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and (
                    (func.attr == "get" and ast.unparse(func.value) == "os.environ")
                    or (func.attr == "getenv" and ast.unparse(func.value) == "os")
                ):
                    target = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                target = node.slice
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                names.add(target.value)
    return names


# --------------------------------------------------------------------------------------------------
# every template parses


def test_the_templates_are_there():
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert "main.bicep" in names
    for module in ("functionapp", "servicebus", "landing", "topic", "subscriptions", "keyvault", "monitoring"):
        assert f"modules/{module}.bicep" in names
    assert {p.name for p in PARAMETER_FILES} == {f"{env}.parameters.json" for env in ENVIRONMENTS}


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_bicep_file_parses(path):
    doc = bicep(path)
    assert doc.get("resources") or doc.get("modules"), f"{path.name} declares nothing"


def test_a_syntax_error_does_not_parse():
    broken = "param name string\nresource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: name\n"
    with pytest.raises(LarkError):
        _parser().parse(text=broken)


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_modules_resolve_and_get_exactly_their_parameters(path):
    for name, module in bicep(path).get("modules", {}).items():
        target = (path.parent / module["detail"]["path"]).resolve()
        assert target.is_file(), f"{path.name}: module {name} points at a missing {target}"
        declared = bicep(target).get("parameters", {})
        given = set(unwrap(module["config"]).get("params", {}))
        assert given <= set(declared), f"{path.name}: module {name} passes unknown {sorted(given - set(declared))}"
        required = {p for p, spec in declared.items() if spec.get("default") is None}
        assert required <= given, f"{path.name}: module {name} misses required {sorted(required - given)}"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_symbol_used_is_declared(path):
    """A poor man's compiler check: accessor chains, interpolations, parent/scope/dependsOn name symbols."""
    doc = bicep(path)
    declared = set()
    for section in ("parameters", "variables", "resources", "modules"):
        declared |= set(doc.get(section, {}))
    for node in walk(doc):
        if isinstance(node, dict) and "loop_type" in node:
            detail = node["loop_type"]["detail"]
            declared |= {v for k, v in detail.items() if k != "array_name" and isinstance(v, str)}
    used = set(symbols(doc))
    for section in ("resources", "modules"):
        for item in doc.get(section, {}).values():
            config = unwrap(item["config"])
            for key in ("parent", "scope"):
                if isinstance(config.get(key), str):
                    used.add(config[key])
            used |= {d for d in config.get("dependsOn", []) if isinstance(d, str)}
    assert used <= declared, f"{path.name}: undeclared {sorted(used - declared)}"


# --------------------------------------------------------------------------------------------------
# Service Bus: the queues are shared/queues.json


def _queue_resource() -> tuple[Path, dict[str, Any]]:
    found = [
        (path, res)
        for path in BICEP_FILES
        for res in resources(bicep(path), "Microsoft.ServiceBus/namespaces/queues").values()
    ]
    assert len(found) == 1, "one queue resource (a loop over the queue definitions) is expected"
    return found[0]


def test_queues_are_loaded_from_shared_queues_json():
    loads = [
        (name, var["value"])
        for name, var in bicep(MAIN).get("variables", {}).items()
        if "load_json_content" in json.dumps(var["value"])
    ]
    assert len(loads) == 1, "main.bicep should load the queues with loadJsonContent once"
    variable, value = loads[0]
    function = value["operator"]["operands"]["operand_1"]["function"]
    assert function["type"] == "load_json_content"
    assert value["operator"]["operands"]["operand_2"] == "queues"
    assert (MAIN.parent / function["parameters"]["file_path"]).resolve() == QUEUES_JSON.resolve()
    assert QUEUES_JSON.is_file()

    # The loaded array reaches the module that loops over it.
    path, queue = _queue_resource()
    array = queue["config"]["loop_type"]["detail"]["array_name"]
    if path != MAIN:
        assert array in bicep(path)["parameters"], f"{path.name} should loop over a parameter"
        assert passed(path, array) == variable, f"main.bicep should pass {variable} to {path.name}:{array}"
    else:
        assert array == variable


def test_each_queue_property_maps_its_json_field():
    _, queue = _queue_resource()
    item = queue["config"]["loop_type"]["detail"]["item_name"]
    body = unwrap(queue["config"])
    assert path_of(body["name"]) == [item, "name"]
    properties = body["properties"]
    entries = json.loads(QUEUES_JSON.read_text())["queues"]
    fields = set().union(*entries) - {"name", "purpose"}
    assert fields, "queues.json defines no queue settings"
    for field in sorted(fields):
        assert field in properties, f"queue property {field} is not set from queues.json"
        assert path_of(properties[field]) == [item, field], f"{field} should be {item}.{field}"
    assert properties["requiresDuplicateDetection"] is True


def test_queues_json_values_are_ones_service_bus_accepts():
    for entry in json.loads(QUEUES_JSON.read_text())["queues"]:
        name = entry["name"]
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,259}", name)
        lock = parse_iso_duration(entry["lockDuration"]).total_seconds()
        assert 5 <= lock <= 300, f"{name}: lockDuration must be PT5S..PT5M"
        window = parse_iso_duration(entry["duplicateDetectionHistoryTimeWindow"]).total_seconds()
        assert 20 <= window <= 7 * 86400, f"{name}: duplicate detection window must be PT20S..P7D"
        assert parse_iso_duration(entry["defaultMessageTimeToLive"]).total_seconds() > 0
        assert 1 <= entry["maxDeliveryCount"] <= 2000
        assert isinstance(entry["requiresSession"], bool)
        assert isinstance(entry["deadLetteringOnMessageExpiration"], bool)


def test_a_crashed_worker_s_messages_and_sessions_return_within_a_minute():
    """Short locks in Azure (the queue resource takes lockDuration from queues.json, checked above),
    renewed by the Functions host for as long as a function may run.

    The Service Bus extension (v5) renews message locks and, for session triggers, session locks for
    host.json's ``extensions.serviceBus.maxAutoLockRenewalDuration`` (default 00:05:00); past that a
    lock lapses while the function still runs and the message is delivered a second time.
    """
    from signalbox.localhost.config import parse_timespan

    host = json.loads((REPO / "host.json").read_text())
    renewal = parse_timespan(host["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"], where="host.json")
    timeout = parse_timespan(host["functionTimeout"], where="host.json")
    assert renewal >= timeout, "a lock must be renewed for as long as a function may run"
    for entry in json.loads(QUEUES_JSON.read_text())["queues"]:
        lock = parse_iso_duration(entry["lockDuration"])
        assert lock.total_seconds() <= 60, f"{entry['name']}: a crashed worker's lock would hold for {lock}"
        assert renewal > lock


def test_no_queue_name_is_written_in_bicep():
    names = {entry["name"] for entry in json.loads(QUEUES_JSON.read_text())["queues"]}
    for path in BICEP_FILES:
        literals = set(re.findall(r"'([^'$]*)'", path.read_text()))
        assert not literals & names, f"{path.name} writes queue names {sorted(literals & names)}: use queues.json"


def test_service_bus_is_standard_with_identity_only_access():
    _, namespace = one_resource(bicep(module_file("servicebus")), "Microsoft.ServiceBus/namespaces")
    body = unwrap(namespace["config"])
    assert body["sku"]["name"] == "Standard"
    assert body["properties"]["disableLocalAuth"] is True


# --------------------------------------------------------------------------------------------------
# app settings


def test_every_setting_the_code_reads_is_an_app_setting_and_in_the_sample():
    settings = app_settings()
    sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    for name in sorted(settings_the_code_reads()):
        assert name in settings, f"{name} is missing from the app settings in infra/modules/functionapp.bicep"
        assert name in sample, f"{name} is missing from local.settings.sample.json"


def test_every_environment_variable_the_deployed_code_reads_is_an_app_setting():
    missing = environment_reads() - set(app_settings()) - LOCAL_ONLY_ENVIRONMENT
    assert not missing, f"read by the code but not set in Azure: {sorted(missing)}"


def test_connections_use_the_managed_identity():
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert path_of(settings["AzureWebJobsStorage__accountName"]) == ["storage", "name"]
    for name in ("AzureWebJobsStorage__clientId", "ServiceBusConnection__clientId", "AZURE_CLIENT_ID"):
        assert settings[name] == "identityClientId", name
    assert path_of(passed(module_file("functionapp"), "identityClientId")) == ["identity", "outputs", "clientId"]
    assert settings["ServiceBusConnection__fullyQualifiedNamespace"] == "serviceBusFullyQualifiedNamespace"
    assert path_of(passed(module_file("functionapp"), "serviceBusFullyQualifiedNamespace")) == [
        "serviceBus",
        "outputs",
        "fullyQualifiedNamespace",
    ]
    # No connection string or key: the identity-based settings are the only way in.
    assert settings["ServiceBusConnection"] == ""
    assert settings["SIGNALBOX_EVENTGRID_KEY"] == ""
    assert "AzureWebJobsStorage" not in settings
    assert path_of(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == [
        "appInsights",
        "properties",
        "ConnectionString",
    ]
    assert (settings["SIGNALBOX_BUS"], settings["SIGNALBOX_LANDING"], settings["SIGNALBOX_EVENTS"]) == (
        "servicebus",
        "blob",
        "eventgrid",
    )


def test_webhook_secrets_are_key_vault_references():
    settings = app_settings()
    for name in (
        "SIGNALBOX_MLFLOW_WEBHOOK_SECRET",
        "SIGNALBOX_GITHUB_WEBHOOK_SECRET",
        "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET",
    ):
        value = settings[name]
        assert isinstance(value, str), name
        assert re.fullmatch(r"@Microsoft\.KeyVault\(SecretUri=\$\{keyVaultUri\}secrets/\$\{[\w.]+\}/\)", value), name
    _, site = one_resource(bicep(module_file("functionapp")), "Microsoft.Web/sites")
    assert unwrap(site["config"])["properties"]["keyVaultReferenceIdentity"] == "identityId"
    _, vault = one_resource(bicep(module_file("keyvault")), "Microsoft.KeyVault/vaults")
    assert unwrap(vault["config"])["properties"]["enableRbacAuthorization"] is True
    for path in BICEP_FILES:
        assert not resources(bicep(path), "Microsoft.KeyVault/vaults/secrets"), f"{path.name} writes a secret"


def test_function_app_runs_on_flex_consumption_with_python_3_11():
    doc = bicep(module_file("functionapp"))
    _, plan = one_resource(doc, "Microsoft.Web/serverfarms")
    assert unwrap(plan["config"])["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    _, site = one_resource(doc, "Microsoft.Web/sites")
    body = unwrap(site["config"])
    assert body["kind"] == "functionapp,linux"
    config = body["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert {"maximumInstanceCount", "instanceMemoryMB"} <= set(config["scaleAndConcurrency"])
    # Flex Consumption takes the runtime from functionAppConfig and rejects these settings.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"} & set(
        app_settings()
    )


# --------------------------------------------------------------------------------------------------
# Event Grid


def _subscription(type_: str, function: str) -> dict[str, Any]:
    doc = bicep(module_file("subscriptions"))
    found = [
        unwrap(res["config"])["properties"]
        for res in resources(doc, type_).values()
        if str(unwrap(res["config"])["properties"]["destination"]["properties"]["resourceId"]).endswith(
            f"/functions/{function}"
        )
    ]
    assert len(found) == 1, f"one {type_} to {function} expected"
    return found[0]


def _event_grid_functions() -> set[str]:
    names = set()
    for source in (REPO / "functions").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "event_grid_trigger"
                for d in node.decorator_list
            ):
                names.add(node.name)
    return names


def test_landing_subscription_filters_blob_created_under_the_landing_container():
    landing = _subscription("Microsoft.EventGrid/systemTopics/eventSubscriptions", "landing_events")
    assert landing["destination"]["endpointType"] == "AzureFunction"
    assert landing["destination"]["properties"]["resourceId"] == "${functionApp.id}/functions/landing_events"
    assert landing["filter"]["includedEventTypes"] == [BLOB_CREATED_TYPE]
    match = re.fullmatch(r"/blobServices/default/containers/\$\{(\w+)\}/", landing["filter"]["subjectBeginsWith"])
    assert match, "subjectBeginsWith should be '/blobServices/default/containers/${<parameter>}/'"
    subscriptions_param = match.group(1)
    assert subscriptions_param in bicep(module_file("subscriptions"))["parameters"]

    # One main.bicep parameter feeds the filter, SIGNALBOX_LANDING_CONTAINER and the container itself.
    main_param = passed(module_file("subscriptions"), subscriptions_param)
    assert isinstance(main_param, str) and main_param in bicep(MAIN)["parameters"]
    setting = app_settings()["SIGNALBOX_LANDING_CONTAINER"]
    assert isinstance(setting, str) and passed(module_file("functionapp"), setting) == main_param
    _, container = one_resource(
        bicep(module_file("landing")), "Microsoft.Storage/storageAccounts/blobServices/containers"
    )
    assert passed(module_file("landing"), unwrap(container["config"])["name"]) == main_param


def test_subscriptions_retry_and_dead_letter():
    for type_, function in (
        ("Microsoft.EventGrid/systemTopics/eventSubscriptions", "landing_events"),
        ("Microsoft.EventGrid/topics/eventSubscriptions", "alert_events"),
    ):
        properties = _subscription(type_, function)
        assert {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"} <= set(properties["retryPolicy"])
        dead_letter = properties["deadLetterWithResourceIdentity"]["deadLetterDestination"]
        assert dead_letter["endpointType"] == "StorageBlob"
        assert dead_letter["properties"]["blobContainerName"]


def test_drift_alerts_reach_alert_events_and_nothing_else_does():
    drift = _subscription("Microsoft.EventGrid/topics/eventSubscriptions", "alert_events")
    assert drift["destination"]["endpointType"] == "AzureFunction"
    assert drift["filter"]["includedEventTypes"] == [DRIFT_ALERT_TYPE]


def test_subscribed_functions_are_event_grid_triggers_of_the_app():
    text = module_file("subscriptions").read_text() + module_file("workspace").read_text()
    targets = set(re.findall(r"/functions/(\w+)'", text))
    assert targets == {"landing_events", "alert_events", "workspace_events"}
    assert targets == _event_grid_functions(), "every Event Grid trigger of the app gets its subscription"


def test_subscriptions_are_a_second_stage_off_by_default():
    mod = main_module(module_file("subscriptions"))
    assert mod["config"].get("condition") == "createEventSubscriptions"
    assert bicep(MAIN)["parameters"]["createEventSubscriptions"]["default"] is False


# --------------------------------------------------------------------------------------------------
# the Azure ML workspace: role, system topic, workspace_events


def _workspace_events() -> dict[str, Any]:
    doc = bicep(module_file("workspace"))
    _, subscription = one_resource(doc, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    return subscription


def test_the_workspace_module_runs_in_the_workspace_group_when_a_workspace_is_given():
    module = main_module(module_file("workspace"))
    condition = module["config"]["condition"]
    assert condition["operator"]["type"] == "not"
    assert condition["operator"]["operands"]["bool_value"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "azuremlWorkspace"},
    }
    scope = unwrap(module["config"])["scope"]["function"]
    assert scope["type"] == "resource_group"
    assert path_of(scope["parameters"]["subscription_id"]) == ["azuremlScope", "subscriptionId"]
    assert path_of(scope["parameters"]["resource_group_name"]) == ["azuremlScope", "resourceGroup"]
    assert passed(module_file("workspace"), "workspaceName") == "azuremlWorkspace"
    # The same workspace the app settings name (AZUREML_WORKSPACE).
    assert app_settings()["AZUREML_WORKSPACE"] == "azuremlWorkspace"
    assert passed(module_file("functionapp"), "azuremlWorkspace") == "azuremlWorkspace"
    # The subscription waits for the published functions, like the other subscriptions.
    assert passed(module_file("workspace"), "createEventSubscription") == "createEventSubscriptions"
    assert "roles" in unwrap(module["config"]).get("dependsOn", [])


def test_the_workspace_system_topic_is_the_workspaces_and_dead_letters_with_the_identity():
    doc = bicep(module_file("workspace"))
    _, topic = one_resource(doc, "Microsoft.EventGrid/systemTopics")
    body = unwrap(topic["config"])
    assert body["properties"]["topicType"] == "Microsoft.MachineLearningServices.Workspaces"
    assert path_of(body["properties"]["source"]) == ["workspace", "id"]
    assert path_of(body["location"]) == ["workspace", "location"]  # a system topic lives in its source's region
    assert list(body["identity"]["userAssignedIdentities"]) == ["'${identity.id}'"]
    workspace = doc["resources"]["workspace"]
    assert workspace["existing"] is True and workspace["type"] == "Microsoft.MachineLearningServices/workspaces"


def test_workspace_events_get_the_four_azure_ml_event_types():
    from shared.events import (
        DATASET_DRIFT_DETECTED_TYPE,
        MODEL_REGISTERED_TYPE,
        RUN_COMPLETED_TYPE,
        RUN_STATUS_CHANGED_TYPE,
    )

    subscription = _workspace_events()
    assert subscription["config"]["condition"] == "createEventSubscription"
    properties = unwrap(subscription["config"])["properties"]
    destination = properties["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"] == "${functionAppId}/functions/workspace_events"
    assert path_of(passed(module_file("workspace"), "functionAppId")) == ["functionApp", "outputs", "id"]
    assert properties["eventDeliverySchema"] == "EventGridSchema"  # workspace_events binds an EventGridEvent
    assert set(properties["filter"]["includedEventTypes"]) == {
        MODEL_REGISTERED_TYPE,
        RUN_COMPLETED_TYPE,
        RUN_STATUS_CHANGED_TYPE,
        DATASET_DRIFT_DETECTED_TYPE,
    }
    assert {"maxDeliveryAttempts", "eventTimeToLiveInMinutes"} <= set(properties["retryPolicy"])
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"]["type"] == "UserAssigned"
    assert path_of(dead_letter["identity"]["userAssignedIdentity"]) == ["identity", "id"]  # the topic's identity
    assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
    assert path_of(passed(module_file("workspace"), "deadLetterStorageAccountId")) == [
        "functionApp",
        "outputs",
        "storageAccountId",
    ]
    assert path_of(passed(module_file("workspace"), "deadLetterContainer")) == [
        "functionApp",
        "outputs",
        "deadLetterContainer",
    ]


def test_each_environment_subscribes_under_its_own_name():
    # A workspace may serve several environments: one subscription each, none overwriting another's.
    name = unwrap(_workspace_events()["config"])["name"]
    assert name == "eventSubscriptionName"
    assert "${environmentName}" in passed(module_file("workspace"), "eventSubscriptionName")


# --------------------------------------------------------------------------------------------------
# queue depths: Azure Monitor metrics with a reader role, no Service Bus Data Owner


def test_queue_depths_read_metrics_of_the_namespace_the_app_uses():
    settings = app_settings()
    assert settings["SIGNALBOX_SERVICEBUS_RESOURCE_ID"] == "serviceBusResourceId"
    assert path_of(passed(module_file("functionapp"), "serviceBusResourceId")) == ["serviceBus", "outputs", "id"]
    doc = bicep(module_file("roles"))
    role_ids = doc["variables"]["roles"]["value"]
    readers = [
        unwrap(res["config"])
        for res in resources(doc, "Microsoft.Authorization/roleAssignments").values()
        if role_ids[
            path_of(
                unwrap(res["config"])["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
            )[1]
        ]
        == "43d0d8ad-25c7-4714-9337-8ba259a9fe05"
    ]
    assert len(readers) == 1 and readers[0]["scope"] == "serviceBus"  # the namespace, not the group


def test_no_template_grants_an_owner_or_data_owner_role():
    for path in BICEP_FILES:
        text = path.read_text().lower()
        for role_id, role in FORBIDDEN_ROLES.items():
            assert role_id not in text, f"{path.name} grants {role}"


def test_the_deployment_identity_may_assign_exactly_the_template_roles():
    """docs/deploy.md constrains the deployment identity's RBAC Administrator to the roles the templates assign."""
    text = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(r'ROLES="([^"]+)"', text)
    assert match, "docs/deploy.md should list the assignable roles in ROLES=..."
    listed = {role.strip() for role in match.group(1).split(",")}
    assert listed == {role for role, _ in EXPECTED_ROLES}


# --------------------------------------------------------------------------------------------------
# no secret in infra/


_FORBIDDEN = re.compile(
    r"AccountKey=|SharedAccessKey=|SharedAccessSignature|DefaultEndpointsProtocol=|[?&]sig=|"
    r"-----BEGIN|listKeys\(|listConnectionStrings\(|listSecrets\(",
    re.IGNORECASE,
)
_BASE64 = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")
_HEX = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_SENSITIVE_NAME = re.compile(
    r"password|secret|token|apikey|accesskey|accountkey|sharedkey|connectionstring|credential|key$", re.IGNORECASE
)


def secrets_in(text: str) -> list[str]:
    found = [m.group(0) for m in _FORBIDDEN.finditer(text)]
    found += [
        m.group(0)
        for m in _BASE64.finditer(text)
        if re.search(r"\d", m.group(0)) and re.search(r"[a-z]", m.group(0)) and re.search(r"[A-Z]", m.group(0))
    ]
    found += [m.group(0) for m in _HEX.finditer(text)]
    return found


def sensitive(name: str) -> bool:
    """A name that suggests a secret value (a secret's *name* or URI is not one)."""
    return bool(_SENSITIVE_NAME.search(name)) and not re.search(r"(Name|Names|Uri|Url|Id|Ids)$", name)


def test_the_secret_scanner_catches_keys():
    key = base64.b64encode(bytes(range(7, 55))).decode()
    assert secrets_in(f"value: '{key}'")
    assert secrets_in(f"value: '{hashlib.sha256(b'x').hexdigest()}'")
    assert secrets_in("'Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=b'")
    assert secrets_in("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=b")
    assert sensitive("adminPassword") and sensitive("githubWebhookSecret") and sensitive("eventGridKey")
    assert not sensitive("databricksTokenSecretName") and not sensitive("keyVaultPurgeProtection")


@pytest.mark.parametrize(
    "path",
    sorted(p for p in INFRA.rglob("*") if p.is_file()),
    ids=lambda p: p.relative_to(INFRA).as_posix(),
)
def test_no_secret_literal_in_infra(path):
    assert not secrets_in(path.read_text(encoding="utf-8")), f"{path.name} looks like it contains a secret"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_secret_parameters_are_secure(path):
    for name, spec in bicep(path).get("parameters", {}).items():
        if sensitive(name):
            types = {d["type"] for d in spec["decorators"]}
            assert "secure" in types, f"{path.name}: parameter {name} holds a secret and needs @secure()"
            assert spec.get("default") in (None, ""), f"{path.name}: secure parameter {name} has a default"


@pytest.mark.parametrize("path", PARAMETER_FILES, ids=lambda p: p.name)
def test_parameter_files_match_main_and_give_no_secret(path):
    document = json.loads(path.read_text())
    assert document["$schema"].endswith("deploymentParameters.json#")
    given = document["parameters"]
    declared = bicep(MAIN)["parameters"]
    assert set(given) <= set(declared), f"{path.name}: unknown {sorted(set(given) - set(declared))}"
    required = {name for name, spec in declared.items() if spec.get("default") is None}
    assert required <= set(given), f"{path.name}: missing {sorted(required - set(given))}"
    for name, entry in given.items():
        assert "value" in entry or "reference" in entry, name
        assert not (sensitive(name) and "value" in entry), f"{path.name}: {name} should be a Key Vault reference"
        for decorator in declared[name]["decorators"]:
            if decorator["type"] == "allowed":
                assert entry["value"] in decorator["argument"], f"{path.name}: {name}={entry['value']!r}"
    assert given["environmentName"]["value"] == path.name.split(".")[0]


def test_catalogue_models_land_in_the_subscribed_container():
    catalogue = tomllib.loads((REPO / "catalogue.toml").read_text())
    containers = {model["data"]["container"] for model in catalogue["models"].values() if "data" in model}
    default = bicep(MAIN)["parameters"]["landingContainer"]["default"]
    for path in PARAMETER_FILES:
        landing = json.loads(path.read_text())["parameters"].get("landingContainer", {}).get("value", default)
        assert containers <= {landing}, f"{path.name}: catalogue containers {sorted(containers)} get no BlobCreated"


# --------------------------------------------------------------------------------------------------
# RBAC: every role to the managed identity, least privilege


def test_every_role_assignment_is_for_the_managed_identity():
    assignments = []
    for path in BICEP_FILES:
        doc = bicep(path)
        identities = set(resources(doc, "Microsoft.ManagedIdentity/userAssignedIdentities"))
        role_ids = doc.get("variables", {}).get("roles", {}).get("value", {})
        for name, res in resources(doc, "Microsoft.Authorization/roleAssignments").items():
            body = unwrap(res["config"])
            properties = body["properties"]
            principal = path_of(properties["principalId"])
            assert principal is not None and len(principal) == 3, f"{path.name}:{name}"
            assert principal[0] in identities and principal[1:] == ["properties", "principalId"], (
                f"{path.name}:{name} should be for the managed identity's principalId"
            )
            assert properties["principalType"] == "ServicePrincipal"
            function = properties["roleDefinitionId"]["function"]
            assert function["type"] == "subscription_resource_id"
            assert function["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
            role = path_of(function["parameters"]["resource_name_1"])
            assert role is not None and role[0] == "roles", f"{path.name}:{name}: use the roles variable"
            scope = doc["resources"][body["scope"]]
            assignments.append((path, role_ids[role[1]], scope))
    assert {(role, scope["type"]) for _, role, scope in assignments} == EXPECTED_ROLES
    assert len(assignments) == len(EXPECTED_ROLES)

    # The identity is the one main.bicep creates; Blob Data Owner is on the app's own storage, Reader on landing.
    for path, role, scope in assignments:
        if role == AZUREML_DATA_SCIENTIST:  # on the workspace, in the workspace's resource group
            assert path == module_file("workspace")
            assert path_of(passed(path, "identityName")) == ["identity", "outputs", "name"]
            assert passed(path, "identityResourceGroup")["operator"]["operands"]["operand_2"] == "name"
            continue
        assert path == module_file("roles")
        storage_param = unwrap(scope["config"])["name"]
        if role == BLOB_DATA_OWNER:
            assert root_of(passed(path, storage_param)) == "functionApp"
        if role == BLOB_DATA_READER:
            assert root_of(passed(path, storage_param)) == "landing"
    identity = one_resource(bicep(module_file("roles")), "Microsoft.ManagedIdentity/userAssignedIdentities")[1]
    assert path_of(passed(module_file("roles"), unwrap(identity["config"])["name"])) == ["identity", "outputs", "name"]


# --------------------------------------------------------------------------------------------------
# GitHub Actions


def workflow(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_workflows_parse(path):
    document = workflow(path.name)
    assert document["on"] and document["jobs"]


def test_ci_runs_the_ci_command_on_python_3_11():
    ci = workflow("ci.yml")
    assert {"pull_request", "push"} <= set(ci["on"])
    all_steps = [step for job in ci["jobs"].values() for step in steps(job)]
    setup = [s for s in all_steps if str(s.get("uses", "")).startswith("actions/setup-python@")]
    assert setup and str(setup[0]["with"]["python-version"]) == "3.11"
    assert any(s.get("run", "").strip() == ".ci/run" for s in all_steps)


def test_deploy_uses_oidc_and_maps_main_to_staging_and_release_to_prod():
    deploy = workflow("deploy.yml")
    assert set(deploy["on"]["push"]["branches"]) == {"main", "release"}
    targets = {}
    for name, job in deploy["jobs"].items():
        environment = job.get("environment")
        if environment is None:
            continue
        env_name = environment["name"] if isinstance(environment, dict) else environment
        condition = re.fullmatch(r"github\.ref == 'refs/heads/(\w+)'", job.get("if", ""))
        assert condition, f"deploy.yml job {name} should run for one branch"
        targets[condition.group(1)] = env_name

        permissions = {**deploy.get("permissions", {}), **job.get("permissions", {})}
        assert permissions.get("id-token") == "write", f"{name}: OIDC needs id-token: write"
        job_steps = steps(job)
        login = [s for s in job_steps if s.get("uses") == "azure/login@v2"]
        assert len(login) == 1, f"{name}: one azure/login@v2 step"
        assert set(login[0]["with"]) == {"client-id", "tenant-id", "subscription-id"}, "OIDC, no stored credential"
        assert job["env"]["TARGET"] == env_name

        runs = [(i, s.get("run", "")) for i, s in enumerate(job_steps)]
        deployments = [(i, run) for i, run in runs if "az deployment group create" in run]
        assert len(deployments) == 2, f"{name}: infrastructure, then subscriptions"
        for _, run in deployments:
            assert "--template-file infra/main.bicep" in run
            assert '"@infra/parameters/$TARGET.parameters.json"' in run
        publish = [i for i, s in enumerate(job_steps) if s.get("uses") == "Azure/functions-action@v1"]
        assert len(publish) == 1, f"{name}: one Azure/functions-action@v1 step"
        with_ = job_steps[publish[0]]["with"]
        assert with_["sku"] == "flexconsumption" and with_["remote-build"] is True
        assert "publish-profile" not in with_
        (first, first_run), (second, second_run) = deployments
        assert "createEventSubscriptions=false" in first_run and first < publish[0]
        assert "createEventSubscriptions=true" in second_run and second > publish[0]
    assert targets == {"main": "staging", "release": "prod"}
    assert all((INFRA / "parameters" / f"{env}.parameters.json").is_file() for env in targets.values())
