"""open_clip models with a Hugging Face BERT text tower on open_clip's own ViT (QuiltNet-B-16-PMB's shape), read
without open_clip: equal to open_clip 3.3.0's own outputs on tiny seeded weights in the released layout
(``tests/fixtures/open_clip_hf_text``, made by its ``make.py`` in a throwaway venv), for the mean and cls poolers,
linear and mlp projections, GELU and QuickGELU; the options medvlkit does not implement are refused by name."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_equals_upstream
from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "open_clip_hf_text"


@pytest.mark.parametrize("variant", ["vit_mean_linear", "vit_cls_mlp"])
def test_matches_open_clip(variant):
    folder = FIXTURES / variant
    inputs = np.load(folder / "inputs.npz")
    m = create_model(f"open_clip:{folder}")
    assert m.embed_dim == 24 and m.preprocess_cfg.image_size == 32 and m.context_length == 16
    assert_equals_upstream(m, folder)
    ours = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"]
    assert torch.equal(ours, torch.from_numpy(inputs["input_ids"][:, :ours.shape[1]]))  # same tokenizer


def test_a_text_tower_of_unknown_kind_is_not_taken_for_a_bert(tmp_path):
    """Without the text config in the folder, only a BERT-named tower is inferred from the shapes: a RoBERTa has the
    same tensor names, and read as a BERT would give wrong vectors without an error."""
    for name, loads in (("microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract", True), ("roberta-base", False),
                        ("some-org/text-model", False)):
        folder = tmp_path / name.replace("/", "_")
        shutil.copytree(FIXTURES / "vit_mean_linear", folder)
        shutil.rmtree(folder / "tiny_bert")
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        cfg["model_cfg"]["text_cfg"]["hf_model_name"] = name
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
        if loads:  # shapes give BERT's sizes; heads of width 64 here would not divide 32: one head
            assert create_model(f"open_clip:{folder}").embed_dim == 24
        else:
            with pytest.raises(MedvlkitError, match="only as a BERT"):
                create_model(f"open_clip:{folder}")


def test_options_it_does_not_implement_are_refused(tmp_path):
    for key, value, needle in (("hf_pooler_type", "max_pooler", "max_pooler"),
                               ("hf_proj_type", "transformer", "hf_proj_type")):
        folder = tmp_path / value
        shutil.copytree(FIXTURES / "vit_mean_linear", folder)
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        cfg["model_cfg"]["text_cfg"][key] = value
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
        with pytest.raises(MedvlkitError, match=needle):
            create_model(f"open_clip:{folder}")


@pytest.mark.slow
def test_it_fine_tunes_with_lora(tmp_path):
    from helpers import make_split_folders
    from medvlkit.apps.cli import main

    data = make_split_folders(tmp_path / "data", {"train": 4, "val": 4, "test": 4})
    out = tmp_path / "ft"
    assert main(["finetune", "--model", f"open_clip:{FIXTURES / 'vit_cls_mlp'}", "--data", str(data), "--lora",
                 "default", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert any("vision" in n or "trunk" in n for n in meta["lora_layers"]) and \
        any("bert" in n for n in meta["lora_layers"])  # both towers adapted


def test_open_clip_s_older_option_names_are_read_not_defaulted(tmp_path):
    """open_clip before 2.21 wrote ``pooler_type`` / ``proj`` (BiomedCLIP's hub config did for years): read as the same
    options. Ignoring them would fall back to open_clip's defaults (mean pooler, mlp) and give other vectors without
    an error; two names that disagree are refused."""
    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "vit_cls_mlp", folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    text_cfg = cfg["model_cfg"]["text_cfg"]
    text_cfg["pooler_type"], text_cfg["proj"] = text_cfg.pop("hf_pooler_type"), text_cfg.pop("hf_proj_type")
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    inputs, expected = np.load(folder / "inputs.npz"), np.load(folder / "expected.npz")
    with torch.no_grad():
        txt = create_model(f"open_clip:{folder}").encode_text(
            {"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy()
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    text_cfg["hf_pooler_type"] = "mean_pooler"
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedvlkitError, match="older name"):
        create_model(f"open_clip:{folder}")


def test_prompt_learning_reaches_the_hf_text_tower():
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"open_clip:{FIXTURES / 'vit_mean_linear'}"))
