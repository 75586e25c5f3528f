"""MedCLIP (Swin and ResNet-50 variants) from its released file layout, equal to ``medclip`` 0.0.3's own
``MedCLIPModel`` on the reference fixture (ResNet-50 weights regenerated from the fixture's seeded recipe)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import recipe_state_dict, reference_fixture, run_backbone_tasks
from medvlkit import create_model
from medvlkit.errors import MedvlkitError
from medvlkit.models.medclip import SWIN_V4_TO_V5


def _folder(tmp, sd: dict) -> object:
    src = reference_fixture("medclip")
    torch.save(sd, tmp / "pytorch_model.bin")  # the released file is a plain pickled state dict
    shutil.copytree(src / "tiny_bio_clinicalbert", tmp / "text")
    shutil.copytree(src / "tiny_swin", tmp / "vision")
    return tmp


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    sd = load_file(reference_fixture("medclip") / "medclip_vit.safetensors")
    # MedCLIP-ViT's released file was written by transformers < 4.31: it carries this leftover buffer
    sd["text_model.model.embeddings.position_ids"] = torch.arange(128)[None]
    return _folder(tmp_path_factory.mktemp("medclip_vit"), sd)


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    src = reference_fixture("medclip")
    sd = recipe_state_dict(json.loads((src / "medclip_resnet_vision_recipe.json").read_text()))
    sd.update({k: v for k, v in load_file(src / "medclip_vit.safetensors").items()
               if k.startswith("text_model.") or k == "logit_scale"})
    return _folder(tmp_path_factory.mktemp("medclip_resnet"), sd)


@pytest.mark.parametrize("variant", ["vit", "resnet"])
def test_medclip_matches_upstream(variant, vit_dir, resnet_dir):
    folder = vit_dir if variant == "vit" else resnet_dir
    src = reference_fixture("medclip")
    inputs, expected = np.load(src / "inputs.npz"), np.load(src / f"expected_{variant}.npz")
    m = create_model(f"medclip:{folder}")
    assert m.swin == (variant == "vit") and m.embed_dim == 512
    pixels = torch.from_numpy(inputs["pixel_values"])  # (2, 1, 64, 64): one grey channel, repeated inside
    tokens = {k: torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        img = m.encode_image(pixels, normalize=False).numpy()
        txt = m.encode_text(tokens, normalize=False).numpy()
        pooled = m.image_backbone_features(pixels).numpy()
        logits = (m.logit_scale * m.encode_image(pixels) @ m.encode_text(tokens).T).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, expected["image_pooled"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits, expected["logits_per_image"], atol=1e-5, rtol=1e-5)
    assert m.logit_scale == pytest.approx(float(expected["logit_scale_exp"]), rel=1e-6)


def test_medclip_tokenizer_pads_like_the_processor(vit_dir):
    """Padding enters MedCLIP's text pooling, so the tokens must be padded to the batch's longest text, as
    MedCLIPProcessor(padding=True) does; the fixture's ids were made that way."""
    m = create_model(f"medclip:{vit_dir}")
    texts = ["Chest x-ray showing right lower lobe pneumonia.", "no acute cardiopulmonary abnormality",
             "small left pleural effusion"]
    tokens = m.tokenize(texts)
    inputs = np.load(reference_fixture("medclip") / "inputs.npz")
    assert torch.equal(tokens["input_ids"], torch.from_numpy(inputs["input_ids"]))


def test_medclip_loads_transformers5_names_and_checks_the_window_index(vit_dir, tmp_path):
    """A checkpoint re-saved under transformers 5 (renamed Swin keys, no index buffers) loads to the same model; an
    index buffer that disagrees with the config is refused instead of silently dropped."""
    sd = torch.load(vit_dir / "pytorch_model.bin", weights_only=True)
    v5 = {}
    for k, v in sd.items():
        if k.endswith(".attention.self.relative_position_index"):
            continue
        for a, b in SWIN_V4_TO_V5 if k.startswith("vision_model.") else ():
            k = k.replace(a, b)
        v5[k] = v
    (tmp_path / "v5").mkdir()
    folder = _folder(tmp_path / "v5", v5)
    pixels = torch.from_numpy(np.load(reference_fixture("medclip") / "inputs.npz")["pixel_values"])
    with torch.no_grad():
        a = create_model(f"medclip:{vit_dir}").encode_image(pixels)
        b = create_model(f"medclip:{folder}").encode_image(pixels)
    assert torch.equal(a, b)
    key = next(k for k in sd if k.endswith("relative_position_index"))
    sd[key] = sd[key].flip(0)
    (tmp_path / "bad").mkdir()
    bad = _folder(tmp_path / "bad", sd)
    with pytest.raises(MedvlkitError, match="window layout"):
        create_model(f"medclip:{bad}")


def test_medclip_refuses_wrong_and_truncated_files(vit_dir, tmp_path):
    (tmp_path / "trunc").mkdir()
    data = (vit_dir / "pytorch_model.bin").read_bytes()
    (tmp_path / "trunc" / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedvlkitError, match="pytorch_model.bin"):
        create_model(f"medclip:{tmp_path / 'trunc'}")
    sd = torch.load(vit_dir / "pytorch_model.bin", weights_only=True)
    del sd["text_model.projection_head.weight"]
    (tmp_path / "missing").mkdir()
    with pytest.raises(MedvlkitError, match="does not match MedCLIP-ViT"):
        create_model(f"medclip:{_folder(tmp_path / 'missing', sd)}")
    (tmp_path / "other").mkdir()
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other" / "pytorch_model.bin")
    with pytest.raises(MedvlkitError, match="not a MedCLIP checkpoint"):
        create_model(f"medclip:{tmp_path / 'other'}")


def test_medclip_preprocessing_is_the_feature_extractors():
    """MedCLIPFeatureExtractor (medclip/dataset.py): grey canvas of side max(224, w, h) with the image pasted at
    (int((side - w) / 2), int((side - h) / 2)), bicubic resize to 224, (x / 255 - 0.5862785803043838) /
    0.27950088968644304 (medclip/constants.py IMG_MEAN / IMG_STD). Reproduced here with PIL step by step."""
    from medvlkit.models.base import ImagePreprocessor
    from medvlkit.models.medclip import MEDCLIP_PREPROCESS

    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (180, 320), (150, 100)):
        im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        side = max(224, w, h)
        canvas = Image.new("L", (side, side), 0)
        canvas.paste(im, (int((side - w) / 2), int((side - h) / 2)))
        ref = np.asarray(canvas.resize((224, 224), Image.Resampling.BICUBIC), np.float32) / 255.0
        ref = (ref - 0.5862785803043838) / 0.27950088968644304
        got = ImagePreprocessor(MEDCLIP_PREPROCESS)(im).numpy()
        assert got.shape == (3, 224, 224)
        for c in range(3):
            np.testing.assert_allclose(got[c], ref, atol=1e-5)


def test_medclip_runs_the_tasks(resnet_dir, tmp_path):
    (resnet_dir / "preprocess.json").write_text('{"image_size": 64}')  # small images keep the test fast
    run_backbone_tasks(f"medclip:{resnet_dir}", tmp_path, embed_dim=512)
    (resnet_dir / "preprocess.json").unlink()


def test_presets_find_their_local_copies(resnet_dir, tmp_path):
    """Folder presets (medclip-resnet) and file presets (gloria) resolve to $MEDVLKIT_MODELS/<name>[/<file>]; a
    missing copy is an error naming the path and how to fetch it."""
    import os

    models = Path(os.environ["MEDVLKIT_MODELS"])  # conftest: a models folder per test
    with pytest.raises(MedvlkitError, match="medclip-resnet.*hf download"):
        create_model("medclip-resnet")
    shutil.copytree(resnet_dir, models / "medclip-resnet")
    m = create_model("medclip-resnet")
    assert m.name == f"medclip:{models / 'medclip-resnet'}" and not m.swin
    with pytest.raises(MedvlkitError, match="chexpert_resnet50.ckpt"):
        create_model("gloria")


def test_prompt_learning_reaches_the_bert_tower(vit_dir):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"medclip:{vit_dir}"))
