"""Linear probe: logistic regression on frozen image embeddings, C chosen on validation data only.

Follows scikit-learn's estimator contract: ``__init__`` stores parameters, ``fit`` returns self, learned state
ends in ``_``, ``predict_proba`` columns follow ``classnames_``. Multi-label data gets one binary classifier per
class, trained on the rows whose label for that class is known (NaN rows are left out).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from medvlkit.data.splits import (
    check_scored_apart,
    dataset_groups,
    few_shot_indices,
    holdout_indices,
    load_train,
    load_val,
)
from medvlkit.engine.metrics import auroc_binary, single_label_metrics
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError, NoSplitsError, first_line

logger = logging.getLogger(__name__)

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 5, 17))  # 1e-3 .. 1e5, half-decade steps
SELECT = ("auroc", "accuracy", "balanced_accuracy")


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on (N, D) embeddings, as a scikit-learn classifier (``get_params``/``clone``,
    ``classes_``, ``n_features_in_``, ``predict``, ``score``).

    ``fit(X, y)`` takes scikit-learn's 1-D class labels, or medvlkit's (N, C) label matrix (1/0/NaN) with
    ``classnames`` and ``multilabel``; with several ``Cs`` it needs validation data to choose C.

    Args:
        Cs: inverse regularisation strengths to try; the best on validation data is kept (one value: no sweep).
        class_weight: None or "balanced" (weights inversely proportional to class frequency).
        select: validation metric that picks C: auroc (macro), accuracy or balanced_accuracy.
        max_iter: L-BFGS iterations.
        random_state: seed of the solver.
    """

    def __init__(self, Cs: tuple[float, ...] = DEFAULT_CS, class_weight: str | None = None, select: str = "auroc",
                 max_iter: int = 2000, random_state: int = 0, progress: bool = False) -> None:
        self.Cs, self.class_weight, self.select = tuple(Cs), class_weight, select
        self.max_iter, self.random_state, self.progress = max_iter, random_state, progress

    def _check(self) -> None:
        if self.select not in SELECT:
            raise MedvlkitError(f"--select {self.select}: valid options: {', '.join(SELECT)}")
        if self.class_weight not in (None, "balanced"):
            raise MedvlkitError(f"--class-weight {self.class_weight}: valid options: none, balanced")
        if not self.Cs or min(self.Cs) <= 0:
            raise MedvlkitError(f"C values must be positive, got {self.Cs}")

    def _fit_one(self, X: np.ndarray, y: np.ndarray, C: float):
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter,
                                 random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at extreme C are expected in a sweep
            return clf.fit(X, y)

    def _fit_all(self, X: np.ndarray, Y: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray]:
        """(coef (C_out, D), intercept (C_out,)) for one C."""
        if self.multilabel_:
            coefs, bias = [], []
            for c in range(Y.shape[1]):
                known = ~np.isnan(Y[:, c])
                y = Y[known, c].astype(int)
                if len(np.unique(y)) < 2:
                    raise MedvlkitError(f"class '{self.classnames_[c]}' has only one label value in the training "
                                        "data; a probe needs positives and negatives for every class")
                clf = self._fit_one(X[known], y, C)
                coefs.append(clf.coef_[0])
                bias.append(clf.intercept_[0])
            return np.stack(coefs), np.asarray(bias)
        y = np.nanargmax(Y, axis=1)
        if len(np.unique(y)) < 2:
            raise MedvlkitError(f"the training data holds only class '{self.classnames_[int(y[0])]}'; a probe needs "
                                "examples of at least two classes")
        clf = self._fit_one(X, y, C)
        if len(clf.classes_) != Y.shape[1]:
            missing = sorted(set(range(Y.shape[1])) - set(clf.classes_.tolist()))
            raise MedvlkitError(f"classes {[self.classnames_[i] for i in missing]} have no training example")
        if Y.shape[1] == 2:  # sklearn stores one row for binary problems: expand to two columns
            return np.stack([-clf.coef_[0], clf.coef_[0]]) / 2, np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
        return clf.coef_, clf.intercept_

    def _score(self, Y: np.ndarray, P: np.ndarray) -> float:
        if self.multilabel_:
            return float(np.nanmean([auroc_binary(Y[~np.isnan(Y[:, c]), c] == 1, P[~np.isnan(Y[:, c]), c])
                                     for c in range(Y.shape[1])]))
        m = single_label_metrics(np.nanargmax(Y, 1), P, self.classnames_)
        return m[self.select]

    def _log_loss(self, Y: np.ndarray, P: np.ndarray) -> float:
        P = np.clip(P, 1e-7, 1 - 1e-7)
        if self.multilabel_:
            known = ~np.isnan(Y)
            return float(-np.mean(np.where(Y[known] == 1, np.log(P[known]), np.log(1 - P[known]))))
        return float(-np.mean(np.log(P[np.arange(len(Y)), np.nanargmax(Y, 1)])))

    def fit(self, X: np.ndarray, Y: np.ndarray, classnames: list[str] | None = None, multilabel: bool = False,
            X_val: np.ndarray | None = None, Y_val: np.ndarray | None = None) -> LinearProbe:
        """Fit on (N, D) embeddings and labels: (N,) class labels (scikit-learn's form) or an (N, C) 1/0/NaN matrix
        with its ``classnames``; with several Cs, pick C on (X_val, Y_val)."""
        self._check()
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y)
        classes = None
        if Y.ndim == 1:  # scikit-learn's form: one class label per row
            classes = np.unique(Y)
            Y = (Y[:, None] == classes[None, :]).astype(np.float64)
            if Y_val is not None:
                Y_val = (np.asarray(Y_val)[:, None] == classes[None, :]).astype(np.float64)
            classnames, multilabel = [str(c) for c in classes], False
        if classnames is None:
            raise MedvlkitError("a label matrix needs its classnames")
        self.classnames_, self.multilabel_ = list(classnames), bool(multilabel)
        self.classes_ = classes if classes is not None else np.asarray(self.classnames_)
        self.n_features_in_ = X.shape[1]
        if len(self.Cs) > 1 and (X_val is None or len(X_val) == 0):
            raise MedvlkitError("sweeping C needs validation data (a val split or --val-fraction), or give one --C")
        self.val_scores_: dict[float, float] = {}
        from tqdm.auto import tqdm

        # one step per C tried and one for the final fit: minutes on wide features (an ETA from the first steps)
        with tqdm(total=len(self.Cs) + 1 if len(self.Cs) > 1 else 1, desc="probe: fit (C chosen on validation)",
                  unit="fit", disable=not self.progress) as bar:
            if len(self.Cs) == 1:
                self.C_ = self.Cs[0]
            else:
                assert X_val is not None and Y_val is not None  # checked above
                log_loss = {}
                for C in self.Cs:
                    self.coef_, self.intercept_ = self._fit_all(X, Y, C)
                    probs = self.predict_proba(X_val)
                    self.val_scores_[C], log_loss[C] = self._score(Y_val, probs), self._log_loss(Y_val, probs)
                    bar.update()
                # Scores equal to 3 decimals are ties (a saturated val AUROC says nothing); the proper scoring rule
                # (val log-loss) breaks them, so a degenerate, over-regularised probe is never picked on a tie.
                self.C_ = max(self.Cs, key=lambda c: (round(self.val_scores_[c], 3), -log_loss[c]))
            self.coef_, self.intercept_ = self._fit_all(X, Y, self.C_)
            bar.update()
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) logits.

        Raises:
            MedvlkitError: features of another width than the probe was fitted on (another model's).
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[1]:
            raise MedvlkitError(f"the probe takes {self.coef_.shape[1]}-wide features; these are {X.shape[-1]}-wide "
                                "(another model's, or --features differs from the probe's)")
        return X @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Single-label: the most probable class of each row (from ``classes_``); multi-label: an (N, C) 0/1
        matrix at probability 0.5."""
        z = self.decision_function(X)
        if self.multilabel_:
            return (z >= 0).astype(int)
        return self.classes_[z.argmax(1)]

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float64 log-probabilities (no rounding of near-certain probabilities to 1)."""
        from medvlkit.engine.scores import log_sigmoid, log_softmax

        z = self.decision_function(np.asarray(X, dtype=np.float64))
        return log_sigmoid(z) if self.multilabel_ else log_softmax(z)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C): softmax over classes, or per-class sigmoid for multi-label probes."""
        z = self.decision_function(X)
        if self.multilabel_:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def save(self, path: Path, meta: dict | None = None) -> None:
        """``.npz`` weights + a JSON header (no pickle): classnames, C, validation scores, model identity."""
        header = {"classnames": self.classnames_, "multilabel": self.multilabel_, "C": self.C_,
                  "val_scores": {str(k): v for k, v in self.val_scores_.items()}, "class_weight": self.class_weight,
                  "select": self.select, **(meta or {})}
        np.savez(path, coef=self.coef_, intercept=self.intercept_, header=np.asarray(json.dumps(header)))

    @classmethod
    def load(cls, path: Path) -> tuple[LinearProbe, dict]:
        """A probe saved with :meth:`save`, and its header, checked: class names, mode, C, and coefficients of one
        row per class (finite; one per class pair's side for two classes) with an intercept each.

        Raises:
            MedvlkitError: not such a file, in one line naming it and what was expected.
        """
        from medvlkit.artifacts import json_field, positive_number, string_list

        kind = "probe (probe.npz written by `medvlkit probe`)"
        if not Path(path).is_file():
            raise MedvlkitError(f"--load {path}: no such probe file (written by medvlkit probe as probe.npz)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("header", "coef", "intercept") if k in z.files}
            header = json.loads(str(arrays["header"]))
        except KeyError:
            raise MedvlkitError(f"{path}: not a valid {kind} (no 'header' array)") from None
        except Exception as err:  # noqa: BLE001 - numpy, zip and JSON errors come in many types
            raise MedvlkitError(f"{path}: not a valid {kind} ({first_line(err)})") from None
        if not isinstance(header, dict):
            raise MedvlkitError(f"{path}: not a valid {kind} (its header is not a JSON object)")
        names = json_field(header, "classnames", list, path, kind, check=lambda v: string_list(v) and len(v) >= 1,
                           expected="a list of class names")
        multilabel = json_field(header, "multilabel", bool, path, kind)
        c = json_field(header, "C", (int, float), path, kind, check=positive_number, expected="a positive number")
        coef, intercept = arrays.get("coef"), arrays.get("intercept")
        if coef is None or intercept is None or coef.ndim != 2 or intercept.shape != (len(names),) or \
                coef.shape[0] != len(names) or not np.issubdtype(coef.dtype, np.floating):
            raise MedvlkitError(f"{path}: not a valid {kind} (coefficients {None if coef is None else coef.shape} and "
                                f"intercept {None if intercept is None else intercept.shape}; expected ({len(names)}, "
                                f"D) and ({len(names)},) for its classes {names})")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise MedvlkitError(f"{path}: not a valid {kind} (its coefficients hold NaN or infinite values)")
        probe = cls(Cs=(float(c),), class_weight=header.get("class_weight") if header.get("class_weight") in (
            None, "balanced") else None, select=header.get("select", "auroc") if header.get("select") in SELECT
            else "auroc")
        probe.coef_, probe.intercept_ = coef.astype(np.float64), intercept.astype(np.float64)
        probe.classnames_, probe.multilabel_, probe.C_ = list(names), multilabel, float(c)
        probe.classes_, probe.n_features_in_ = np.asarray(probe.classnames_), int(coef.shape[1])
        try:
            probe.val_scores_ = {float(k): float(v) for k, v in header.get("val_scores", {}).items()}
        except (AttributeError, TypeError, ValueError):
            probe.val_scores_ = {}  # a record of the fit, not needed to score
        return probe, header


@dataclass
class ProbeData:
    """Embeddings and labels of one split."""

    X: np.ndarray
    Y: np.ndarray
    items: list[str]
    n_cached: int = 0


def embed_split(model, dataset, **embed_options) -> ProbeData:
    """Embeddings (cached) and label rows of a labelled dataset."""
    from medvlkit.engine.features import embed_images

    if not dataset.has_labels:
        raise MedvlkitError(f"dataset '{dataset.name}' ({dataset.split}) has no labels; a probe needs labelled data")
    emb = embed_images(model, dataset, **embed_options)
    return ProbeData(emb.vectors, dataset.labels[emb.indices], emb.items, emb.n_cached)


def align_probe_data(data: ProbeData, data_classes: list[str], target_classes: list[str],
                     multilabel: bool) -> tuple[ProbeData, dict]:
    """``data`` with its label columns in ``target_classes`` order (see :func:`medvlkit.engine.labels.align_labels`).
    Returns the aligned data and the alignment's record for result.json."""
    from medvlkit.engine.labels import align_labels

    a = align_labels(data.Y, data_classes, target_classes, multilabel)
    keep = np.flatnonzero(a.keep)
    return ProbeData(data.X[keep], a.labels, [data.items[i] for i in keep], data.n_cached), a.record()


def fit_probe(probe: LinearProbe, train: ProbeData, val: ProbeData | None, classnames: list[str], multilabel: bool,
              shots: int | None = None, seed: int = 0) -> dict:
    """Fit ``probe`` (optionally on a seeded K-shot sample of ``train``). Returns what was used, for the record.
    The probe remembers the items it was fitted and tuned on (``seen_items_``): :func:`save_probe_run` refuses to
    score it on any of them."""
    keep = few_shot_indices(train.Y, shots, seed) if shots is not None else np.arange(len(train.X))
    probe.fit(train.X[keep], train.Y[keep], classnames, multilabel,
              None if val is None else val.X, None if val is None else val.Y)
    probe.seen_items_ = {"trained the probe": list(train.items),
                         "chose its C": [] if val is None else list(val.items)}
    return {"n_train": int(len(keep)), "n_val": 0 if val is None else len(val.X), "C": probe.C_,
            "val_scores": {str(k): v for k, v in probe.val_scores_.items()}, "shots": shots}


def probe_splits(model, data: Path, data_opts: DataOptions | None = None, train_split: str = "train",
                 val_split: str | None = None, val_fraction: float = 0.1, group_pattern: str | None = None,
                 seed: int = 0, need_val: bool = True, held_val=None, **embed_options):
    """Training data and validation data for a probe (splits chosen by ``data/splits.py``: ``val_split``, else the
    data's ``val`` split, else, or with ``val_split="holdout"``, a seeded patient-level ``val_fraction`` of train).

    Validation never holds images the model trained on (:meth:`DataOptions.held_out`, ``holdout_unseen``);
    ``held_val``: the validation split already read that way (:func:`probe_datasets`), so it is read once.

    Returns:
        (train dataset, train ProbeData, val ProbeData or None when ``need_val`` is False).
    """
    data_opts = data_opts or DataOptions()
    train_ds = load_train(data, data_opts, train_split)
    train = embed_split(model, train_ds, **embed_options)
    if not need_val:
        return train_ds, train, None
    val_ds = held_val if held_val is not None else load_val(data, data_opts, val_split)
    if val_ds is None:
        tr, va = holdout_indices(train.items, train.Y, val_fraction, seed, group_pattern,
                                 dataset_groups(train_ds, train.items))
        tr, va, seen = data_opts.holdout_unseen(train_ds, model, train.items, tr, va, **embed_options)
        pick = lambda idx: ProbeData(train.X[idx], train.Y[idx], [train.items[j] for j in idx])  # noqa: E731
        train_ds.meta = dict(train_ds.meta) | {"val_seen_by_model": seen}
        return train_ds, pick(tr), pick(va)
    if held_val is None:
        val_ds = data_opts.held_out(val_ds, model, "val", **embed_options)
    val, _ = align_probe_data(embed_split(model, val_ds, **embed_options), val_ds.classnames, train_ds.classnames,
                              train_ds.multilabel)
    train_ds.meta = dict(train_ds.meta) | {"val_seen_by_model": val_ds.meta["seen_by_model"]}
    return train_ds, train, val


class ScoredOnEmbeddings(Protocol):
    """What :func:`save_probe_run` scores and saves: a linear probe, or a few-shot adapter
    (:class:`medvlkit.engine.fewshot.FewShotAdapter`)."""

    classnames_: list[str]
    multilabel_: bool

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray: ...

    def save(self, path: Path, header: dict[str, Any]) -> None: ...


def save_probe_run(probe: ScoredOnEmbeddings, test: ProbeData, model, dataset, out_dir: Path, config: dict, info: dict,
                   n_bootstrap: int = 1000, seed: int = 0, identity: dict | None = None, task: str = "linear_probe",
                   file_name: str = "probe.npz") -> dict:
    """Score the probe on the test split; write probe.npz, predictions.csv and result.json (with ``identity``,
    :func:`probe_identity`). A few-shot adapter (:class:`medvlkit.engine.fewshot.FewShotAdapter`, the same methods)
    is scored and written by the same path (``task="fewshot_adapt"``, ``file_name="adapter.npz"``).

    Raises:
        MedvlkitError: a test image also trained the probe or chose its C (see :func:`check_scored_apart`).
    """
    from medvlkit.engine.results import DEFAULT_THRESHOLD_SOURCE, provenance, write_predictions, write_result
    from medvlkit.tasks.evaluate import evaluate_probs

    check_scored_apart(test.items, getattr(probe, "seen_items_", {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    test, alignment = align_probe_data(test, dataset.classnames, probe.classnames_, probe.multilabel_)
    log_probs = probe.predict_log_proba(test.X)
    ev = evaluate_probs(test.Y, None, probe.classnames_, probe.multilabel_, n_bootstrap, seed, log_probs=log_probs)
    probe.save(out_dir / file_name, {"model": model.name, "model_fingerprint": model.fingerprint()})
    write_predictions(out_dir, test.items, probe.classnames_, log_probs, test.Y, probe.multilabel_)
    name = dataset.full_name
    path = write_result(out_dir, dataset=name, model=model.name, task=task, metrics=ev.metrics, ci=ev.ci,
                        config=config, seed=seed,
                        extra={"classnames": probe.classnames_, "mode": "pos_neg" if probe.multilabel_ else "softmax",
                               "confusion_matrix": ev.confusion_matrix,
                               "probe" if task == "linear_probe" else "adapter": info,
                               "label_alignment": alignment, "identity": identity or {}} | ev.extra
                        | provenance(model, dataset, threshold_source=DEFAULT_THRESHOLD_SOURCE)
                        | {"n_cached": test.n_cached})
    return json.loads(path.read_text())


def check_probe_model(header: dict, model) -> None:
    """A saved probe only fits the embeddings of the model it was trained on."""
    if header.get("model_fingerprint") != model.fingerprint():
        raise MedvlkitError(f"this probe was trained on '{header.get('model')}' embeddings; pass --model "
                            f"{header.get('model')} (the current model '{model.name}' differs)")


@dataclass
class ProbeTaskConfig:
    """Options of one ``probe`` run (see ``medvlkit probe --help``).

    Attributes:
        model, data: what to embed (how it is read and run: the task's ``DataOptions`` and ``RunOptions``).
        train_split, val_split, test_split, val_fraction, group_pattern: the splits (validation picks C; without a
            val split a seeded, optionally patient-level, fraction of train is held out).
        shots: few-shot training examples per class (None: all).
        class_weight: ``none`` or ``balanced``; ``c``: one C instead of the validation sweep; ``select``: the
            validation metric picking C.
        load: a saved ``probe.npz`` to score instead of training one.
        features: ``embedding`` (the shared space) or ``backbone`` (the image tower's pooled features).
        seed: few-shot sampling, the held-out split and the bootstrap.
    """

    model: str = "lite"
    data: str = ""
    train_split: str = "train"
    val_split: str | None = None
    test_split: str = "test"
    val_fraction: float = 0.1
    group_pattern: str | None = None
    shots: int | None = None
    class_weight: str = "none"
    c: float | None = None
    select: str = "auroc"
    load: str | None = None
    features: str = "embedding"
    seed: int = 0


def probe_datasets(cfg: ProbeTaskConfig, data: DataOptions, model, embed_options: dict | None = None):
    """The (train, val, test) datasets a probe run reads, none embedded: train and val are None when a saved probe
    is scored (``load``), val is None when C is given or validation is held out of train. Test and val come without
    the images ``model`` trained on (:meth:`DataOptions.held_out`)."""
    embed_options = embed_options or {}
    try:
        test_ds = data.load(cfg.data, cfg.test_split or None)
    except NoSplitsError:
        if cfg.load is None:
            raise
        test_ds = data.load(cfg.data)  # scoring a saved probe: a folder without splits
    test_ds = data.held_out(test_ds, model, "test", **embed_options)
    if cfg.load is not None:
        return None, None, test_ds
    train_ds = load_train(cfg.data, data, cfg.train_split)
    val_ds = None if cfg.c else load_val(cfg.data, data, cfg.val_split)
    return train_ds, None if val_ds is None else data.held_out(val_ds, model, "val", **embed_options), test_ds


def probe_identity(cfg: ProbeTaskConfig, model, datasets: tuple, n_bootstrap: int, embed_options: dict) -> dict:
    """What a probe result is computed from (see :mod:`medvlkit.engine.identity`): the model, every option of ``cfg``,
    the train / val / test data (:func:`probe_datasets`), a loaded probe file's sha256, the bootstrap, the options that
    change numbers."""
    from dataclasses import asdict

    from medvlkit.engine.identity import dataset_identity, identity_record, model_identity, result_options
    from medvlkit.models.base import file_sha256

    train, val, test = datasets
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("model", "data")}
    return identity_record("linear_probe", model=model_identity(model), settings=settings,
                           train=dataset_identity(train) if train is not None else None,
                           val=dataset_identity(val) if val is not None else None, test=dataset_identity(test),
                           loaded=file_sha256(str(cfg.load)) if cfg.load and Path(cfg.load).is_file() else None,
                           bootstrap=n_bootstrap, options=result_options(embed_options))


def run_probe_task(cfg: ProbeTaskConfig, out_dir: Path, config: dict, n_bootstrap: int = 1000,
                   run: RunOptions | None = None, data: DataOptions | None = None,
                   model=None) -> tuple[dict, LinearProbe, dict]:
    """Train (or load) a linear probe, score it on the test split, write result.json, predictions.csv and
    probe.npz into ``out_dir``. ``model``: the loaded ``cfg.model`` when the caller has it already.

    Returns:
        the result dict, the probe, and the fit information (chosen C, validation size...).

    Raises:
        MedvlkitError: a test image also trained the probe or chose its C (``--test-split`` equal to the training or
            validation split, ``eval --split train|val``...).
    """
    run, data = run or RunOptions(), data or DataOptions()
    embed_options = run.embed_kwargs()
    if cfg.features not in ("embedding", "backbone"):
        raise MedvlkitError(f"--features {cfg.features}: valid options: embedding, backbone")
    if cfg.shots is not None and cfg.shots < 1:
        raise MedvlkitError(f"--shots {cfg.shots}: must be at least 1 (leave it out to train on every image)")
    model = model if model is not None else run.load_model(cfg.model)
    datasets = probe_datasets(cfg, data, model, embed_options)
    identity = probe_identity(cfg, model, datasets, n_bootstrap, embed_options)
    test_ds = datasets[2]
    if cfg.features == "backbone":
        from medvlkit.models.base import BackboneView

        model = BackboneView(model)
    if cfg.load is not None:
        probe, header = LinearProbe.load(Path(cfg.load))
        check_probe_model(header, model)
        info = {"loaded": str(cfg.load), "C": probe.C_}
    else:
        probe = LinearProbe(Cs=(cfg.c,) if cfg.c else LinearProbe().Cs, select=cfg.select, random_state=cfg.seed,
                            class_weight=None if cfg.class_weight == "none" else cfg.class_weight,
                            progress=bool(embed_options.get("progress", True)))
        train_ds, train, val = probe_splits(model, Path(cfg.data), data, cfg.train_split, cfg.val_split,
                                            cfg.val_fraction, cfg.group_pattern, cfg.seed, need_val=cfg.c is None,
                                            held_val=datasets[1], **embed_options)
        info = fit_probe(probe, train, val, train_ds.classnames, train_ds.multilabel, cfg.shots, cfg.seed)
        info["excluded_by_audit"] = train_ds.meta.get("audit", {}).get("n_excluded", 0)
        info["val_seen_by_model"] = train_ds.meta.get("val_seen_by_model")
    result = save_probe_run(probe, embed_split(model, test_ds, **embed_options), model, test_ds, out_dir, config,
                            info, n_bootstrap, cfg.seed, identity)
    return result, probe, info
