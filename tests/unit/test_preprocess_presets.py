"""Preprocessing travels with the weights: CheXzero's letterbox and statistics, checked against its code."""

import dataclasses

import numpy as np
import torch
from PIL import Image

from helpers import tiny_clip_config, write_clip_tokenizer
from medvlkit import create_model
from medvlkit.models.base import ImagePreprocessor
from medvlkit.models.openai_ckpt import hf_to_openai_state_dict
from medvlkit.models.preprocess import PreprocessCfg
from medvlkit.models.presets import CHEXZERO_PREPROCESS, PRESETS


def _chexzero_upstream(img: Image.Image, desired_size: int = 320) -> Image.Image:
    """rajpurkarlab/CheXzero data_process.py lines 31-41 (`preprocess`), Image.ANTIALIAS being Lanczos."""
    old_size = img.size
    ratio = float(desired_size) / max(old_size)
    new_size = tuple([int(x * ratio) for x in old_size])
    img = img.resize(new_size, Image.Resampling.LANCZOS)
    new_img = Image.new("L", (desired_size, desired_size))
    new_img.paste(img, ((desired_size - new_size[0]) // 2, (desired_size - new_size[1]) // 2))
    return new_img


def test_chexzero_config_matches_its_code():
    cfg = PRESETS["chexzero"].preprocess
    assert cfg is CHEXZERO_PREPROCESS
    # zero_shot.py line 379: Normalize((101.48761,)*3, (83.43944,)*3) on 0-255 pixels; line 385: Resize(224, BICUBIC)
    assert np.allclose(np.array(cfg.mean) * 255, 101.48761) and np.allclose(np.array(cfg.std) * 255, 83.43944)
    assert (cfg.image_size, cfg.interpolation, cfg.resize_mode, cfg.pad_size) == (224, "bicubic", "pad", 320)


def test_letterbox_equals_chexzero_and_keeps_the_whole_film():
    rng = np.random.default_rng(0)
    portrait = Image.fromarray(rng.integers(30, 255, (400, 250), dtype=np.uint8), mode="L")
    got = ImagePreprocessor(CHEXZERO_PREPROCESS)(portrait)  # (3, 224, 224)
    want = np.asarray(_chexzero_upstream(portrait).resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    want = (want - 101.48761) / 83.43944
    assert torch.allclose(got[0], torch.from_numpy(want), atol=1e-5)
    black = (0 - 101.48761) / 83.43944
    assert torch.allclose(got[:, :, 0], torch.full((3, 224), black), atol=1e-5)  # padding at the sides...
    assert (got[:, 100, 45:178] > black + 0.1).all()  # ...and the film itself is all there (no centre crop)
    direct = ImagePreprocessor(PreprocessCfg(image_size=32, resize_mode="pad"))(portrait)
    assert direct.shape == (3, 32, 32)


def test_chexzero_checkpoint_gets_chexzero_preprocessing(tmp_path, monkeypatch):
    from transformers import CLIPModel

    sd = hf_to_openai_state_dict(CLIPModel(tiny_clip_config()))
    folder = tmp_path / "models" / "chexzero"
    folder.mkdir(parents=True)
    torch.save(sd, folder / "best_64_5e-05_original_22000_0.864.pt")
    write_clip_tokenizer(folder)
    tiny = dataclasses.replace(CHEXZERO_PREPROCESS, image_size=32)  # the tiny weights take 32 px; CheXzero's 224
    by_file = create_model(f"openai-ckpt:{folder / 'best_64_5e-05_original_22000_0.864.pt'}")
    assert by_file.preprocess_cfg == tiny
    assert by_file.encode_image(by_file.preprocess([Image.new("L", (50, 80))])).shape == (1, 32)
    monkeypatch.setenv("MEDVLKIT_MODELS", str(tmp_path / "models"))
    assert create_model("chexzero").preprocess_cfg == tiny
    torch.save(sd, folder / "plain_clip.pt")
    assert create_model(f"openai-ckpt:{folder / 'plain_clip.pt'}").preprocess_cfg == PreprocessCfg(image_size=32)


def test_uint8_half_then_normalise_equals_the_float_path_bit_for_bit():
    """Loader workers hand over uint8 pixels and the model's device normalises them: the result is bit-identical
    to scaling and normalising in float32 numpy (the path before the split), for every resize mode."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (40, 90), dtype=np.uint8))]
    for cfg in (PreprocessCfg(image_size=32), PreprocessCfg(image_size=32, resize_mode="squash", mean=(0.5,) * 3,
                                                           std=(0.5,) * 3),
                PreprocessCfg(image_size=32, resize_mode="pad"), PreprocessCfg(image_size=32, resize_mode="square",
                                                                              grayscale=True)):
        pre = ImagePreprocessor(cfg)
        for im in images:
            u8 = pre.to_uint8(im)
            assert u8.dtype == torch.uint8 and u8.shape == (3, 32, 32)
            ref = (u8.numpy().transpose(1, 2, 0).astype(np.float32) / 255.0 - np.asarray(cfg.mean, np.float32)) \
                / np.asarray(cfg.std, np.float32)
            assert np.array_equal(pre.normalize(u8).numpy(), ref.transpose(2, 0, 1))
            assert torch.equal(pre(im), pre.normalize(u8[None])[0])  # batched the same as one by one
