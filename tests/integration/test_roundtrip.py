"""`medvlkit evaluate` on a run's own predictions.csv reproduces that run's result.json exactly, for every task
that writes predictions (so calibrate, apply-calibration and report read back what the run scored)."""

import json

import numpy as np

from helpers import make_image, make_split_folders
from medvlkit.apps.cli import main


def _same_numbers(run, tmp_path):
    out = tmp_path / f"eval-{run.name}"
    assert main(["evaluate", "--predictions", str(run / "predictions.csv"), "--bootstrap", "25", "--out",
                 str(out)]) == 0
    want, got = json.loads((run / "result.json").read_text()), json.loads((out / "result.json").read_text())
    assert got["metrics"] == want["metrics"]
    assert got["ci"] == want["ci"]
    return want


def _chexpert_csv(tmp_path, n=16):
    rng = np.random.default_rng(0)
    lines = ["path,split,Effusion,Edema"]
    for split in ("train", "val", "test"):
        for i in range(n):
            make_image(tmp_path / "img" / f"{split}{i}.png", seed=i + 100 * len(split))
            a, b = rng.choice(["0", "1", "-1"], p=[0.45, 0.45, 0.1]), rng.choice(["0", "1", ""], p=[0.45, 0.45, 0.1])
            a, b = ("1", "0") if i % 4 == 0 else ("0", "1") if i % 4 == 1 else (a, b)
            lines.append(f"img/{split}{i}.png,{split},{a},{b}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "labels.csv"


def test_every_task_round_trips(tiny_clip_dir, tmp_path):
    folder = make_split_folders(tmp_path / "d", {"train": 6, "val": 4, "test": 5})
    csv_file = _chexpert_csv(tmp_path)
    base = ["--model", f"hf:{tiny_clip_dir}", "--workers", "0", "--quiet", "--bootstrap", "25"]
    runs = {
        "zs_softmax": ["zeroshot", *base, "--data", str(folder), "--split", "test", "--prompts", "pneumonia"],
        "zs_posneg": ["zeroshot", *base, "--data", str(csv_file), "--split", "test", "--classes", "Effusion,Edema",
                      "--mode", "pos_neg"],
        "probe": ["probe", *base, "--data", str(folder)],
        "probe_multi": ["probe", *base, "--data", str(csv_file), "--C", "1"],
        "ft_bce": ["finetune", *base, "--data", str(csv_file), "--mode", "supervised", "--epochs", "1",
                   "--batch-size", "8", "--device", "cpu"],
    }
    for name, argv in runs.items():
        assert main(argv + ["--out", str(tmp_path / name)]) == 0, name
        res = _same_numbers(tmp_path / name, tmp_path)
        assert "auroc" in res["metrics"], name
    posneg = json.loads((tmp_path / "zs_posneg" / "result.json").read_text())
    assert set(posneg["confusion_matrices"]) == {"Effusion", "Edema"}
    # calibration fitted on validation predictions, applied to the test predictions: round trip too
    assert main(["zeroshot", *base, "--data", str(folder), "--split", "val", "--prompts", "pneumonia", "--out",
                 str(tmp_path / "val")]) == 0
    assert main(["calibrate", "--predictions", str(tmp_path / "val" / "predictions.csv"), "--out",
                 str(tmp_path / "cal")]) == 0
    assert main(["apply-calibration", "--predictions", str(tmp_path / "zs_softmax" / "predictions.csv"),
                 "--calibration", str(tmp_path / "cal" / "calibration.json"), "--bootstrap", "25", "--out",
                 str(tmp_path / "applied")]) == 0
    applied = json.loads((tmp_path / "applied" / "result.json").read_text())
    assert applied["metrics"]["auroc"] == applied["metrics_uncalibrated"]["auroc"]  # temperature keeps the order
    assert "validation" in applied["threshold_source"]
