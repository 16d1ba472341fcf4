"""MlflowEvaluator under concurrent evaluations: parallel downloads, no mixed-up models, a bounded cache."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.adapters.mlflow import evaluator as mlflow_evaluator
from shared.adapters.mlflow.evaluator import MlflowEvaluator
from signalbox.chaos import synthetic
from signalbox.chaos.workspace import SyntheticTrainer

QUALITIES = (10, 35, 60, 80, 95, 100)


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, int], Path]:
    """Six versions of one model, each a model from code with its own slope, in a SQL store."""
    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trainer = SyntheticTrainer(uri)
    try:
        versions = {
            trainer.train({"model_name": "concurrent", "signalbox.correlation_id": f"c{q}"}, q)[1]: q for q in QUALITIES
        }
    finally:
        trainer.close()
    dataset = tmp_path / "evaluation.csv"
    dataset.write_text("x,target\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 21)))
    return uri, versions, dataset


def expected_rmse(quality: int) -> float:
    slope_error = synthetic.coefficient(quality) - 2
    return abs(slope_error) * math.sqrt(sum(x * x for x in range(1, 21)) / 20)


def test_concurrent_evaluations_each_score_their_own_version(registered: tuple[str, dict[str, int], Path]) -> None:
    uri, versions, dataset = registered
    evaluator = MlflowEvaluator(uri)
    jobs = [version for version in versions for _ in range(3)]  # every version scored by three threads at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        scores = list(pool.map(lambda v: (v, evaluator.score("concurrent", v, str(dataset), ["rmse"])), jobs))
    for version, score in scores:
        assert score["rmse"] == pytest.approx(expected_rmse(versions[version]), abs=1e-9), version
    assert len({round(s["rmse"], 6) for _, s in scores}) == len(QUALITIES)


def test_the_model_cache_keeps_the_most_recently_used(
    registered: tuple[str, dict[str, int], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, versions, dataset = registered
    monkeypatch.setattr(mlflow_evaluator, "CACHED_MODELS", 2)
    evaluator = MlflowEvaluator(uri)
    downloads: list[str] = []
    real = evaluator._download

    def counted(key: tuple[str, str]) -> str:
        downloads.append(key[1])
        return real(key)

    monkeypatch.setattr(evaluator, "_download", counted)
    first, second, third = list(versions)[:3]
    for version in (first, second, first, third, first, second):
        evaluator.score("concurrent", version, str(dataset), ["rmse"])
    # first stays (used most recently each time); second is evicted by third and downloaded again.
    assert downloads == [first, second, third, second]
