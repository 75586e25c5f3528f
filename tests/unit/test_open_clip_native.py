"""open_clip hub-layout folders read by medvlkit's own modules (no open_clip, timm or torchvision): the reference
fixture computed by open_clip 3.3.0 (its own ViT + text towers, exact GELU) is reproduced, and configs the
conversion cannot honour are refused by name."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import reference_fixture, run_backbone_tasks, write_clip_tokenizer
from medvlkit import create_model
from medvlkit.errors import MedvlkitError


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oc") / "vit_b32_tiny"
    shutil.copytree(reference_fixture("open_clip", "vit_b32_tiny"), folder)
    write_clip_tokenizer(folder, vocab_size=1024)  # the fixture's vocabulary size; end-of-text = 1023
    return folder


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_open_clip_vit_matches_open_clip(vit_dir, tmp_path, weights):
    copy = tmp_path / "m"
    shutil.copytree(vit_dir, copy, ignore=shutil.ignore_patterns("open_clip_*model*"))
    shutil.copy(vit_dir / weights, copy / weights)
    inputs = np.load(vit_dir / "inputs.npz")
    expected = np.load(vit_dir / "expected.npz")
    m = create_model(f"open_clip:{copy}")
    assert m.embed_dim == 32 and m.preprocess_cfg.image_size == 96
    assert m.model.config.vision_config.hidden_act == "gelu"  # no quick_gelu in the config: exact GELU
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
        txt = m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy()
        logits = m.logit_scale * (m.encode_image(torch.from_numpy(inputs["pixel_values"]))
                                  @ m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}).T).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits, expected["logits_per_image"], atol=1e-4, rtol=1e-5)


def test_quick_gelu_config_changes_the_activation(vit_dir, tmp_path):
    """Reading open_clip's weights with OpenAI's QuickGELU (what openai-ckpt: assumes) gives other features: the
    config's flag decides."""
    copy = tmp_path / "q"
    shutil.copytree(vit_dir, copy)
    cfg = json.loads((copy / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (copy / "open_clip_config.json").write_text(json.dumps(cfg))
    m = create_model(f"open_clip:{copy}")
    assert m.model.config.vision_config.hidden_act == "quick_gelu"
    inputs, expected = np.load(vit_dir / "inputs.npz"), np.load(vit_dir / "expected.npz")
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
    assert np.abs(img - expected["image_features"]).max() > 1e-3


def test_unsupported_configs_and_wrong_tokenizers_are_refused(vit_dir, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(vit_dir, copy)
    cfg = json.loads((copy / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    (copy / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedvlkitError, match="attentional_pool=True"):
        create_model(f"open_clip:{copy}")
    shutil.copy(vit_dir / "open_clip_config.json", copy / "open_clip_config.json")
    write_clip_tokenizer(copy, vocab_size=514)  # another vocabulary: end-of-text 513, the model pools id 1023
    with pytest.raises(MedvlkitError, match="not this model's tokenizer"):
        create_model(f"open_clip:{copy}")


def test_open_clip_folder_runs_the_tasks(vit_dir, tmp_path):
    run_backbone_tasks(f"open_clip:{vit_dir}", tmp_path, embed_dim=32)


def test_prompt_learning_reaches_the_text_transformer(vit_dir):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"open_clip:{vit_dir}"))
