import json

import numpy as np
import pytest

from helpers import make_image, make_image_folder
from medvlkit import MedvlkitError, load_dataset


def test_image_folder_with_splits(tmp_path):
    make_image_folder(tmp_path / "test", {"NORMAL": 2, "PNEUMONIA": 3})
    make_image_folder(tmp_path / "train", {"NORMAL": 1, "PNEUMONIA": 1})
    ds = load_dataset(tmp_path, split="test")
    assert ds.classnames == ["NORMAL", "PNEUMONIA"] and len(ds) == 5
    assert ds.labels.tolist()[0] == [1, 0] and ds.targets().tolist() == [0, 0, 1, 1, 1]
    assert not ds.multilabel
    with pytest.raises(MedvlkitError, match="pass --split"):
        load_dataset(tmp_path)
    with pytest.raises(MedvlkitError, match="no 'val' split"):
        load_dataset(tmp_path, split="val")


def test_covid_qu_ex_layout(tmp_path):
    for cls in ("COVID-19", "Normal"):
        make_image_folder(tmp_path / "Val" / cls, {"images": 2})
        make_image_folder(tmp_path / "Val" / cls, {"lung masks": 2})
    ds = load_dataset(tmp_path, split="val")
    assert ds.classnames == ["COVID-19", "Normal"] and len(ds) == 4
    assert all("/images/" in it for it in ds.items)


def test_flat_unlabelled_and_empty(tmp_path):
    make_image(tmp_path / "flat" / "a.png")
    make_image(tmp_path / "flat" / "b.jpg")
    (tmp_path / "flat" / "notes.txt").write_text("x")
    ds = load_dataset(tmp_path / "flat")
    assert len(ds) == 2 and not ds.has_labels
    make_image(tmp_path / "flat" / "deep" / "er" / "c.png")
    assert len(load_dataset(tmp_path / "flat", format="folder", recursive=True)) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedvlkitError, match="no images found"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(MedvlkitError, match="no such file"):
        load_dataset(tmp_path / "missing")


def test_chexpert_csv_uncertain_policies(tmp_path):
    for i in range(3):
        make_image(tmp_path / "valid" / f"p{i}.jpg", seed=i)
    (tmp_path / "valid.csv").write_text(
        "Path,Sex,Age,Cardiomegaly,Edema,No Finding\n"
        "valid/p0.jpg,Male,60,1.0,-1.0,\nvalid/p1.jpg,Female,41,0.0,,1.0\nvalid/p2.jpg,Male,33,-1.0,1.0,0.0\n")
    ds = load_dataset(tmp_path / "valid.csv")
    assert ds.classnames == ["Cardiomegaly", "Edema", "No Finding"] and ds.multilabel
    assert np.isnan(ds.labels[0, 1]) and np.isnan(ds.labels[1, 1]) and ds.labels[0, 0] == 1
    assert load_dataset(tmp_path / "valid.csv", uncertain="ones").labels[0, 1] == 1
    assert load_dataset(tmp_path / "valid.csv", uncertain="zeros").labels[2, 0] == 0
    with pytest.raises(MedvlkitError, match="--uncertain"):
        load_dataset(tmp_path / "valid.csv", uncertain="maybe")
    assert all(p.endswith(".jpg") and "valid/p" in p for p in ds.items)


def test_chestxray14_findings_column(tmp_path):
    for i in range(3):
        make_image(tmp_path / "images" / f"0000{i}_000.png", seed=i)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n00000_000.png,Cardiomegaly|Effusion,0,1\n"
        "00001_000.png,No Finding,0,2\n00002_000.png,Effusion,1,2\n")
    ds = load_dataset(tmp_path / "Data_Entry_2017.csv")
    assert ds.classnames == ["Cardiomegaly", "Effusion", "No Finding"] and ds.multilabel
    assert ds.labels.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert all((tmp_path / "images").as_posix() in p for p in ds.items)


def test_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("img,y\nx.png,1\n")
    with pytest.raises(MedvlkitError, match="no image path column"):
        load_dataset(tmp_path / "a.csv")
    with pytest.raises(MedvlkitError, match="no column 'file'"):
        load_dataset(tmp_path / "a.csv", path_column="file")
    assert load_dataset(tmp_path / "a.csv", path_column="img").classnames == ["no y", "y"]  # one binary label


def test_caption_jsonl_and_roco_csv(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "imgs/a.png", "text": "chest x-ray, pneumonia"}) + "\n")
    ds = load_dataset(tmp_path / "pairs.jsonl")
    assert ds.texts == ["chest x-ray, pneumonia"] and ds.items[0].endswith("imgs/a.png")
    make_image(tmp_path / "images" / "ROCO_1.jpg")
    (tmp_path / "roco.csv").write_text("id,name,caption\nROCO_1,ROCO_1.jpg,CT of the abdomen\n")
    ds = load_dataset(tmp_path / "roco.csv")
    assert ds.texts == ["CT of the abdomen"] and ds.items[0].endswith("images/ROCO_1.jpg")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(MedvlkitError, match="bad.jsonl:1"):
        load_dataset(tmp_path / "bad.jsonl")


def test_medmnist_npz(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((4, 28, 28), np.uint8),
             train_labels=np.array([[0], [1], [1], [0]]), test_images=np.zeros((2, 28, 28), np.uint8),
             test_labels=np.array([[1], [0]]))
    ds = load_dataset(tmp_path / "pneumoniamnist.npz", split="test")
    assert ds.classnames == ["normal", "pneumonia"] and ds.targets().tolist() == [1, 0]
    assert ds.load_image(0).size == (28, 28)
    with pytest.raises(MedvlkitError, match="pass --split"):
        load_dataset(tmp_path / "pneumoniamnist.npz")
    np.savez(tmp_path / "chestmnist.npz", val_images=np.zeros((2, 28, 28), np.uint8),
             val_labels=np.eye(14, dtype=np.uint8)[:2])
    assert load_dataset(tmp_path / "chestmnist.npz", split="val").multilabel


def test_explicit_format_and_unknown(tmp_path):
    with pytest.raises(MedvlkitError, match="--format"):
        load_dataset(tmp_path, format="nifti")
    with pytest.raises(MedvlkitError, match="--format dicomweb reads a PACS"):
        load_dataset(tmp_path, format="dicomweb")
    (tmp_path / "x.weird").write_text("")
    with pytest.raises(MedvlkitError, match="no dataset format"):
        load_dataset(tmp_path / "x.weird")


def test_auto_format_asks_adapters_by_priority_not_import_order(tmp_path):
    """A plugin adapter for one folder layout, registered after the built-ins, is asked before the plain image
    folder when its priority is above 0, and after it otherwise."""
    from medvlkit.data import dataset as dataset_mod

    root = make_image_folder(tmp_path / "cases", {"a": 1, "b": 1})
    (root / "LAYOUT").write_text("")
    seen = []

    def load(path, split=None, **_):
        seen.append(path)
        return dataset_mod.ImageDataset([], "layout")

    try:
        dataset_mod.register_adapter("layout-low", "test", lambda p: (p / "LAYOUT").exists())(load)
        assert load_dataset(root).name == "cases" and not seen  # priority 0 ties lose to the earlier folder adapter
        dataset_mod.register_adapter("layout-high", "test", lambda p: (p / "LAYOUT").exists(), priority=5)(load)
        assert load_dataset(root).name == "layout" and seen == [root]
        names = [a.name for a in dataset_mod.list_adapters()]
        assert names.index("layout-high") < names.index("folder") < names.index("layout-low")
        assert names.index("medpix") < names.index("folder") and names.index("captions") < names.index("csv")
    finally:
        for name in ("layout-low", "layout-high"):
            dataset_mod._ADAPTERS.pop(name, None)
