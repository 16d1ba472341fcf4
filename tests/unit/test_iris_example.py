"""The iris example's data batches: shapes, a held-out split that never overlaps, and batches that differ in quality."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalbox.examples import JobError, read_csv, run_job
from signalbox.examples.iris.data import CLASSES, FEATURES, TARGET, write_batch, write_evaluation
from signalbox.examples.iris.train import resolve_params, train

REPO = Path(__file__).resolve().parents[2]

COLUMNS = [*FEATURES, TARGET]


def _rows(frame: object) -> set[tuple[object, ...]]:
    return set(frame.itertuples(index=False, name=None))  # type: ignore[attr-defined]


def test_batches_and_the_evaluation_split_have_the_promised_shape(tmp_path: Path) -> None:
    full = read_csv(write_batch(tmp_path / "full.csv", "full"))
    small = read_csv(write_batch(tmp_path / "small.csv", "small"))
    noisy = read_csv(write_batch(tmp_path / "noisy.csv", "noisy"))
    evaluation = read_csv(write_evaluation(tmp_path / "evaluation.csv"))

    for frame in (full, small, noisy, evaluation):
        assert list(frame.columns) == COLUMNS
        assert frame[list(FEATURES)].notna().all().all()
    assert (len(full), len(small), len(noisy), len(evaluation)) == (105, 12, 105, 45)
    assert set(full[TARGET]) == set(evaluation[TARGET]) == set(CLASSES)
    # Nothing trained on is ever judged on: no evaluation row appears in the training split.
    assert not _rows(full) & _rows(evaluation)
    assert _rows(small) <= _rows(full)
    # Noisy keeps the training flowers but most of their labels are wrong.
    assert noisy[list(FEATURES)].equals(full[list(FEATURES)])
    assert (noisy[TARGET] != full[TARGET]).mean() >= 0.7


def test_files_are_reproducible_and_the_seed_picks_the_rows(tmp_path: Path) -> None:
    assert write_evaluation(tmp_path / "a.csv").read_bytes() == write_evaluation(tmp_path / "b.csv").read_bytes()
    first = write_batch(tmp_path / "s0.csv", "small", seed=0).read_bytes()
    assert write_batch(tmp_path / "s0-again.csv", "small", seed=0).read_bytes() == first
    assert write_batch(tmp_path / "s1.csv", "small", seed=1).read_bytes() != first
    with pytest.raises(ValueError, match="kind"):
        write_batch(tmp_path / "x.csv", "huge")  # type: ignore[arg-type]


def _accuracy(tmp_path: Path, kind: str, seed: int) -> float:
    # The entry point's own path: read_csv, then train; only the MLflow logging is left out.
    frame = read_csv(write_batch(tmp_path / f"{kind}-{seed}.csv", kind, seed=seed), required=COLUMNS)  # type: ignore[arg-type]
    evaluation = read_csv(write_evaluation(tmp_path / "evaluation.csv"))
    model = train(frame, {}).model
    return float((model.predict(evaluation[list(FEATURES)]) == evaluation[TARGET]).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_beats_small_and_noisy_clearly_on_the_evaluation_split(tmp_path: Path, seed: int) -> None:
    full = _accuracy(tmp_path, "full", seed)
    small = _accuracy(tmp_path, "small", seed)
    noisy = _accuracy(tmp_path, "noisy", seed)
    assert full >= 0.9
    assert small <= full - 0.15, (full, small)
    assert noisy <= full - 0.3, (full, noisy)


def test_parameters_choose_the_estimator_and_bad_ones_are_refused() -> None:
    assert resolve_params({}) == (
        "logistic_regression",
        {"estimator": "logistic_regression", "C": "1.0", "max_iter": "1000", "random_state": "0"},
    )
    estimator, params = resolve_params({"n_estimators": "50"})
    assert estimator == "random_forest" and params["n_estimators"] == "50"
    with pytest.raises(JobError, match="n_estimators"):
        resolve_params({"estimator": "logistic_regression", "n_estimators": "5"})
    with pytest.raises(JobError, match="C='-1'"):
        resolve_params({"C": "-1"})
    with pytest.raises(JobError, match="estimator='svm'"):
        resolve_params({"estimator": "svm"})


def test_training_refuses_data_it_cannot_learn_from(tmp_path: Path) -> None:
    frame = read_csv(write_batch(tmp_path / "full.csv", "full"))
    one_class = frame[frame[TARGET] == "setosa"]
    with pytest.raises(JobError, match="cannot train") as caught:
        train(one_class, {})
    assert "\n" not in str(caught.value)
    with pytest.raises(JobError, match="missing column"):
        train(frame.drop(columns=[TARGET]), {})
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(JobError, match="empty"):
        read_csv(tmp_path / "empty.csv")


def test_a_job_ends_its_log_with_one_error_line_whatever_fails(capsys: pytest.CaptureFixture[str]) -> None:
    def bad_input() -> None:
        raise JobError("data.csv: the CSV is empty")

    def crash() -> None:
        raise RuntimeError("registry unreachable\nsecond line of detail")

    assert run_job(bad_input) == 2
    assert capsys.readouterr().err == "error: data.csv: the CSV is empty\n"
    assert run_job(crash) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "error: RuntimeError: registry unreachable"
    assert run_job(lambda: None) == 0
