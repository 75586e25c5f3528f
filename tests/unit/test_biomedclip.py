"""BiomedCLIP without open_clip: the fixture computed by open_clip 3.3.0 with timm (a BiomedCLIP-shaped model: timm
ViT + HF BERT) is reproduced from its folder, laid out as the hub repository is."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import reference_fixture
from medvlkit import create_model


@pytest.fixture(scope="module")
def folder():
    return reference_fixture("open_clip", "biomedclip_tiny")


@pytest.fixture(scope="module")
def fixture(folder):
    return np.load(folder / "inputs.npz"), np.load(folder / "expected.npz")


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_biomedclip_matches_open_clip(fixture, folder, tmp_path, weights):
    inputs, expected = fixture
    copy = tmp_path / "biomedclip"  # the hub layout with one weights file
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("open_clip_*model*"))
    shutil.copy(folder / weights, copy / weights)
    m = create_model(f"biomedclip:{copy}")
    assert m.preprocess_cfg.image_size == 64 and m.context_length == 256 and m.embed_dim == 48
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
        txt = m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    assert m.logit_scale == pytest.approx(float(expected["logit_scale_exp"]), rel=1e-6)
    ours = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"]
    assert torch.equal(ours, torch.from_numpy(inputs["input_ids"][:, :ours.shape[1]]))  # same tokenizer, shorter pad


def test_biomedclip_runs_the_tasks(fixture, folder, tmp_path):
    from helpers import run_backbone_tasks

    out = run_backbone_tasks(f"biomedclip:{folder}", tmp_path, embed_dim=48)
    layers = json.loads((out / "best" / "finetune.json").read_text())["lora_layers"]
    assert any("qkv" in n for n in layers) and any("query" in n for n in layers)


def test_prompt_learning_reaches_the_bert_tower(folder):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"biomedclip:{folder}"))
