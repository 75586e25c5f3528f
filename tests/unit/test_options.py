"""The shared options: one set of flags on every verb that runs a model or reads data, built into RunOptions and
DataOptions; patient-level held-out validation from the ids a CSV names."""

import csv
import json

import numpy as np
import pytest
from typer.main import get_command

from helpers import make_image
from medvlkit.apps import cli
from medvlkit.apps.cli import main
from medvlkit.data import load_dataset
from medvlkit.data.splits import group_ids, holdout_indices, load_val
from medvlkit.engine.options import DataOptions, RunOptions
from medvlkit.errors import MedvlkitError

MODEL_VERBS = {"embed", "zeroshot", "retrieve", "gate", "index", "probe", "demo", "search"}
DATA_VERBS = {"datasets", "embed", "zeroshot", "retrieve", "gate", "index", "probe", "caption", "finetune"}


def _flags(verb):
    return {o for p in get_command(cli.app).commands[verb].params for o in p.opts}


def test_every_model_verb_has_the_same_model_flags_and_every_data_verb_the_data_flags():
    model_flags = {"--device", "--precision", "--tokenizer"}
    embed_flags = {"--batch-size", "--workers", "--on-error", "--no-cache", "--cache-dir", "--quiet"}
    data_flags = {"--format", "--path-column", "--label-columns", "--uncertain", "--image-root", "--group-column"}
    for verb in MODEL_VERBS:
        assert model_flags <= _flags(verb), verb
    for verb in MODEL_VERBS - {"search", "demo"}:  # a search query is one text or image: no loader, no cache
        assert embed_flags <= _flags(verb), verb
    for verb in DATA_VERBS:
        assert data_flags <= _flags(verb), verb
    assert "--precision" not in {o for p in get_command(cli.app).commands["finetune"].params
                                 for o in p.opts if not p.hidden}
    assert "--amp" in _flags("finetune")


def test_finetune_precision_names_its_new_flag(capsys):
    assert main(["finetune", "--data", ".", "--precision", "bf16"]) == 2
    assert "--amp bf16" in capsys.readouterr().err


def test_options_refuse_bad_values_naming_the_flag():
    with pytest.raises(MedvlkitError, match="--precision fp8"):
        RunOptions(precision="fp8")
    with pytest.raises(MedvlkitError, match="--on-error"):
        RunOptions(on_error="ignore")
    with pytest.raises(MedvlkitError, match="--batch-size"):
        RunOptions(batch_size=0)
    assert RunOptions(workers=0, cache=False).embed_kwargs() == dict(
        batch_size=64, num_workers=0, cache=False, cache_dir=None, on_error="fail", progress=True, fast_decode=False)
    assert DataOptions(label_columns="a,b").adapter_options() == {"label_columns": "a,b"}


def _patients_csv(tmp_path, column="Patient ID"):
    """12 training images of 6 patients (two each, same label) and 4 test images of 2 other patients."""
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", column, "Pneumonia", "split"])
        for i in range(16):
            make_image(tmp_path / f"img{i}.png", seed=i)
            w.writerow([f"img{i}.png", f"p{i // 2}", (i // 2) % 2, "train" if i < 12 else "test"])
    return path


@pytest.mark.parametrize("column", ["Patient ID", "subject_id"])
def test_csv_patient_ids_make_held_out_validation_patient_level(tmp_path, column):
    ds = load_dataset(_patients_csv(tmp_path, column), split="train")
    assert ds.groups == [f"p{i // 2}" for i in range(12)] and ds.meta["group_column"] == column
    assert ds.classnames == ["no Pneumonia", "Pneumonia"]  # one binary label; the patient column is never a label
    tr, va = holdout_indices(ds.items, ds.labels, 0.34, seed=0, groups=ds.groups)
    held = {ds.groups[i] for i in va}
    assert held and not held & {ds.groups[i] for i in tr}  # every patient on one side only
    assert ds.subset(va).groups == [ds.groups[i] for i in va]
    # an explicit --group-pattern wins over the adapter's ids; without either, each image is its own group
    assert group_ids(["a/x_1.png"], r"x_(\d)", ["p0"]) == ["1"] and group_ids(["a", "b"]) == ["a", "b"]
    # merged data where only some parts name patients (the audit's splits): an item of no group is its own group,
    # never one shared "None" patient that would pull every ungrouped image to one side of a holdout together
    assert group_ids(["a", "b", "c"], None, ["p1", None, None]) == ["p1", "b", "c"]
    assert load_val(tmp_path / "labels.csv", DataOptions()) is None  # no val split: hold out


def test_probe_holds_out_patients_from_the_csv_through_the_cli(tiny_clip_dir, tmp_path):
    path = _patients_csv(tmp_path)
    out = tmp_path / "probe"
    assert main(["probe", "--model", f"hf:{tiny_clip_dir}", "--data", str(path), "--val-fraction", "0.34",
                 "--out", str(out), "--bootstrap", "0", "-q", "--workers", "0",
                 "--label-columns", "Pneumonia", "--precision", "fp32"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["probe"]["n_val"] == 4 and res["probe"]["n_train"] == 8  # two whole patients of 6 held out
    assert res["config"]["label_columns"] == "Pneumonia" and res["config"]["precision"] == "fp32"
    assert res["config"]["device"] == "auto" and res["metrics"]["n"] == 4 and np.isfinite(res["metrics"]["auroc"])


def test_config_file_repeats_a_run_and_command_line_flags_win(tiny_clip_dir, tmp_path):
    """`finetune --config run/config.json --out other --seed 1` reruns with the same options except those given."""
    from helpers import make_split_folders

    folders = make_split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    data = tmp_path / "d.csv"
    data.write_text("path,label,split\n" + "".join(f"{p},{p.parent.name},{p.parent.parent.name}\n"
                                                   for p in sorted(folders.rglob("*.png"))))
    first = tmp_path / "first"
    common = ["--lora", "r=2,dropout=0", "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0",
              "-q", "--bootstrap", "0", "--test-split", "none", "--label-columns", "label"]
    assert main(["finetune", "--model", f"hf:{tiny_clip_dir}", "--data", str(data), "--out", str(first), *common]) == 0
    assert main(["finetune", "--config", str(first / "config.json"), "--out", str(tmp_path / "second"), "--seed",
                 "1", "-q", "--test-split", "none"]) == 0
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("first", "second"))
    assert {k for k in a if a[k] != b[k]} == {"out_dir", "seed"} and b["seed"] == 1
    assert b["dataset_options"] == {"label_columns": "label"} and b["lora"] == "r=2,dropout=0"


def test_config_file_errors_name_the_problem(tmp_path, capsys):
    from typer.main import get_command

    from medvlkit.apps.config_file import expand_config

    group = get_command(cli.app)
    (tmp_path / "pre.json").write_text(json.dumps({"data_root": "d", "out_dir": "o", "sources": ["cxr", "photo"],
                                                   "feature_batch_size": 8, "dropout": 0.1, "epochs": None}))
    assert expand_config(["pretrain", "--config", str(tmp_path / "pre.json"), "--epochs", "2"], group) == [
        "pretrain", "--data-root", "d", "--out", "o", "--sources", "cxr,photo", "--feature-batch-size", "8",
        "--dropout", "0.1", "--epochs", "2"]
    (tmp_path / "run.json").write_text(json.dumps({"run": {"cache": False, "progress": False, "device": "cpu"}}))
    assert expand_config(["embed", "--config", str(tmp_path / "run.json")], group) == [
        "embed", "--no-cache", "--quiet", "--device", "cpu"]
    (tmp_path / "bad.json").write_text(json.dumps({"epochs": 2, "colour": "red"}))
    assert main(["finetune", "--config", str(tmp_path / "bad.json")]) == 2
    assert "has no option for colour" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["finetune", "--config", str(tmp_path / "list.json")]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert main(["finetune", "--config", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
