"""MedSigLIP's resize: TensorFlow's bilinear without antialiasing (``interpolation="tf_bilinear"``), checked against
TensorFlow 2.21's own output on real images (``tests/fixtures/tf_bilinear``, made by its ``make.py`` in a throwaway
environment); the ``medsiglip`` preset applies it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save_tiny_siglip
from medvlkit import create_model
from medvlkit.models.base import ImagePreprocessor
from medvlkit.models.preprocess import PreprocessCfg

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tf_bilinear" / "expected.npz"


@pytest.mark.data
def test_tf_bilinear_equals_tensorflow_on_real_images(data_root):
    ref = np.load(FIXTURE)
    for i, name in enumerate(ref["files"]):
        image = Image.open(data_root / str(name)).convert("RGB")
        assert image.size[::-1] == tuple(ref["shapes"][i])  # the same input TensorFlow resized
        for size in map(int, ref["sizes"]):
            cfg = PreprocessCfg(size, (0.5,) * 3, (0.5,) * 3, "tf_bilinear", "squash")
            ours = ImagePreprocessor(cfg).to_uint8(image).numpy().transpose(1, 2, 0).astype(np.float64)
            want = ref[f"{i}_{size}"].astype(np.float64)
            assert np.abs(ours - want).max() <= 0.5 + 0.07, (name, size)  # uint8 rounding (+ float16 storage)
            if size == 64:  # PIL's bilinear low-pass filters when shrinking: far from what MedSigLIP saw
                pil = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)
                assert np.abs(pil - want).max() > 10, name


def test_the_medsiglip_preset_uses_it_and_pads_texts_to_the_context(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLKIT_MODELS", str(tmp_path))
    save_tiny_siglip(tmp_path / "medsiglip")  # a local copy in the released (transformers) layout
    model = create_model("medsiglip")
    assert model.preprocess_cfg.interpolation == "tf_bilinear" and model.preprocess_cfg.resize_mode == "squash"
    assert model.preprocess_cfg.image_size == 32  # the weights' own input size is kept
    assert model.tokenize(["effusion", "a longer finding text"])["input_ids"].shape == (2, 16)  # max_length
    with pytest.raises(ValueError, match="squash"):
        PreprocessCfg(64, interpolation="tf_bilinear", resize_mode="shortest")
