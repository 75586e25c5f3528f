"""The CLI called in-process, on tiny models and generated images."""

import csv
import json

import numpy as np
import pytest

from helpers import make_image, make_image_folder
from medvlkit.apps.cli import main

RESULT_FIELDS = {"dataset", "model", "pretrained", "task", "metrics", "language", "ci", "config", "seed", "versions",
                 "created_at", "n_skipped"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def cxr_folder(tmp_path):
    make_image_folder(tmp_path / "cxr" / "test", {"NORMAL": 4, "PNEUMONIA": 6})
    return tmp_path / "cxr"


def test_zeroshot_writes_result_and_predictions(tiny_clip_dir, cxr_folder, tmp_path):
    out = tmp_path / "run"
    rc = main(["zeroshot", "--model", f"hf:{tiny_clip_dir}", "--data", str(cxr_folder), "--split", "test",
               "--prompts", "pneumonia", "--out", str(out), "--bootstrap", "50", "--quiet", "--workers", "0"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert RESULT_FIELDS <= set(res) and res["task"] == "zeroshot_classification"
    assert res["dataset"] == "cxr/test" and res["model"].startswith("hf:") and res["n_skipped"] == 0
    assert 0 <= res["metrics"]["accuracy"] <= 1 and len(res["ci"]["auroc"]) == 2
    assert np.asarray(res["confusion_matrix"]).sum() == 10 and res["config"]["prompts"] == "pneumonia"
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 10 and set(rows[0]) == {"file", "mode", "softmax_over", "true", "predicted", "true_NORMAL",
                                                 "true_PNEUMONIA", "prob_NORMAL", "prob_PNEUMONIA", "logp_NORMAL",
                                                 "logp_PNEUMONIA", "p_domain", "in_domain"}
    assert {r["mode"] for r in rows} == {"single_label"}
    assert {r["true"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert all(abs(float(r["prob_NORMAL"]) + float(r["prob_PNEUMONIA"]) - 1) < 1e-4 for r in rows)


def test_zeroshot_classes_unlabelled_and_pos_neg(tiny_siglip_dir, tmp_path):
    for i in range(3):
        make_image(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    out = tmp_path / "run"
    rc = main(["zeroshot", "-m", f"hf:{tiny_siglip_dir}", "-d", str(tmp_path / "imgs"), "--classes",
               "Cardiomegaly,Edema,No Finding", "--mode", "pos_neg", "--out", str(out), "-q", "--workers", "0"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert res["metrics"] == {} and res["mode"] == "pos_neg"
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 3 and all(r["true"] == "" for r in rows)
    prompts = json.loads((out / "prompts.json").read_text())
    assert "abnormal findings" in prompts["No Finding"] and "no no finding" not in prompts["No Finding"]


def test_multilabel_csv_pos_neg_metrics(tiny_clip_dir, tmp_path):
    for i in range(6):
        make_image(tmp_path / "valid" / f"p{i}.jpg", seed=i)
    edema = ["-1" if i == 0 else str((i // 2) % 2) for i in range(6)]
    lines = ["Path,Cardiomegaly,Edema"] + [f"valid/p{i}.jpg,{i % 2},{edema[i]}" for i in range(6)]
    (tmp_path / "valid.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["zeroshot", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "valid.csv"), "--prompts",
                 "chest_xray_findings", "--out", str(out), "-q", "--workers", "0", "--bootstrap", "20"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert set(res["classnames"]) == {"Cardiomegaly", "Edema"} and "auroc/Edema" in res["metrics"]
    assert res["metrics"]["support/Edema"] == 2  # the -1 of row 0 is ignored (NaN), not a negative


def test_embed_twice_uses_cache(tiny_clip_dir, cxr_folder, tmp_path, capsys):
    args = ["embed", "-m", f"hf:{tiny_clip_dir}", "-d", str(cxr_folder), "--split", "test", "-q", "--workers", "0"]
    assert main(args + ["--out", str(tmp_path / "e1")]) == 0
    assert main(args + ["--out", str(tmp_path / "e2")]) == 0
    r1 = json.loads((tmp_path / "e1" / "result.json").read_text())
    r2 = json.loads((tmp_path / "e2" / "result.json").read_text())
    assert r1["metrics"]["n_computed"] == 10 and r2["metrics"]["n_cached"] == 10
    assert r1["metrics"]["images_per_second"] > 0
    emb = np.load(tmp_path / "e1" / "embeddings.npy")
    files = _rows(tmp_path / "e1" / "files.csv")
    assert emb.shape == (10, 32) and len(files) == 10
    np.testing.assert_allclose(emb, np.load(tmp_path / "e2" / "embeddings.npy"), rtol=1e-6)


def test_on_error_skip_counts_bad_files(tiny_clip_dir, cxr_folder, tmp_path, capsys):
    (cxr_folder / "test" / "NORMAL" / "corrupt.jpeg").write_bytes(b"garbage")
    base = ["zeroshot", "-m", f"hf:{tiny_clip_dir}", "-d", str(cxr_folder), "--split", "test", "-p", "pneumonia",
            "-q", "--workers", "0", "--bootstrap", "0"]
    assert main(base + ["--out", str(tmp_path / "fail")]) == 2
    err = capsys.readouterr().err
    assert "corrupt.jpeg" in err and "--on-error skip" in err and "Traceback" not in err
    assert main(base + ["--out", str(tmp_path / "skip"), "--on-error", "skip"]) == 0
    res = json.loads((tmp_path / "skip" / "result.json").read_text())
    assert res["n_skipped"] == 1 and res["skipped"][0]["file"].endswith("corrupt.jpeg")
    assert len(_rows(tmp_path / "skip" / "predictions.csv")) == 10


def test_evaluate_predictions_made_elsewhere(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.6 * y + 0.4 * rng.random(40), 0, 1)
    with open(tmp_path / "pred.csv", "w") as f:
        f.write("file,prob_normal,prob_pneumonia\n" + "".join(f"img{i}.png,{1 - p:.4f},{p:.4f}\n" for i, p in
                                                            enumerate(p1)))
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("file,label\n" + "".join(f"img{i}.png,{'pneumonia' if v else 'normal'}\n" for i, v in enumerate(y)))
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(out), "--bootstrap", "30"]) == 0
    res = json.loads((out / "result.json").read_text())
    from sklearn.metrics import roc_auc_score

    assert res["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-3)
    assert RESULT_FIELDS <= set(res)


@pytest.mark.parametrize("args, needle", [
    (["zeroshot", "-d", "/no/such/dir", "--classes", "a,b", "-m", "hf:/no/model"], "no such file or folder"),
    (["zeroshot", "-d", "{cxr}", "--split", "test", "--prompts", "nope", "-m", "hf:{clip}"], "unknown prompt set"),
    (["zeroshot", "-d", "{cxr}", "--split", "test", "--classes", "a,b", "-m", "weird:thing"], "unknown model spec"),
    (["zeroshot", "-d", "{cxr}", "--split", "test", "--classes", "a,b", "-m", "hf:org/model-not-here"],
     "medvlkit download hf:org/model-not-here"),
    (["zeroshot", "-d", "{cxr}", "--split", "test", "-m", "hf:{clip}"], "pass --prompts NAME|FILE, --classes"),
    (["zeroshot", "-d", "{cxr}", "-m", "hf:{clip}", "--classes", "a"], "pass --split"),
    (["zeroshot", "-d", "{cxr}", "--split", "test", "-m", "hf:{clip}", "--classes", "a,b"], "no prompts for class"),
    (["evaluate", "--predictions", "/no/p.csv", "--labels", "/no/l.csv"], "no such file"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tiny_clip_dir, cxr_folder, capsys, tmp_path):
    args = [a.format(cxr=cxr_folder, clip=tiny_clip_dir) for a in args] + ["--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("error:") and "Traceback" not in err


def test_debug_shows_traceback(capsys):
    from medvlkit import MedvlkitError

    with pytest.raises(MedvlkitError):
        main(["--debug", "zeroshot", "-d", "/no/such", "--classes", "a,b"])


def test_models_and_datasets_listing(capsys, cxr_folder):
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert "chexzero" in names and "biomedclip" in names
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "medmnist" in out and "pneumonia" in out
    assert main(["datasets", "--data", str(cxr_folder), "--split", "test"]) == 0
    assert "PNEUMONIA: 6" in capsys.readouterr().out
    assert main(["zeroshot", "--bogus-option"]) == 2  # click usage error
