"""Landing and evaluation CSVs built from scikit-learn's bundled iris data (no download).

The 150 flowers are split once, stratified and with a fixed seed, into a training split
(105 rows) and a held-out evaluation split (45 rows); batches only ever draw on the training
split, so nothing a model trains on is ever used to judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLASSES",
    "FEATURES",
    "TARGET",
    "BatchKind",
    "evaluation_frame",
    "training_frame",
    "write_batch",
    "write_evaluation",
]

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
TARGET = "target"
CLASSES = ("setosa", "versicolor", "virginica")

BatchKind = Literal["small", "full", "noisy"]

_SPLIT_SEED = 42
_EVALUATION_FRACTION = 0.3
# "small": a lopsided handful with a single virginica, so the model barely ever predicts that class
# (about 0.65 accuracy on the evaluation split whatever the seed, against about 0.93 for "full").
_SMALL_PER_CLASS = {"setosa": 6, "versicolor": 5, "virginica": 1}
# "noisy": this share of rows get a wrong label, so the wrong labels outvote the right ones
# (an unbiased shuffle would leave the true class the most frequent and the model nearly intact).
_NOISY_FRACTION = 0.75


def _splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    frame = pd.DataFrame(iris.data, columns=list(FEATURES))
    frame[TARGET] = [CLASSES[i] for i in iris.target]
    train, evaluation = train_test_split(
        frame, test_size=_EVALUATION_FRACTION, random_state=_SPLIT_SEED, stratify=frame[TARGET]
    )
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def training_frame(kind: BatchKind = "full", seed: int = 0) -> pd.DataFrame:
    """A training batch drawn from the training split: ``small``, ``full`` or ``noisy``."""
    import numpy as np
    import pandas as pd

    train, _ = _splits()
    rng = np.random.default_rng(seed)
    if kind == "full":
        return train
    if kind == "small":
        picks = [
            train[train[TARGET] == label].sample(n=count, random_state=int(rng.integers(2**31)))
            for label, count in _SMALL_PER_CLASS.items()
        ]
        return pd.concat(picks).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if kind == "noisy":
        noisy = train.copy()
        rows = rng.choice(len(noisy), size=round(_NOISY_FRACTION * len(noisy)), replace=False)
        codes = np.array([CLASSES.index(label) for label in noisy[TARGET]])
        # Shift each chosen label by 1 or 2 classes: always a wrong one, never the same wrong one.
        codes[rows] = (codes[rows] + rng.integers(1, len(CLASSES), size=len(rows))) % len(CLASSES)
        noisy[TARGET] = [CLASSES[code] for code in codes]
        return noisy
    raise ValueError(f"kind: expected small, full or noisy, got {kind!r}")


def evaluation_frame() -> pd.DataFrame:
    """The fixed held-out evaluation split."""
    return _splits()[1]


def write_batch(path: Path, kind: BatchKind, seed: int = 0) -> Path:
    """Write a landing CSV (features and ``target``) of the given kind; returns the path."""
    frame = training_frame(kind, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_evaluation(path: Path) -> Path:
    """Write the held-out evaluation CSV; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    evaluation_frame().to_csv(path, index=False)
    return path
