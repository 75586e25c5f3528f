"""`medvlkit adapt` end to end on a tiny random CLIP and generated images: fit, score, save, load, refuse."""

import json

import pytest

from helpers import make_split_folders
from medvlkit.apps.cli import main


@pytest.mark.parametrize("method", ["tip_adapter", "tip_adapter_f", "clip_adapter", "clap", "coop"])
def test_adapt_fits_scores_and_reloads(tiny_clip_dir, tmp_path, method):
    data = make_split_folders(tmp_path / "data", {"train": 6, "test": 3})
    base = ["adapt", "-m", f"hf:{tiny_clip_dir}", "--data", str(data), "-q", "--workers", "0", "--bootstrap", "20"]
    assert main([*base, "--method", method, "--shots", "4", "--out", str(tmp_path / "fit")]) == 0
    res = json.loads((tmp_path / "fit" / "result.json").read_text())
    assert res["task"] == "fewshot_adapt" and res["adapter"]["n_shots"] == 8 and res["adapter"]["method"] == method
    assert res["classnames"] == ["NORMAL", "PNEUMONIA"]
    assert len((tmp_path / "fit" / "predictions.csv").read_text().splitlines()) == 1 + 6  # the 6 test images
    assert (tmp_path / "fit" / "adapter.npz").is_file()
    assert main([*base, "--load", str(tmp_path / "fit" / "adapter.npz"), "--out", str(tmp_path / "load")]) == 0
    again = json.loads((tmp_path / "load" / "result.json").read_text())
    assert again["metrics"] == res["metrics"]
    # the shots are never scored: the training split as the test split is refused
    assert main([*base, "--method", method, "--shots", "4", "--test-split", "train",
                 "--out", str(tmp_path / "same")]) == 2


def test_adapt_refuses_more_shots_than_the_data_has(tiny_clip_dir, tmp_path):
    data = make_split_folders(tmp_path / "data", {"train": 2, "test": 2})
    assert main(["adapt", "-m", f"hf:{tiny_clip_dir}", "--data", str(data), "-q", "--workers", "0",
                 "--shots", "5", "--out", str(tmp_path / "o")]) == 2


def test_the_grid_is_its_single_runs_summarised_and_resumes(tiny_clip_dir, tmp_path):
    import csv

    data = make_split_folders(tmp_path / "data", {"train": 4, "test": 3})
    base = ["adapt", "-m", f"hf:{tiny_clip_dir}", "--data", str(data), "-q", "--workers", "0", "--bootstrap", "20"]
    grid = tmp_path / "grid"
    assert main([*base, "--method", "tip_adapter,clap", "--shots", "1,2", "--seeds", "0,1", "--out", str(grid)]) == 0
    with open(grid / "grid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 2 * 2 * 2 and rows[0]["method"] == "zeroshot"
    with open(grid / "summary.csv", newline="") as f:
        summary = {(r["method"], r["shots"]): r for r in csv.DictReader(f)}
    cells = [r for r in rows if r["method"] == "clap" and r["shots"] == "2"]
    assert float(summary[("clap", "2")]["auroc_mean"]) == pytest.approx(sum(float(r["auroc"]) for r in cells) / 2)
    assert (grid / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (grid / "summary.md").is_file()
    # a cell is the single run with the same method, shots and seed: one path, the same numbers
    assert main([*base, "--method", "clap", "--shots", "2", "--seed", "1", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    cell = json.loads((grid / "clap" / "k2-s1" / "result.json").read_text())
    assert cell["metrics"] == one["metrics"] and cell["identity"]["sha256"] == one["identity"]["sha256"]
    # rerun: every cell is kept (same identity), nothing refitted
    stamp = (grid / "clap" / "k2-s1" / "result.json").stat().st_mtime_ns
    assert main([*base, "--method", "tip_adapter,clap", "--shots", "1,2", "--seeds", "0,1", "--out", str(grid),
                 "--overwrite"]) == 0
    assert (grid / "clap" / "k2-s1" / "result.json").stat().st_mtime_ns == stamp


def test_class_names_with_commas_get_their_own_prompts(tiny_clip_dir, tmp_path):
    """BreastMNIST names a class 'normal, benign': generic prompts are made from the names, never from a
    comma-joined string (that split it into three classes)."""
    from helpers import make_image_folder

    for i, split in enumerate(("train", "test")):
        make_image_folder(tmp_path / "data" / split, {"malignant": 3, "normal, benign": 3}, seed=10 * i)
    assert main(["adapt", "-m", f"hf:{tiny_clip_dir}", "--data", str(tmp_path / "data"), "-q", "--workers", "0",
                 "--bootstrap", "0", "--method", "clap", "--shots", "2", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["classnames"] == ["malignant", "normal, benign"] and res["metrics"]["n"] == 6


def test_clip_lora_is_finetune_s_prompt_ce_run_and_scores_as_finetune_does(tiny_clip_dir, tmp_path):
    """clip_lora: finetune with the paper's recipe on the cell's K shots (recorded in its folder), then the tuned
    model's zero-shot classifier; its numbers equal finetune's own scoring of that model (two paths, one answer), a
    rerun keeps the training, and the saved adapter reloads with the tuned model."""
    data = make_split_folders(tmp_path / "data", {"train": 4, "test": 3})
    base = ["-m", f"hf:{tiny_clip_dir}", "--data", str(data), "--prompts", "pneumonia", "-q", "--workers", "0",
            "--bootstrap", "20"]
    out = tmp_path / "cl"
    assert main(["adapt", *base, "--method", "clip_lora", "--shots", "2", "--steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    cfg = json.loads((out / "clip_lora" / "config.json").read_text())
    assert cfg["mode"] == "prompt_ce" and cfg["shots"] == 2 and cfg["val_split"] == "none" and cfg["max_steps"] == 3
    assert cfg["lora"] == "r=2,alpha=1.0,dropout=0.25,targets=q_proj,k_proj,v_proj" and cfg["lr"] == 2e-4
    assert res["model"] == f"ft:{out / 'clip_lora' / 'best'}" and res["adapter"]["n_shots"] == 4
    assert main(["finetune", *base, "--mode", "prompt_ce", "--load", str(out / "clip_lora" / "best"),
                 "--out", str(tmp_path / "ft")]) == 0
    ft = json.loads((tmp_path / "ft" / "result.json").read_text())
    for k in ("auroc", "accuracy", "n"):
        assert ft["metrics"][k] == pytest.approx(res["metrics"][k], abs=1e-9)
    stamp = (out / "clip_lora" / "best" / "finetune.json").stat().st_mtime_ns
    assert main(["adapt", *base, "--method", "clip_lora", "--shots", "2", "--steps", "3", "--out", str(out),
                 "--overwrite"]) == 0
    assert (out / "clip_lora" / "best" / "finetune.json").stat().st_mtime_ns == stamp  # not trained again
    assert main(["adapt", *base, "-m", f"ft:{out / 'clip_lora' / 'best'}", "--load", str(out / "adapter.npz"),
                 "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "result.json").read_text())["metrics"] == res["metrics"]
    assert main(["adapt", *base, "--method", "clap", "--steps", "3", "--out", str(tmp_path / "no")]) == 2
