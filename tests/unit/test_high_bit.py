"""How 16-bit files become 8 bits is the model's to say: medvlkit's rule (``robust``: 8-bit copies as stored, other
data stretched between its 0.5th and 99.5th percentiles) for every model, or the full range (divided by 65535) where
a model card says so, as MedSigLIP's scales 16-bit input to [0, 1]. One path: files, uploads and dataset items are all
decoded by the rule of the model's preprocessing, and the rule is part of the cache key."""


import numpy as np
import pytest
import torch
from PIL import Image

from helpers import save_tiny_siglip
from medvlkit import create_model
from medvlkit.data.io import read_image, read_image_bytes
from medvlkit.engine.pixels import view_of
from medvlkit.models.base import ImagePreprocessor
from medvlkit.models.preprocess import PreprocessCfg


def twelve_bit_png(path):
    """A 12-bit radiograph stored in a 16-bit PNG: values 0..4095, a gradient."""
    arr = (np.linspace(0, 4095, 64 * 48).reshape(48, 64)).round().astype(np.uint16)
    Image.fromarray(arr).save(path)
    return arr


def test_the_two_rules_on_a_16_bit_png(tmp_path):
    arr = twelve_bit_png(tmp_path / "x.png")
    robust = np.asarray(read_image(str(tmp_path / "x.png")))
    full = np.asarray(read_image(str(tmp_path / "x.png"), high_bit="full_range"))
    assert robust.max() == 255 and robust.min() == 0  # stretched to full contrast
    np.testing.assert_array_equal(full, np.round(arr / 65535 * 255).astype(np.uint8))  # as stored: dark
    assert full.max() == 16
    same = np.asarray(read_image_bytes((tmp_path / "x.png").read_bytes(), high_bit="full_range"))
    np.testing.assert_array_equal(same, full)  # an upload decodes as the file does


def test_eight_bit_files_and_uint16_arrays(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "e.png")
    for rule in ("robust", "full_range"):  # 8-bit data is never rescaled
        assert np.asarray(read_image(str(tmp_path / "e.png"), high_bit=rule)).max() == 200
    np.savez(tmp_path / "a.npz", images=np.array([[[0, 1000], [2000, 65535]]], dtype=np.uint16))
    item = f"{tmp_path / 'a.npz'}::images[0]"
    assert np.asarray(read_image(item, high_bit="full_range")).tolist() == [[0, 4], [8, 255]]
    with pytest.raises(ValueError, match="high_bit"):
        PreprocessCfg(high_bit="window")


def test_the_model_s_rule_decides_every_path_and_the_cache_key(tmp_path, monkeypatch):
    twelve_bit_png(tmp_path / "x.png")
    monkeypatch.setenv("MEDVLKIT_MODELS", str(tmp_path / "models"))
    save_tiny_siglip(tmp_path / "models" / "medsiglip")
    medsiglip = create_model("medsiglip")
    assert medsiglip.preprocess_cfg.high_bit == "full_range" and "65535" in medsiglip.preprocess_cfg.describe()
    pre = medsiglip.image_preprocessor
    from_file = view_of(str(tmp_path / "x.png"), pre)
    from_upload = view_of((tmp_path / "x.png").read_bytes(), pre, "x.png")
    assert torch.equal(from_file, from_upload) and int(from_file.max()) <= 16
    robust = ImagePreprocessor(PreprocessCfg(**(medsiglip.preprocess_cfg.to_dict() | {"high_bit": "robust"})))
    assert int(view_of(str(tmp_path / "x.png"), robust).max()) >= 250
    plain = create_model(f"hf:{tmp_path / 'models' / 'medsiglip'}")  # the same weights, medvlkit's rule
    assert plain.preprocess_cfg.high_bit == "robust" and plain.fingerprint() != medsiglip.fingerprint()
    assert "high_bit" not in repr(plain.preprocess_cfg)  # every other model's cache keys are as before


def test_dataset_items_follow_the_rule(tmp_path):
    from medvlkit.data import load_dataset
    from medvlkit.engine.pixels import ItemViews

    (tmp_path / "d" / "a").mkdir(parents=True)
    twelve_bit_png(tmp_path / "d" / "a" / "x.png")
    ds = load_dataset(str(tmp_path / "d"))
    cfg = PreprocessCfg(image_size=32, resize_mode="squash", high_bit="full_range")
    _, view, reason = ItemViews(ds, [0], ImagePreprocessor(cfg))[0]
    assert reason == "" and int(view.max()) <= 16
    assert torch.equal(view, view_of(str(tmp_path / "d" / "a" / "x.png"), ImagePreprocessor(cfg)))


def test_models_and_data_name_the_same_rules():
    """The rule names stand in both layers (models and data may not import each other): one list, twice."""
    from medvlkit.data.intensity import HIGH_BIT_RULES as DATA_RULES
    from medvlkit.models.preprocess import HIGH_BIT_RULES as MODEL_RULES

    assert DATA_RULES == MODEL_RULES
