"""PMC-CLIP from its released training checkpoint (``pmc-clip:FILE`` and the ``pmc-clip`` preset): equal to PMC-CLIP's
own ``pmc_clip/model/pmc_clip.py`` on tiny seeded weights in the released layout (``tests/fixtures/pmc_clip``, made
by its ``make.py`` in a throwaway venv); the MLM-only tensors are left out by name, any other tensor is refused; the
padding takes part in the text tower as PMC-CLIP runs it."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_equals_upstream
from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pmc_clip"


def test_matches_pmc_clip(caplog):
    inputs = np.load(FIXTURE / "inputs.npz")
    with caplog.at_level("INFO"):
        m = create_model(f"pmc-clip:{FIXTURE / 'checkpoint.pt'}")
    assert "masked-language-model objective" in caplog.text
    assert m.embed_dim == 32 and m.preprocess_cfg.image_size == 64
    assert_equals_upstream(m, FIXTURE, m.tokenize([str(t) for t in inputs["texts"]]))  # medvlkit's own tokens
    ids = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"]
    assert torch.equal(ids, torch.from_numpy(inputs["input_ids"]))  # padded to the checkpoint's context, 16


def test_the_padding_takes_part_as_in_pmc_clip():
    """PMC-CLIP runs BERT without an attention mask: the same text padded to another length embeds differently, so
    the context length must be the checkpoint's (a mask here would have hidden that)."""
    m = create_model(f"pmc-clip:{FIXTURE / 'checkpoint.pt'}")
    tokens = m.tokenize(["brain mri"])
    with torch.no_grad():
        full = m.encode_text(tokens)
        short = m.encode_text({"input_ids": tokens["input_ids"][:, :8]})
    assert not torch.allclose(full, short, atol=1e-4)


def test_other_tensors_are_refused(tmp_path):
    raw = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    raw["state_dict"]["module.visual.extra_head.weight"] = torch.zeros(2)
    shutil.copytree(FIXTURE / "text", tmp_path / "text")
    torch.save(raw, tmp_path / "checkpoint.pt")
    with pytest.raises(MedvlkitError, match="extra_head.weight"):
        create_model(f"pmc-clip:{tmp_path / 'checkpoint.pt'}")
    raw["state_dict"].pop("module.visual.extra_head.weight")
    raw["state_dict"]["module.head.weight"] = torch.zeros(2)
    torch.save(raw, tmp_path / "checkpoint.pt")
    with pytest.raises(MedvlkitError, match="tensors PMC-CLIP does not have: head.weight"):
        create_model(f"pmc-clip:{tmp_path / 'checkpoint.pt'}")
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(MedvlkitError, match="not a PMC-CLIP checkpoint"):
        create_model(f"pmc-clip:{tmp_path / 'other.pt'}")


@pytest.mark.slow
def test_the_preset_runs_the_tasks(tmp_path):
    from helpers import run_tasks

    shutil.copytree(FIXTURE, Path(os.environ["MEDVLKIT_MODELS"]) / "pmc-clip")
    meta = run_tasks("pmc-clip", tmp_path)
    assert any("attnpool" in n for n in meta["lora_layers"]) and any("bert" in n for n in meta["lora_layers"])


def test_prompt_learning_reaches_the_bert_tower():
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"pmc-clip:{FIXTURE / 'checkpoint.pt'}"))
