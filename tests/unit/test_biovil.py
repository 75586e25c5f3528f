"""BioViL from its released file layout, equal to hi-ml-multimodal 0.2.2's own ImageModel and CXRBertModel on the
reference fixture (the ResNet-50 weights regenerated from the fixture's seeded recipe with plain torch)."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import recipe_state_dict, reference_fixture
from medvlkit import create_model


@pytest.fixture(scope="module")
def biovil_dir(tmp_path_factory):
    src = reference_fixture("biovil")
    folder = tmp_path_factory.mktemp("biovil")
    torch.save(recipe_state_dict(json.loads((src / "image_recipe.json").read_text())),
               folder / "biovil_image_resnet50_proj_size_128.pt")
    for f in (src / "tiny_cxr_bert").iterdir():
        shutil.copy(f, folder / f.name)
    shutil.copy(src / "text_model.safetensors", folder / "model.safetensors")
    return folder, np.load(src / "inputs.npz"), np.load(src / "expected.npz")


def test_biovil_matches_hi_ml_multimodal(biovil_dir):
    folder, inputs, expected = biovil_dir
    m = create_model(f"biovil:{folder}")
    assert m.embed_dim == 128 and m.logit_scale == 1.0 and m.preprocess_cfg.image_size == 480
    tokens = m.tokenize([str(t) for t in inputs["texts"]])
    assert torch.equal(tokens["input_ids"], torch.from_numpy(inputs["input_ids"]))  # trailing "." stripped
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
        txt = m.encode_text(tokens, normalize=False).numpy()
        pooled = m.image_backbone_features(torch.from_numpy(inputs["pixel_values"])).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, expected["image_pooled"], atol=1e-5, rtol=1e-5)
    cos = (m.encode_image(torch.from_numpy(inputs["pixel_values"])) @ m.encode_text(tokens).T).detach().numpy()
    np.testing.assert_allclose(cos, expected["cosine_similarity"], atol=1e-5)


def test_biovil_runs_the_tasks(biovil_dir, tmp_path):
    from helpers import run_backbone_tasks

    folder, _, _ = biovil_dir
    (folder / "preprocess.json").write_text(json.dumps({"image_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}))
    run_backbone_tasks(f"biovil:{folder}", tmp_path, embed_dim=128, finetune_args=("--mode", "supervised"))
    (folder / "preprocess.json").unlink()


def test_prompt_learning_reaches_the_cxr_bert_tower(biovil_dir):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"biovil:{biovil_dir[0]}"))
