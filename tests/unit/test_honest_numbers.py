"""Numbers medvlkit prints are the numbers they claim to be: label alignment, lossless predictions, no saturation,
one macro rule, AUROC in every classification headline."""

import json

import numpy as np
import pytest

from helpers import make_image_folder, make_split_folders
from medvlkit import MedvlkitError
from medvlkit.apps.cli import main
from medvlkit.engine.labels import align_labels
from medvlkit.engine.metrics import multilabel_metrics, single_label_metrics
from medvlkit.engine.results import headline_keys, read_predictions, write_predictions
from medvlkit.engine.scores import log_sigmoid
from medvlkit.tasks.evaluate import evaluate_csv, evaluate_probs
from medvlkit.tasks.zeroshot import pos_neg_log_probs, pos_neg_probs


def test_align_labels_by_name_case_and_alias():
    labels = np.eye(3)[[0, 1, 2, 1]]  # effusion, normal, cardiomegaly, normal
    a = align_labels(labels, ["effusion", "NORMAL", "Cardiomegaly"], ["cardiomegaly", "normal"], multilabel=False)
    assert a.mapping == {"cardiomegaly": "Cardiomegaly", "normal": "NORMAL"} and a.dropped_classes == ["effusion"]
    np.testing.assert_array_equal(a.keep, [False, True, True, True])  # the effusion image has no class here
    np.testing.assert_array_equal(a.labels, [[0, 1], [1, 0], [0, 1]])
    multi = align_labels(np.array([[1, 0], [np.nan, 1]]), ["Pleural Effusion", "edema"], ["edema", "effusion",
                                                                                         "atelectasis"], True)
    assert multi.mapping["effusion"] == "Pleural Effusion" and multi.mapping["atelectasis"] is None
    np.testing.assert_array_equal(multi.labels[:, :2], [[0, 1], [1, np.nan]])
    assert np.isnan(multi.labels[:, 2]).all()  # a class the data lacks is unknown, never negative
    with pytest.raises(MedvlkitError, match="matches"):
        align_labels(labels, ["a", "b", "c"], ["x", "y"], False)


def test_loaded_probe_on_another_label_space(tiny_clip_dir, tmp_path):
    """A {cardiomegaly, normal} probe scored on {effusion, normal} data: effusion images are not cardiomegaly."""
    make_split_folders(tmp_path / "d", {"train": 4, "val": 3})
    for split in ("train", "val"):
        (tmp_path / "d" / split / "NORMAL").rename(tmp_path / "d" / split / "normal")
        (tmp_path / "d" / split / "PNEUMONIA").rename(tmp_path / "d" / split / "cardiomegaly")
    base = ["-m", f"hf:{tiny_clip_dir}", "-q", "--workers", "0", "--bootstrap", "0"]
    assert main(["probe", *base, "-d", str(tmp_path / "d"), "--test-split", "val", "--val-split", "holdout",
                 "--out", str(tmp_path / "p")]) == 0
    make_image_folder(tmp_path / "other", {"effusion": 3, "NORMAL": 2})  # no split folders: the whole folder
    assert main(["probe", *base, "-d", str(tmp_path / "other"), "--load", str(tmp_path / "p" / "probe.npz"),
                 "--out", str(tmp_path / "re")]) == 0
    res = json.loads((tmp_path / "re" / "result.json").read_text())
    assert res["metrics"]["n"] == 2 and res["label_alignment"]["dropped_classes"] == ["effusion"]
    assert res["label_alignment"]["n_rows_dropped"] == 3
    pred = read_predictions(tmp_path / "re" / "predictions.csv")
    assert pred.classnames == ["cardiomegaly", "normal"] and (pred.labels[:, 1] == 1).all()
    make_image_folder(tmp_path / "unrelated", {"x": 2, "y": 2})
    assert main(["probe", *base, "-d", str(tmp_path / "unrelated"), "--load", str(tmp_path / "p" / "probe.npz"),
                 "--out", str(tmp_path / "bad")]) == 2


def test_saturated_probabilities_keep_their_ranking():
    """At a logit scale of 100, float32 pos/neg probabilities are exactly 1.0 from a cosine gap of 0.17."""
    rng = np.random.default_rng(0)
    d = 16
    pos, neg = np.eye(d)[:1], np.eye(d)[1:2]
    gaps = np.linspace(0.2, 0.6, 40)
    img = np.zeros((40, d), np.float32)
    img[:, 0], img[:, 1] = gaps / 2, -gaps / 2
    img[:, 2] = np.sqrt(1 - (gaps / 2) ** 2 * 2)
    y = (rng.random(40) < gaps / 0.6).astype(float)[:, None]
    old = 1.0 / (1.0 + np.exp(np.float32(100) * (img @ neg.T.astype(np.float32) - img @ pos.T.astype(np.float32))))
    assert (old == 1.0).sum() > 30  # the float32 computation ties almost every image
    lp = pos_neg_log_probs(img, pos, neg, 100.0)
    assert len(np.unique(lp)) == 40 and np.all(np.diff(lp[:, 0]) > 0)
    want = single_label_metrics(y[:, 0].astype(int), np.c_[-100 * gaps, 100 * gaps], ["no", "yes"])["auroc"]
    got = evaluate_probs(y, None, ["x"], True, n_bootstrap=0, log_probs=lp).metrics["auroc"]
    assert got == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(pos_neg_probs(img, pos, neg, 100.0), np.exp(lp))


def test_predictions_csv_is_lossless(tmp_path):
    lp = log_sigmoid(np.array([[40.0, -3.0], [45.0, 2.0], [50.0, np.log(3)]]))  # probabilities ~1 - 1e-18
    labels = np.array([[1, np.nan], [0, 1], [1, 0]])
    write_predictions(tmp_path, ["a", "b", "c"], ["effusion", "edema"], lp, labels, True)
    back = read_predictions(tmp_path / "predictions.csv")
    assert back.multilabel is True and back.classnames == ["effusion", "edema"]
    np.testing.assert_array_equal(back.log_probs, lp)  # bit for bit
    np.testing.assert_array_equal(back.labels, labels)  # the unknown stays unknown, not negative
    ev, _, _ = evaluate_csv(tmp_path / "predictions.csv")
    want = evaluate_probs(labels, None, ["effusion", "edema"], True, log_probs=lp)
    assert ev.metrics == want.metrics and ev.ci == want.ci


def test_one_macro_rule_for_classes_without_positives():
    labels = np.array([[1, 0, np.nan], [0, 1, np.nan], [1, 0, 0], [0, 1, np.nan]], float)
    probs = np.array([[0.9, 0.2, 0.3], [0.1, 0.8, 0.4], [0.7, 0.3, 0.6], [0.2, 0.9, 0.1]])
    m = multilabel_metrics(labels, probs, ["a", "b", "c"])
    assert m["n_classes_scored"] == 2 and np.isnan(m["recall/c"]) and np.isnan(m["precision/c"])
    assert m["macro_precision"] == 1.0 and m["macro_recall"] == 1.0 and m["macro_accuracy"] == 1.0
    s = single_label_metrics(np.array([0, 0, 1, 1]), np.array([[.9, .1, 0], [.4, .6, 0], [.2, .8, 0], [.3, .7, 0]]),
                             ["a", "b", "c"])
    assert s["n_classes_scored"] == 2 and s["macro_recall"] == pytest.approx(0.75)
    assert s["macro_precision"] == pytest.approx((1 + 2 / 3) / 2)  # class c (no image) is left out, not a 0


def test_multilabel_confusion_matrices_and_headline():
    labels = np.array([[1, 0], [0, 1], [1, np.nan], [0, 0]], float)
    probs = np.array([[0.9, 0.2], [0.3, 0.8], [0.4, 0.6], [0.6, 0.1]])
    ev = evaluate_probs(labels, probs, ["a", "b"], True, n_bootstrap=0)
    assert ev.extra["confusion_matrices"] == {"a": [[1, 1], [1, 1]], "b": [[2, 0], [0, 1]]}
    for task in ("linear_probe", "finetune_classification", "zeroshot_classification", "evaluate"):
        assert "auroc" in headline_keys({"task": task, "metrics": {"accuracy": 1.0, "auroc": 0.9}})


def test_retrieval_ties_count_against_the_query_and_nan_is_refused():
    from medvlkit.tasks.retrieval import retrieval_metrics

    collapsed = np.tile(np.eye(4)[:1], (6, 1))  # every image embedding equal
    text = np.eye(6, 4)
    m, _ = retrieval_metrics(collapsed.astype(np.float32), text.astype(np.float32), [f"c{i}" for i in range(6)],
                             n_bootstrap=0)
    assert m["text_to_image_recall@1"] == 0.0 and m["image_to_text_recall@1"] <= 1 / 6
    bad = collapsed.astype(np.float32).copy()
    bad[2, 0] = np.nan
    with pytest.raises(MedvlkitError, match="NaN or infinite"):
        retrieval_metrics(bad, text.astype(np.float32), [f"c{i}" for i in range(6)], n_bootstrap=0)


def test_chestxray14_official_lists_are_honoured(tmp_path):
    from helpers import make_image
    from medvlkit import load_dataset

    rows = ["Image Index,Finding Labels,Patient ID"]
    for pid, n, finding in ((1, 2, "Effusion"), (2, 2, "No Finding"), (3, 1, "Effusion|Edema"), (4, 2, "Edema")):
        for k in range(n):
            name = f"{pid:08d}_{k:03d}.png"
            make_image(tmp_path / "images" / name, seed=pid * 10 + k)
            rows.append(f"{name},{finding},{pid}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n"
                                                 "00000002_001.png\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n00000004_001.png\n")
    train = load_dataset(tmp_path / "Data_Entry_2017.csv", split="train")
    test = load_dataset(tmp_path / "Data_Entry_2017.csv", split="test")
    assert len(train) == 4 and len(test) == 3
    assert all("00000003" in i or "00000004" in i for i in test.items)
    with pytest.raises(MedvlkitError, match="train and test only"):
        load_dataset(tmp_path / "Data_Entry_2017.csv", split="val")
    (tmp_path / "test_list.txt").write_text("00000001_001.png\n")
    with pytest.raises(MedvlkitError, match="leak patients"):
        load_dataset(tmp_path / "Data_Entry_2017.csv", split="test")


def test_bf16_weights_never_share_cached_vectors(tiny_clip_dir, tmp_path, capsys):
    from helpers import make_image

    for i in range(3):
        make_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    base = ["embed", "--model", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "imgs"), "--workers", "0", "-q"]
    assert main(base + ["--out", str(tmp_path / "fp32")]) == 0
    assert main(base + ["--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    res = json.loads((tmp_path / "bf16" / "result.json").read_text())
    assert res["n_cached"] == 0  # the fp32 vectors are not served for bf16 weights
    a, b = np.load(tmp_path / "fp32" / "embeddings.npy"), np.load(tmp_path / "bf16" / "embeddings.npy")
    assert not np.array_equal(a, b)
    assert main(base + ["--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "result.json").read_text())["n_cached"] == 3
