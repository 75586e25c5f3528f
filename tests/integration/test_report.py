import csv
import json

import numpy as np

from helpers import make_image
from medvlkit.apps.cli import main
from medvlkit.engine.results import write_predictions, write_result
from medvlkit.engine.scores import log_probs_from_probs


def _zeroshot_run(folder, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 50)
    p1 = np.clip(0.5 * y + 0.5 * rng.random(50), 0, 1)
    probs = np.c_[1 - p1, p1]
    write_predictions(folder, [f"{i}.png" for i in range(50)], ["NORMAL", "PNEUMONIA"], log_probs_from_probs(probs),
                      np.eye(2)[y], False)
    cm = np.bincount(y * 2 + probs.argmax(1), minlength=4).reshape(2, 2).tolist()
    write_result(folder, dataset="cxr/test", model="lite", task="zeroshot_classification",
                 metrics={"accuracy": 0.8, "auroc": 0.9}, ci={"auroc": [0.85, 0.95]},
                 extra={"classnames": ["NORMAL", "PNEUMONIA"], "mode": "softmax", "confusion_matrix": cm})


def test_report_merges_runs_into_md_csv_html(tmp_path):
    _zeroshot_run(tmp_path / "a", 0)
    _zeroshot_run(tmp_path / "b", 1)
    imgs = [str(make_image(tmp_path / "img" / f"{i}.png", seed=i)) for i in range(3)]
    write_result(tmp_path / "r", dataset="medpix2/test", model="lite", task="zeroshot_retrieval",
                 metrics={"image_to_text_recall@5": 0.2}, ci={"image_to_text_recall@5": [0.1, 0.3]},
                 extra={"examples": [{"query": "CT of the chest", "answer": imgs[0],
                                      "top": [{"file": f, "score": 0.5 - i / 10, "correct": i == 0}
                                              for i, f in enumerate(imgs)]}]})
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "r"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.count("\n") == 5 and "auroc 0.9000 [0.850, 0.950]" in md
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [r["run"] for r in rows] == ["a", "b", "r"] and rows[0]["auroc"] == "0.9"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64") == 6  # confusion matrix, ROC, reliability for each zero-shot run
    assert page.count("data:image/jpeg;base64") == 3 and "CT of the chest" in page and 'class="hit"' in page
    assert main(["report", str(tmp_path / "img"), "--out", str(out)]) == 2


def test_report_after_calibration(tmp_path):
    _zeroshot_run(tmp_path / "val", 2)
    _zeroshot_run(tmp_path / "test", 3)
    assert main(["calibrate", "--predictions", str(tmp_path / "val" / "predictions.csv"), "--out",
                 str(tmp_path / "cal")]) == 0
    assert main(["apply-calibration", "--predictions", str(tmp_path / "test" / "predictions.csv"), "--calibration",
                 str(tmp_path / "cal" / "calibration.json"), "--out", str(tmp_path / "applied"), "--bootstrap",
                 "10"]) == 0
    assert main(["report", str(tmp_path / "cal"), str(tmp_path / "applied"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "ece_uncalibrated" in page and page.count("data:image/png") >= 3
    res = json.loads((tmp_path / "applied" / "result.json").read_text())
    assert set(res["reliability"]) == {"uncalibrated", "calibrated"}


def test_plots_leave_pyplot_alone():
    """Plots are standalone Figures: pyplot is never imported and the caller's backend is not switched."""
    import subprocess
    import sys

    code = ("import sys, matplotlib; rc = matplotlib.rcParams; before = dict.__getitem__(rc, 'backend'); "
            "from medvlkit.engine.plots import roc_png; import numpy as np; "
            "png = roc_png(np.array([[1.0], [0.0]]), np.array([[0.9], [0.2]]), ['x']); "
            "assert png[:4] == b'\\x89PNG'; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert dict.__getitem__(rc, 'backend') is before")  # raw rcParam: reading it must not resolve it
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runs_are_named_by_as_much_of_their_path_as_tells_them_apart(tmp_path):
    """An eval sweep's folders all end in <task>: named 'zeroshot', "zeroshot'", ... a reader could not tell which
    model and dataset each row is."""
    from medvlkit.apps.report import _unique_names

    paths = [tmp_path / "m1" / "d1" / "zeroshot", tmp_path / "m2" / "d1" / "zeroshot", tmp_path / "m1" / "d2" / "probe"]
    assert _unique_names(paths) == ["m1/d1/zeroshot", "m2/d1/zeroshot", "m1/d2/probe"]
    assert _unique_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
    assert _unique_names([tmp_path / "a", tmp_path / "a"]) == ["a", "a'"]
