"""How well properties that say nothing about disease predict the label: a shortcut a model can learn instead.

Two trivial feature sets, each scored by a cross-validated classifier (gradient-boosted trees: size, mode or a
border value can matter through thresholds, not linearly), per class one-vs-rest AUROC on out-of-fold predictions
with a bootstrap 95% CI:

- **image properties**: width, height, aspect, megapixels, bit depth, file size, mean and spread of intensity,
  border mean and spread, greyscale or colour, and the file format;
- **file-name pattern**: the name with its digit runs folded (``COVID-1201.png`` -> ``COVID-#.png``), which tells
  how the files were collected (a class named in its files' names is a collection confound, not a model shortcut).

Next to them, with a model's embeddings, a cross-validated logistic probe: what the images' content achieves.
A class whose image-property AUROC reaches :data:`HIGH` (0.80) is flagged: the label can be told from acquisition.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medvlkit.engine.metrics import auroc_binary, bootstrap_ci

HIGH = 0.80
FOLDS = 5


def name_pattern(item: str) -> str:
    """A file's name with digit runs folded to ``#`` (an npz member: its array name)."""
    name = Path(item.split("::")[0]).name if "::" not in item else item.split("::")[1].split("[")[0]
    return re.sub(r"\d+", "#", name)


def _one_hot(values: list[str]) -> np.ndarray:
    kinds = sorted(set(values))
    return np.array([[float(v == k) for k in kinds] for v in values]) if len(kinds) > 1 else np.zeros((len(values), 0))


def _oof_scores(x: np.ndarray, y: np.ndarray, kind: str, seed: int) -> np.ndarray | None:
    """Out-of-fold P(y = 1) from stratified folds; None when a class has too few examples to fold."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.bincount(y).min()))
    if folds < 2 or x.shape[1] == 0:
        return None
    out = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        leaf = max(2, min(20, len(train) // 20))  # small data: leaves small enough that a tree can split at all
        clf = (HistGradientBoostingClassifier(max_iter=100, min_samples_leaf=leaf, random_state=seed)
               if kind == "trees" else make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)))
        clf.fit(x[train], y[train])
        out[test] = clf.predict_proba(x[test])[:, 1]
    return out


def score_features(x: np.ndarray, labels: np.ndarray, classnames: list[str], kind: str, n_bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    """Per class: cross-validated AUROC of ``x`` for "this class vs the rest" (known labels only) with its CI."""
    out = {}
    for c, name in enumerate(classnames):
        known = ~np.isnan(labels[:, c])
        y = (labels[known, c] == 1).astype(int)
        if y.min() == y.max():
            continue
        scores = _oof_scores(x[known], y, kind, seed)
        if scores is None:
            continue
        ci = bootstrap_ci(lambda yy, ss: {"auroc": auroc_binary(yy, ss)}, (y, scores), n_bootstrap, seed)["auroc"] \
            if n_bootstrap else [float("nan"), float("nan")]
        out[name] = {"auroc": round(float(auroc_binary(y, scores)), 4), "ci": [round(v, 4) for v in ci],
                     "n": int(len(y))}
    return out


def shortcut_check(properties: np.ndarray, formats: list[str], items: list[str], labels: np.ndarray,
                   classnames: list[str], embeddings: np.ndarray | None = None, n_bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    """The three scores per class (see the module docstring) and the classes flagged."""
    props = np.concatenate([properties, _one_hot(formats)], axis=1)
    result: dict[str, Any] = {"image_properties": score_features(props, labels, classnames, "trees", n_bootstrap, seed),
              "file_name_pattern": score_features(_one_hot([name_pattern(it) for it in items]), labels, classnames,
                                                  "trees", n_bootstrap, seed)}
    if embeddings is not None:
        result["model_embedding"] = score_features(embeddings, labels, classnames, "linear", n_bootstrap, seed)
    result["flagged"] = sorted(c for c, v in result["image_properties"].items() if v["auroc"] >= HIGH)
    result["flagged_by_name"] = sorted(c for c, v in result["file_name_pattern"].items() if v["auroc"] >= HIGH)
    result["threshold"] = HIGH
    return result
