"""``medvlkit eval``: models x datasets x tasks on tiny models and generated data, one report at the end."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image, make_split_folders
from medvlkit.apps.cli import main
from medvlkit.data.dataset import ImageDataset
from medvlkit.tasks.sweep import SweepConfig, matching_prompts, slug


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    labelled = make_split_folders(root / "cxr", {"train": 6, "val": 3, "test": 4})
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(6):
            make_image(root / f"cap{i}.png", seed=50 + i)
            f.write(json.dumps({"image": f"cap{i}.png", "text": f"finding number {i}", "split": "test"}) + "\n")
    no_test = make_split_folders(root / "trainonly", {"train": 2})
    return labelled, root / "pairs.jsonl", no_test


def _cells(out):
    return {(c["model"].split(":")[0], c["data"].split("/")[-1], c["task"]): c
            for c in json.loads((out / "sweep.json").read_text())["cells"]}


def test_sweep_runs_the_grid_skips_what_is_done_and_reports_failures(tiny_clip_dir, tiny_siglip_dir, grid_data,
                                                                      tmp_path, capsys):
    labelled, pairs, no_test = grid_data
    out = tmp_path / "sweep"
    args = ["eval", "-m", f"hf:{tiny_clip_dir}", "-m", f"hf:{tiny_siglip_dir}", "-d", str(labelled), "-d", str(pairs),
            "--out", str(out), "--bootstrap", "20", "-q", "--workers", "0"]
    assert main(args) == 0
    cells = _cells(out)
    # labels -> zero-shot + probe (a train split exists); captions -> retrieval; nothing else
    assert {k for k, c in cells.items() if c["status"] == "done"} == {
        (m, d, t) for m in ("hf",) for d, t in (("cxr", "zeroshot"), ("cxr", "probe"), ("pairs.jsonl", "retrieval"))}
    assert len(cells) == 3 and sum(c["status"] == "done" for c in json.loads(
        (out / "sweep.json").read_text())["cells"]) == 6  # two models x three cells
    for c in json.loads((out / "sweep.json").read_text())["cells"]:
        result = json.loads((out / slug(c["model"]) / slug(c["data"]) / c["task"] / "result.json").read_text())
        assert result["config"]["sweep"]["task"] == c["task"] and result["model"] == c["model"]
        assert c["headline"] and set(c["headline"]) == set(result["headline"])
    zs = json.loads((out / slug(f"hf:{tiny_clip_dir}") / slug(str(labelled)) / "zeroshot" / "result.json").read_text())
    assert zs["config"]["prompts"] == "pneumonia" and zs["metrics"]["n"] == 8  # matched to NORMAL/PNEUMONIA
    report = (out / "report" / "report.md").read_text()
    assert report.count("zeroshot_retrieval") == 2 and report.count("linear_probe") == 2

    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    assert main([*args, "--skip-existing"]) == 0
    assert {c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamp  # nothing recomputed
    assert main([*args, "--skip-existing", "--seed", "1", "--task", "zeroshot"]) == 0  # other settings: rerun
    assert {(c["data"].split("/")[-1], c["status"]) for c in json.loads((out / "sweep.json").read_text())["cells"]} \
        == {("cxr", "done"), ("pairs.jsonl", "not applicable")}  # an asked-for task the data cannot do is listed

    zeroshot_only = [*args, "--skip-existing", "--seed", "1", "--task", "zeroshot"]
    assert main([*zeroshot_only, "--batch-size", "2"]) == 0  # how fast, not what: kept
    assert {c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]} == {"skipped",
                                                                                             "not applicable"}
    assert main([*zeroshot_only, "--fast-decode"]) == 0  # other pixels: run again
    assert "done" in {c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]}

    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-m", "hf:/no/such/model", "-d", str(labelled), "-d",
                 str(no_test), "--out", str(bad), "--bootstrap", "0", "-q", "--workers", "0"]) == 2
    assert "runs failed" in capsys.readouterr().err
    cells = json.loads((bad / "sweep.json").read_text())["cells"]
    failed = [c for c in cells if c["status"] == "failed"]
    assert {c["error"].split(":")[0] for c in failed} == {"model", "data"}  # each failure names its cause
    assert [c["task"] for c in cells if c["status"] == "done"] == ["zeroshot", "probe"]  # the rest still ran
    assert (bad / "report" / "report.html").is_file()


def test_prompt_matching_and_options():
    def ds(classes, multilabel=False):
        return ImageDataset([f"{c}.png" for c in classes], "d", classes, np.eye(len(classes)), multilabel)

    assert matching_prompts(ds(["NORMAL", "PNEUMONIA"])).name == "pneumonia"
    assert matching_prompts(ds(["CT", "MR"])).name == "modality"
    unknown = matching_prompts(ds(["cat", "dog"]))
    assert unknown.name == "classes" and unknown.classnames == ["cat", "dog"] and unknown.mode == "softmax"
    assert matching_prompts(ds(["cat", "dog"], True)).mode == "pos_neg"
    with pytest.raises(Exception, match="--task"):
        SweepConfig(["lite"], ["x"], "out", ("auto", "probe"))
    with pytest.raises(Exception, match="--age-bands and --metadata go with --subgroups"):  # not silently ignored
        SweepConfig(["lite"], ["x"], "out", metadata="meta.csv")
    with pytest.raises(Exception, match="--subgroup-metric ppv: valid: accuracy"):
        SweepConfig(["lite"], ["x"], "out", subgroups="sex", subgroup_metric="ppv")
    assert slug("hf:/a/b/clip") != slug("hf:/c/b/clip") and slug("hf:/a/b/clip").startswith("hf-clip-")


def test_sweep_probe_holds_out_whole_patients_with_a_group_pattern(tiny_clip_dir, tmp_path):
    """No val split and patient ids only in the file names: --group-pattern makes the probe's held-out validation
    whole patients (2 images each: 4 held out, where image-level holdout would take 2)."""
    for split, patients in (("train", 6), ("test", 2)):
        for c, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for p in range(patients):
                for j in range(2):
                    make_image(tmp_path / "cxr" / split / cls / f"p{c}{p}_{j}.png", seed=100 * c + 10 * p + j)
    out = tmp_path / "sweep"
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "cxr"), "--task", "probe",
                 "--group-pattern", r"(p\d+)_", "--out", str(out), "--bootstrap", "0", "-q", "--workers", "0"]) == 0
    cell = json.loads((out / "sweep.json").read_text())["cells"][0]
    result = json.loads((Path(cell["out"]) / "result.json").read_text())
    assert result["probe"]["n_val"] == 4 and result["probe"]["n_train"] == 20
    assert result["config"]["sweep"]["group_pattern"] == r"(p\d+)_"


def test_the_grid_shows_its_progress(tiny_clip_dir, grid_data, tmp_path, capsys):
    """One bar over the whole grid, with an ETA (issue 29, item 6): every cell counted once, failed ones too."""
    labelled, pairs, _ = grid_data
    assert main(["eval", "-m", f"hf:{tiny_clip_dir}", "-m", "hf:/no/such/model", "-d", str(labelled), "-d",
                 str(pairs), "--out", str(tmp_path / "s"), "--bootstrap", "0", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "eval: cells" in err and "6/6" in err  # 3 cells run, 3 failed with the missing model, all counted


def test_fewshot_cells_are_the_adapt_grid_from_the_zero_shot_cells_prompts(tiny_clip_dir, grid_data, tmp_path):
    """``eval --task fewshot``: each cell is ``adapt``'s grid started from the prompt set the dataset's zero-shot cell
    uses (its zero-shot row equals that cell), data without a train split is not applicable, and the report puts
    every grid into one table."""
    import csv

    labelled, pairs, no_test = grid_data
    out = tmp_path / "sweep"
    args = ["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(labelled), "-d", str(pairs), "--out", str(out),
            "--bootstrap", "20", "-q", "--workers", "0", "--task", "zeroshot,fewshot",
            "--fewshot-methods", "tip_adapter,clap", "--shots", "1,2", "--seeds", "0,1"]
    assert main(args) == 0
    cells = _cells(out)
    assert cells[("hf", "cxr", "fewshot")]["status"] == "done" and cells[("hf", "cxr", "fewshot")]["prompts"] == \
        "pneumonia"
    assert cells[("hf", "pairs.jsonl", "fewshot")]["status"] == "not applicable"
    folder = out / slug(f"hf:{tiny_clip_dir}") / slug(str(labelled))
    grid = json.loads((folder / "fewshot" / "result.json").read_text())
    zs = json.loads((folder / "zeroshot" / "result.json").read_text())
    assert grid["task"] == "fewshot_grid" and grid["config"]["prompts"] == zs["config"]["prompts"] == "pneumonia"
    with open(folder / "fewshot" / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 2 * 2 * 2
    assert float(rows[0]["auroc"]) == pytest.approx(zs["metrics"]["auroc"], abs=1e-12)  # two paths, one number
    # a cell is `medvlkit adapt` with the same prompt set, method, shots and seed
    assert main(["adapt", "-m", f"hf:{tiny_clip_dir}", "--data", str(labelled), "--prompts", "pneumonia", "-q",
                 "--workers", "0", "--bootstrap", "20", "--method", "clap", "--shots", "2", "--seed", "1",
                 "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    assert json.loads((folder / "fewshot" / "clap" / "k2-s1" / "result.json").read_text())["metrics"] == one["metrics"]
    report = (out / "report" / "report.md").read_text()
    assert "## Few-shot adaptation" in report and report.count("| tip_adapter |") == 1 and "**" in report
    assert "few-shot curve" in (out / "report" / "report.html").read_text()
    # rerun: the grid keeps every fit (same identity), nothing refitted
    stamp = (folder / "fewshot" / "clap" / "k2-s1" / "result.json").stat().st_mtime_ns
    assert main([*args, "--skip-existing"]) == 0
    assert (folder / "fewshot" / "clap" / "k2-s1" / "result.json").stat().st_mtime_ns == stamp
    assert main([*args[:-6], "--fewshot-methods", "nope"]) == 2
    assert main([*args[:-6], "--fewshot-methods", ","]) == 2  # nothing named is not "all"
    no_fewshot = [a if a != "zeroshot,fewshot" else "zeroshot" for a in args]
    assert main(no_fewshot) == 2  # grid options without a fewshot cell to apply them to
