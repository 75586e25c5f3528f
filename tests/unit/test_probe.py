import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from helpers import make_split_folders
from medvlkit import MedvlkitError
from medvlkit.apps.cli import main
from medvlkit.data.splits import few_shot_indices, holdout_indices
from medvlkit.tasks.probe import LinearProbe


def _blobs(n=300, classes=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) + np.eye(classes, d)[y] * 2
    return X, np.eye(classes)[y], y


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_equals_sklearn_for_one_C(classes):
    X, Y, y = _blobs(classes=classes)
    p = LinearProbe(Cs=(0.5,)).fit(X, Y, [f"c{i}" for i in range(classes)], multilabel=False)
    ref = LogisticRegression(C=0.5, max_iter=2000).fit(X, y)
    np.testing.assert_allclose(p.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert p.C_ == 0.5 and p.val_scores_ == {}


def test_sweep_picks_C_on_validation_only():
    X, Y, _ = _blobs(seed=1)
    Xv, Yv, _ = _blobs(n=100, seed=2)
    p = LinearProbe(Cs=(1e-4, 1e-2, 1.0)).fit(X, Y, list("abc"), False, Xv, Yv)
    assert set(p.val_scores_) == {1e-4, 1e-2, 1.0}
    assert round(p.val_scores_[p.C_], 3) == round(max(p.val_scores_.values()), 3)
    with pytest.raises(MedvlkitError, match="validation"):
        LinearProbe(Cs=(0.1, 1.0)).fit(X, Y, list("abc"), False)


def test_saturated_validation_ties_go_to_the_best_log_loss():
    """Perfectly separable val data: every C has AUROC 1; the tie must not pick the most regularised probe."""
    X, Y, y = _blobs(n=300, classes=2, seed=4)
    X = X + np.eye(2, 8)[y] * 20  # trivially separable
    p = LinearProbe(Cs=(1e-3, 1e-1, 10.0)).fit(X[:200], Y[:200], ["a", "b"], False, X[200:], Y[200:])
    assert len({round(v, 3) for v in p.val_scores_.values()}) == 1 and p.C_ == 10.0
    assert (p.predict_proba(X[200:]).argmax(1) == y[200:]).mean() == 1.0


def test_multilabel_masks_unknown_labels():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 6))
    Y = (X[:, :2] > 0).astype(float)
    Y[:30, 1] = np.nan
    p = LinearProbe(Cs=(1.0,)).fit(X, Y, ["a", "b"], multilabel=True)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(X[30:], Y[30:, 1].astype(int))
    np.testing.assert_allclose(p.predict_proba(X)[:, 1], ref.predict_proba(X)[:, 1], atol=1e-6)


def test_save_load_roundtrip_without_pickle(tmp_path):
    X, Y, _ = _blobs()
    p = LinearProbe(Cs=(0.3,), class_weight="balanced").fit(X, Y, list("abc"), False)
    p.save(tmp_path / "probe.npz", {"model": "m", "model_fingerprint": "f"})
    q, header = LinearProbe.load(tmp_path / "probe.npz")
    np.testing.assert_allclose(q.predict_proba(X), p.predict_proba(X))
    assert header["model_fingerprint"] == "f" and q.classnames_ == list("abc") and q.class_weight == "balanced"


def test_few_shot_and_holdout():
    _, Y, _ = _blobs(n=60)
    idx = few_shot_indices(Y, 4, seed=5)
    assert len(idx) == 12 and (Y[idx].sum(0) == 4).all()
    assert idx.tolist() == few_shot_indices(Y, 4, seed=5).tolist()
    with pytest.raises(MedvlkitError, match="shots"):
        few_shot_indices(Y, 100)
    items = [f"/d/person{i // 3}_bacteria_{i}.jpeg" for i in range(60)]
    tr, va = holdout_indices(items, Y, 0.2, seed=0, group_pattern=r"(person\d+)")
    patients = lambda ix: {items[i].split("/")[-1].split("_")[0] for i in ix}  # noqa: E731
    assert len(tr) + len(va) == 60 and not patients(tr) & patients(va) and len(va) > 0


def test_probe_cli_train_select_reuse(tiny_clip_dir, tmp_path, capsys):
    make_split_folders(tmp_path / "d", {"train": 6, "val": 3, "test": 3})
    out = tmp_path / "p"
    base = ["-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "d"), "-q", "--workers", "0", "--bootstrap", "20"]
    assert main(["probe", *base, "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["task"] == "linear_probe" and res["probe"]["n_val"] == 6 and res["probe"]["n_train"] == 12
    assert len(res["probe"]["val_scores"]) == 17 and (out / "probe.npz").is_file()
    assert main(["probe", *base, "--shots", "2", "--out", str(tmp_path / "fs")]) == 0
    assert json.loads((tmp_path / "fs" / "result.json").read_text())["probe"]["n_train"] == 4
    assert main(["probe", *base, "--load", str(out / "probe.npz"), "--out", str(tmp_path / "re")]) == 0
    reused = json.loads((tmp_path / "re" / "result.json").read_text())
    assert reused["metrics"]["auroc"] == pytest.approx(res["metrics"]["auroc"])
    from helpers import save_tiny_clip

    other = save_tiny_clip(tmp_path / "other", seed=3)
    capsys.readouterr()
    assert main(["probe", "-m", f"hf:{other}", "-d", str(tmp_path / "d"), "-q", "--load", str(out / "probe.npz"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "trained on" in capsys.readouterr().err


def test_probe_on_backbone_features(tiny_clip_dir, tmp_path):
    """--features backbone probes the vision tower's pooled output (64-d here), not the 32-d shared space."""
    import torch

    from medvlkit import create_model
    from medvlkit.models.base import BackboneView

    m = create_model(f"hf:{tiny_clip_dir}")
    view = BackboneView(m)
    pixels = torch.randn(2, 3, 32, 32)
    assert view.encode_image(pixels).shape == (2, 64) and view.fingerprint() != m.fingerprint()
    make_split_folders(tmp_path / "d", {"train": 6, "val": 3, "test": 3})
    out = tmp_path / "bb"
    assert main(["probe", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "d"), "-q", "--workers", "0",
                 "--bootstrap", "0", "--features", "backbone", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["model"].endswith("#backbone") and res["metrics"]["n"] == 6


def test_linear_probe_is_a_scikit_learn_classifier():
    """clone/get_params, fit on 1-D labels, classes_, n_features_in_, predict and ClassifierMixin.score."""
    from sklearn.base import clone, is_classifier
    from sklearn.linear_model import LogisticRegression

    from medvlkit.tasks.probe import LinearProbe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = np.where(X[:, 0] + 0.3 * rng.normal(size=120) > 0, "PNEUMONIA", "NORMAL")
    probe = LinearProbe(Cs=(1.0,), random_state=0)
    assert is_classifier(probe) and clone(probe).get_params() == probe.get_params()
    probe.fit(X[:80], y[:80])
    assert probe.classes_.tolist() == ["NORMAL", "PNEUMONIA"] and probe.n_features_in_ == 6
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(X[:80], y[:80])
    np.testing.assert_array_equal(probe.predict(X[80:]), ref.predict(X[80:]))
    np.testing.assert_allclose(probe.predict_proba(X[80:]), ref.predict_proba(X[80:]), atol=1e-8)
    assert probe.score(X[80:], y[80:]) == ref.score(X[80:], y[80:])
