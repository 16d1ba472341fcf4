"""Hypothesis strategies for the ingress fuzzing: random bytes and JSON, and valid-looking payloads mutated.

Model names come from two pools: the fuzz catalogue's models (input naming them may be valid) and names
that are not in it, including near misses (case, spaces, traversal, look-alike characters); an input
built from the second pool must queue nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.harness import MODELS, MONITORS

# -- leaves and random documents -----------------------------------------------------------------

ASCII_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# What an HTTP header value can carry (requests sends str headers as latin-1; no CR/LF).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=16,
)
random_bytes = st.binary(max_size=3000)

NEAR_MISSES = [
    "FZ-TRAINED",
    "Fz-Trained",
    "fz-trained ",
    " fz-trained",
    "fz-trained\t",
    "fz-train",
    "fz-trainedx",
    "fz_trained",
    "fz-rules2",
    "fz-trained\x00",
    "fz-\u0442rained",  # Cyrillic te
    "\uff46\uff5a-trained",  # fullwidth
    "fz-trained\u200b",  # zero-width space
    "fz-trained%00",
    "iris-classifier",
    "..",
    "../fz-trained",
    "%2e%2e%2ffz-trained",
    "a'; DROP TABLE registered_models; --",
    'x" OR "1"="1',
    "name = 'fz-trained'",
    "",
    " ",
    "*",
    "%",
    "\\",
    "x" * 300,
]
unknown_names = st.one_of(st.sampled_from(NEAR_MISSES), st.text(max_size=40)).filter(
    lambda name: name not in MODELS and name not in MONITORS and not any(f"{m}/" in name for m in MODELS)
)
catalogue_names = st.sampled_from(MODELS)
any_names = st.one_of(catalogue_names, unknown_names)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn in proportion to its weight (``st.one_of`` would merge repeats)."""
    strategies = [strategy for _, strategy in choices]
    indices = [index for index, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indices).flatmap(lambda index: strategies[index])


def chance(numerator: int, denominator: int) -> st.SearchStrategy[bool]:
    """True with probability numerator/denominator (Hypothesis draws small integers far more often)."""
    return st.sampled_from([True] * numerator + [False] * (denominator - numerator))


def versions() -> st.SearchStrategy[Any]:
    """Model versions as the senders write them, and as they should not."""
    return weighted(
        (3, st.integers(min_value=1, max_value=10**6)),
        (2, st.integers(min_value=1, max_value=10**6).map(str)),
        (1, _odd_versions()),
    )


def _odd_versions() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=-3, max_value=40),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.integers(min_value=1, max_value=40).map(str),
        st.sampled_from(["1", "2", "0", "-1", "01", "1.0", "1e3", " 1", "v1", "", "latest", "9" * 40]),
        st.floats(allow_nan=False, allow_infinity=False),
        json_values,
    )


def times() -> st.SearchStrategy[str]:
    """ISO 8601 times Azure sends (7 fractional digits, no offset) and malformed ones."""
    now = datetime.now(UTC)
    valid = st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda t: t.isoformat())
    return weighted((4, valid), (2, st.just(now.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"))), (2, _odd_times(now)))


def _odd_times(now: datetime) -> st.SearchStrategy[str]:
    return st.one_of(
        st.datetimes(
            min_value=datetime(1970, 1, 2),
            max_value=datetime(9998, 1, 1),
            timezones=st.just(UTC),
        ).map(lambda t: t.isoformat()),
        st.just(now.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")),
        st.just((now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")),
        st.sampled_from(["", "Z", "2026-13-40T99:99:99Z", "yesterday", "2026-11-23T10:00:00+25:00", "0"]),
        st.text(max_size=30),
    )


# -- mutation --------------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, template: st.SearchStrategy[dict[str, Any]], max_mutations: int = 3) -> dict[str, Any]:
    """A payload drawn from ``template``, with up to ``max_mutations`` fields removed, retyped or added."""
    payload = json.loads(json.dumps(draw(template)))  # a deep copy
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        targets = [payload, *_nested_dicts(payload)]
        target = draw(st.sampled_from(targets))
        operation = draw(st.sampled_from(["delete", "replace", "retype", "add", "null"]))
        keys = sorted(target)
        if operation == "add" or not keys:
            target[draw(st.text(max_size=12))] = draw(json_values)
            continue
        key = draw(st.sampled_from(keys))
        if operation == "delete":
            del target[key]
        elif operation == "null":
            target[key] = None
        elif operation == "replace":
            target[key] = draw(json_values)
        else:
            value = target[key]
            target[key] = draw(st.sampled_from([[value], {"value": value}, str(value), 0, True, "", [], {}, 1.5, -1]))
    return payload


def _nested_dicts(value: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for item in items:
        if isinstance(item, dict):
            out.append(item)
        if isinstance(item, dict | list):
            out.extend(_nested_dicts(item))
    return out


# -- Event Grid ------------------------------------------------------------------------------------

EVENT_TYPES = {
    "blob": "Microsoft.Storage.BlobCreated",
    "registered": "Microsoft.MachineLearningServices.ModelRegistered",
    "run_completed": "Microsoft.MachineLearningServices.RunCompleted",
    "run_status": "Microsoft.MachineLearningServices.RunStatusChanged",
    "dataset_drift": "Microsoft.MachineLearningServices.DatasetDriftDetected",
    "drift": "io.signalbox.drift.detected",
    "validation": "Microsoft.EventGrid.SubscriptionValidationEvent",
}
WORKSPACE_TOPIC = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/fuzz-workspace"
)
STORAGE_TOPIC = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/fuzzaccount"


def event_type(kind: str) -> st.SearchStrategy[str]:
    exact = EVENT_TYPES[kind]
    return st.sampled_from([exact] * 5 + [exact.upper(), exact.lower(), exact + "x", " " + exact])


def blob_paths() -> st.SearchStrategy[str]:
    prefixes = st.sampled_from([f"{m}/" for m in MODELS] + ["iris/", "", "/", "fz-trained", "FZ-TRAINED/", "other/"])
    names = st.one_of(
        st.sampled_from(
            ["batch-1.csv", "x.csv", "../../etc/passwd", "a/b/c.csv", "%2e%2e/x", "sp ace.csv", "\u00e9.csv"]
        ),
        st.text(min_size=1, max_size=30),
    )
    return st.builds(lambda p, n: p + n, prefixes, names)


@st.composite
def blob_created_data(draw: st.DrawFn, landed_uri: str) -> tuple[str, dict[str, Any]]:
    """(subject, data) of a BlobCreated event: often the landed file, as the Storage topic sends it."""
    if draw(chance(1, 3)):
        path = landed_uri.split("/landing/", 2)[-1]
        data = {"api": "PutBlob", "url": landed_uri, "contentType": "text/csv", "contentLength": 31}
        return f"/blobServices/default/containers/landing/blobs/{path}", data
    container = draw(st.sampled_from(["landing", "landing", "Landing", "other", "", "landing/extra"]))
    path = draw(blob_paths())
    subject = draw(
        st.sampled_from(
            [
                f"/blobServices/default/containers/{container}/blobs/{path}",
                f"blobServices/default/containers/{container}/blobs/{path}",
                f"/containers/{container}/{path}",
                "",
            ]
        )
    )
    url = draw(
        st.one_of(
            st.just(landed_uri),
            st.just(landed_uri + "\x00"),
            st.just(landed_uri.replace("batch-1.csv", "missing.csv")),
            st.builds(lambda p: f"https://fuzzaccount.blob.core.windows.net/{container}/{p}", blob_paths()),
            st.builds(lambda p: f"http://127.0.0.1:10000/devstoreaccount1/{container}/{p}", blob_paths()),
            st.sampled_from(["file:///etc/passwd", "file:///", "/etc/hostname", "ftp://x/y", "", "::::", "file://%00"]),
            st.text(max_size=60),
        )
    )
    data = {
        "api": draw(st.sampled_from(["PutBlob", "CopyBlob", "FlushWithClose"])),
        "url": url,
        "contentType": "text/csv",
        "contentLength": draw(st.one_of(st.integers(min_value=-1, max_value=10**12), st.just("12"), st.just("x"))),
        "blobType": "BlockBlob",
        "eTag": "0x8D",
    }
    return subject, data


def _cased(key: str) -> st.SearchStrategy[str]:
    # Azure ML mixes PascalCase and camelCase; Signalbox reads field names case-insensitively.
    return st.sampled_from([key, key[0].lower() + key[1:], key.upper(), key.lower()])


@st.composite
def workspace_data(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    name = draw(any_names)
    if kind == "registered":
        return {
            draw(_cased("ModelName")): name,
            draw(_cased("ModelVersion")): draw(versions()),
            "ModelTags": draw(st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), json_values, max_size=3))),
            "ModelProperties": {},
        }
    if kind in ("run_completed", "run_status"):
        tags = draw(
            st.one_of(
                st.just({"signalbox.model": name}),
                st.just({"model_name": name}),
                st.just({}),
                st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            )
        )
        return {
            "experimentId": "e-1",
            "experimentName": draw(st.one_of(st.just(name), any_names)),
            "runId": draw(st.one_of(st.text(min_size=1, max_size=40), json_values)),
            "runType": "azureml.scriptrun",
            "runTags": tags,
            "runProperties": {},
            "runStatus": draw(
                st.sampled_from(["Completed", "Failed", "Canceled", "cancelled", "Running", "", "COMPLETED"])
            ),
        }
    monitor = draw(st.one_of(st.sampled_from([*MONITORS, *MODELS]), unknown_names))
    return {
        "DataDriftId": draw(st.one_of(st.text(min_size=1, max_size=20), json_values)),
        "DataDriftName": monitor,
        "RunId": "r-1",
        "BaseDatasetId": "b",
        "TargetDatasetId": "t",
        "DriftCoefficient": draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))),
        "StartTime": draw(times()),
        "EndTime": draw(times()),
    }


@st.composite
def drift_data(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "model_name": draw(any_names),
        "metric": draw(st.one_of(st.just("psi"), json_values)),
        "score": draw(
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["0.3", "NaN", "inf"]))
        ),
        "threshold": 0.2,
    }


@st.composite
def known_event(draw: st.DrawFn, landed_uri: str) -> dict[str, Any]:
    """One event of a type Signalbox knows, in either schema, before mutation."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    subject = draw(st.sampled_from(["", "models/x", "/subject"]))
    topic = WORKSPACE_TOPIC
    if kind == "blob":
        subject, data = draw(blob_created_data(landed_uri))
        topic = STORAGE_TOPIC
    elif kind == "drift":
        data = draw(drift_data())
    elif kind == "validation":
        data = {"validationCode": draw(st.one_of(st.text(max_size=40), json_values)), "validationUrl": "https://x"}
    else:
        data = draw(workspace_data(kind))
    event_id = draw(st.one_of(st.uuids().map(str), st.text(max_size=40), st.just("same-id")))
    if draw(st.booleans()):
        return {
            "id": event_id,
            "topic": topic,
            "subject": subject,
            "eventType": draw(event_type(kind)),
            "eventTime": draw(times()),
            "data": data,
            "dataVersion": draw(st.sampled_from(["1", "", "1.0", "2"])),
            "metadataVersion": "1",
        }
    return {
        "specversion": draw(st.sampled_from(["1.0"] * 12 + ["0.3", "1", ""])),
        "id": event_id,
        "type": draw(event_type(kind)),
        "source": topic,
        "subject": subject,
        "time": draw(times()),
        "datacontenttype": "application/json",
        "data": data,
    }


@st.composite
def well_formed_event(draw: st.DrawFn, landed_uri: str) -> dict[str, Any]:
    """An event as Azure or Signalbox's drift monitor sends it; only whom it names varies (a catalogue
    model, its landing prefix or drift monitor, or none of those) and its version."""
    kind = draw(st.sampled_from(sorted(set(EVENT_TYPES) - {"validation"})))
    name = draw(weighted((2, catalogue_names), (1, unknown_names)))
    subject, topic = f"models/{name}", WORKSPACE_TOPIC
    if kind == "blob":
        subject, data = draw(blob_created_data(landed_uri))
        topic = STORAGE_TOPIC
    elif kind == "drift":
        data = {"model_name": name, "metric": "psi", "score": 0.31, "threshold": 0.2}
    elif kind == "registered":
        version = draw(weighted((4, st.integers(min_value=1, max_value=10**6)), (1, versions())))
        data = {"ModelName": name, "ModelVersion": version, "ModelTags": {}, "ModelProperties": {}}
    elif kind == "dataset_drift":
        monitor = draw(st.sampled_from([*MONITORS, name]))
        data = {"DataDriftId": str(draw(st.uuids())), "DataDriftName": monitor, "DriftCoefficient": 0.8}
    else:
        data = {
            "experimentName": name,
            "runId": f"run-{draw(st.uuids())}",
            "runTags": draw(st.sampled_from([{"signalbox.model": name}, {"model_name": name}, {}])),
            "runStatus": draw(st.sampled_from(["Completed", "Failed", "Canceled", "Running"])),
        }
    event_id = str(draw(st.uuids()))
    now = datetime.now(UTC).isoformat()
    if draw(st.booleans()):
        return {
            "id": event_id,
            "topic": topic,
            "subject": subject,
            "eventType": EVENT_TYPES[kind],
            "eventTime": now,
            "data": data,
            "dataVersion": "1",
            "metadataVersion": "1",
        }
    return {
        "specversion": "1.0",
        "id": event_id,
        "type": EVENT_TYPES[kind],
        "source": topic,
        "subject": subject,
        "time": now,
        "datacontenttype": "application/json",
        "data": data,
    }


def unknown_event() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=20),
            "eventType": st.text(max_size=40),
            "subject": st.text(max_size=20),
            "eventTime": times(),
            "data": json_values,
            "dataVersion": st.just("1"),
        }
    )


@st.composite
def event_grid_body(draw: st.DrawFn, landed_uri: str) -> tuple[Any, bytes, str | None]:
    """(document or None, body, content type) of an Event Grid delivery."""
    mode = draw(st.sampled_from(["bytes", "json"] + ["events"] * 8))
    content_type = draw(
        st.sampled_from(
            [
                *["application/json"] * 6,
                "application/cloudevents+json; charset=utf-8",
                "application/cloudevents-batch+json",
                "text/plain",
                None,
                "application/x-www-form-urlencoded",
            ]
        )
    )
    if mode == "bytes":
        return None, draw(random_bytes), content_type
    if mode == "json":
        document = draw(json_values)
    else:
        one = weighted(
            (4, well_formed_event(landed_uri)),
            (2, mutated(well_formed_event(landed_uri), max_mutations=2)),
            (2, known_event(landed_uri)),
            (1, unknown_event()),
        )
        events = draw(st.lists(one, min_size=0 if draw(chance(1, 20)) else 1, max_size=3))
        document = events[0] if len(events) == 1 and draw(st.booleans()) else events
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    prefix = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf", b" \n"]))
    return document, prefix + text.encode(), content_type


# -- webhooks --------------------------------------------------------------------------------------


@st.composite
def mlflow_payload(draw: st.DrawFn) -> dict[str, Any]:
    entity = draw(st.sampled_from(["model_version"] * 5 + ["registered_model", "model_version_tag", "x"]))
    action = draw(st.sampled_from(["created"] * 5 + ["set", "deleted", ""]))
    data: dict[str, Any] = {
        "name": draw(any_names),
        "version": draw(versions()),
        "source": "models:/m-1",
        "run_id": draw(st.one_of(st.none(), st.text(max_size=32))),
        "tags": draw(st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))),
        "description": None,
    }
    if entity == "model_version_tag":
        data["key"] = draw(st.text(max_size=10))
        data["value"] = draw(st.one_of(st.text(max_size=10), json_values))
    return {"entity": entity, "action": action, "timestamp": draw(times()), "data": data}


@st.composite
def databricks_registry_payload(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event": draw(
            st.sampled_from(["MODEL_VERSION_CREATED"] * 4 + ["REGISTERED_MODEL_CREATED", "TRANSITION_REQUEST_CREATED"])
        ),
        "webhook_id": draw(st.one_of(st.text(max_size=10), st.integers())),
        "event_timestamp": draw(
            weighted((3, st.integers(min_value=0, max_value=2**63)), (1, st.text(max_size=10)), (1, json_values))
        ),
        "model_name": draw(any_names),
        "version": draw(versions()),
        "run_id": draw(st.one_of(st.text(max_size=10), st.none())),
        "status": "READY",
    }


@st.composite
def databricks_job_payload(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_type": draw(st.sampled_from(["jobs.on_success", "jobs.on_failure", "jobs.on_start", "other"])),
        "workspace_id": draw(st.one_of(st.text(max_size=10), st.integers())),
        "run": {"run_id": draw(st.one_of(st.integers(), st.text(max_size=20), json_values))},
        "job": {"job_id": draw(st.one_of(st.integers(), st.text(max_size=20), st.sampled_from([*MODELS, "42"])))},
    }


def code_paths() -> st.SearchStrategy[str]:
    return weighted(
        (3, st.sampled_from([f"models/{m}/train.py" for m in MODELS])),
        (1, st.sampled_from(["src/x.py", "README.md", "models/other/x.py", "./models/fz-trained/a.py", "/models/x"])),
        (1, st.text(max_size=40)),
    )


@st.composite
def github_payload(draw: st.DrawFn) -> dict[str, Any]:
    def commit() -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {
                "id": st.text(max_size=10),
                "added": st.lists(code_paths(), max_size=3),
                "modified": st.lists(code_paths(), max_size=3),
                "removed": st.lists(code_paths(), max_size=2),
            }
        )

    return {
        "ref": draw(
            st.sampled_from(
                ["refs/heads/main"] * 4 + ["refs/heads/release", "refs/heads/feature/x", "refs/tags/v1", "main"]
            )
        ),
        "before": "0" * 40,
        "after": draw(st.one_of(st.text(min_size=1, max_size=40), st.just("a" * 40))),
        "deleted": draw(st.sampled_from([False] * 4 + [True])),
        "repository": {"full_name": draw(st.sampled_from(["org/repo", "", "x/y"]))},
        "commits": draw(st.lists(commit(), min_size=1, max_size=3)),
        "head_commit": draw(st.one_of(st.none(), commit())),
    }
