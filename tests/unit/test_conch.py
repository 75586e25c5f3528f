"""CONCH from its released ``pytorch_model.bin`` (``conch:DIR|FILE|org/name`` and the ``conch`` preset): equal to
CONCH's own ``conch/open_clip_custom`` CoCa on tiny seeded weights in the released layout (``tests/fixtures/conch``,
made by its ``make.py`` in a throwaway venv, with a small tokenizer of CONCH's special tokens since CONCH's own is
CC-BY-NC-ND); the captioning tensors are left out by name and any other tensor refused; a missing tokenizer is
answered with where to get it."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_equals_upstream
from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conch"


def released(folder: Path, extra: dict | None = None, tokenizer: bool = True) -> Path:
    """``folder`` laid out as CONCH's hub repository (``pytorch_model.bin``, a plain state dict) plus the tokenizer."""
    sd = load_file(str(FIXTURE / "weights.safetensors"))
    rows = np.load(FIXTURE / "token_rows.npz")
    emb = torch.zeros(int(rows["vocab"]), sd["text.ln_final.weight"].shape[0])
    emb[torch.from_numpy(rows["ids"])] = torch.from_numpy(rows["rows"])
    sd["text.token_embedding.weight"] = emb
    sd.update({k: torch.zeros(1) for k in json.loads((FIXTURE / "unused_keys.json").read_text())})  # stand-ins
    sd.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "pytorch_model.bin")
    if tokenizer:
        shutil.copy(FIXTURE / "tokenizer.json", folder / "conch_byte_level_bpe_uncased.json")
    return folder


def test_matches_conch(tmp_path, caplog):
    inputs = np.load(FIXTURE / "inputs.npz")
    with caplog.at_level("INFO"):
        m = create_model(f"conch:{released(tmp_path / 'conch')}")
    assert "caption decoder" in caplog.text
    assert m.embed_dim == 24 and m.preprocess_cfg.image_size == 32 and m.context_length == 127
    ids = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"]
    assert torch.equal(ids, torch.from_numpy(inputs["input_ids"][:, :-1]))  # CONCH's 127 tokens (+ its placeholder)
    assert_equals_upstream(m, FIXTURE, {"input_ids": ids})


def test_refusals_say_what_is_wrong(tmp_path):
    with pytest.raises(MedvlkitError, match="visual.head.weight"):
        create_model(f"conch:{released(tmp_path / 'a', {'visual.head.weight': torch.zeros(2)})}")
    with pytest.raises(MedvlkitError, match="conch_byte_level_bpe_uncased.json.*CC-BY-NC-ND"):
        create_model(f"conch:{released(tmp_path / 'b', tokenizer=False)}")
    assert create_model(f"conch:{tmp_path / 'b' / 'pytorch_model.bin'}",
                        tokenizer=str(FIXTURE / "tokenizer.json")).embed_dim == 24  # --tokenizer FILE
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(MedvlkitError, match="not a CONCH checkpoint"):
        create_model(f"conch:{tmp_path / 'other.bin'}")


def test_the_class_token_mask_is_open_clip_s():
    """The class token (last query row) sees key 0 and each key whose previous id is not padding: a text of n real
    ids lets it see keys 0..n (the first padding position included) and not itself."""
    from medvlkit.models.conch import CoCaText

    text = CoCaText(vocab=10, width=8, layers=1, heads=1, positions=6, mlp=8, embed=4)
    mask = text.mask(torch.tensor([[1, 5, 2, 0, 0]]), torch.float32)[0, 0]
    assert torch.isfinite(mask[-1]).tolist() == [True, True, True, True, False, False]
    assert torch.isfinite(mask[2]).tolist() == [True, True, True, False, False, False]  # causal elsewhere


@pytest.mark.slow
def test_the_preset_runs_the_tasks(tmp_path):
    from helpers import run_tasks

    released(Path(os.environ["MEDVLKIT_MODELS"]) / "conch")
    meta = run_tasks("conch", tmp_path, probe_features="backbone")
    assert any(n.endswith("qkv") for n in meta["lora_layers"]) and any("out_proj" in n for n in meta["lora_layers"])


def test_the_gated_release_downloads_with_a_token_and_is_recorded(hub, tmp_path, monkeypatch, capsys):
    """``medvlkit download conch`` from a gated repository laid out as ``MahmoodLab/CONCH`` on a hub on 127.0.0.1: one
    line naming HF_TOKEN, then the download; the model from the cache equals CONCH's outputs and records the commit."""
    from medvlkit.apps.cli import main

    folder = released(tmp_path / "repo", tokenizer=False)  # the hub repository holds no tokenizer
    commit = hub.add("MahmoodLab/CONCH", {"pytorch_model.bin": folder / "pytorch_model.bin",
                                          "meta.yaml": b"model: conch_ViT-B-16\n"}, gated=True)
    assert main(["download", "conch"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert main(["download", "conch"]) == 0
    m = create_model("conch", tokenizer=str(FIXTURE / "tokenizer.json"))
    inputs, expected = np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "expected.npz")
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    assert m.hub_source["hub"] == "MahmoodLab/CONCH" and m.hub_source["commit"] == commit


def test_prompt_learning_reaches_the_coca_text_tower(tmp_path):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"conch:{released(tmp_path / 'conch')}"))
