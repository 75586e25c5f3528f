"""EyeCLIP (Michi-3000/EyeCLIP): its release, an OpenAI-layout CLIP inside ``{"model_state_dict": ...}`` whose ViT also
carries the MAE decoder it was trained with, read by ``openai-ckpt:`` and the ``eyeclip`` preset. Equal to EyeCLIP's
own ``eyeclip/model.py`` on tiny seeded weights (``tests/fixtures/eyeclip``, made by its ``make.py`` in a throwaway
venv); the decoder's tensors are left out by name, and any other tensor CLIP lacks is still refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_equals_upstream
from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eyeclip"


def released_checkpoint(path: Path, extra: dict | None = None) -> Path:
    """The fixture put back into EyeCLIP's released layout: the CLIP tensors with the full token embedding, and the
    MAE decoder's tensors under the names EyeCLIP's module gives them (size-1 stand-ins: they are dropped by name, and
    the real ones hold 25M numbers)."""
    sd = load_file(str(FIXTURE / "weights.safetensors"))
    rows = np.load(FIXTURE / "token_rows.npz")
    emb = torch.zeros(49408, 64)
    emb[torch.from_numpy(rows["ids"])] = torch.from_numpy(rows["rows"])
    sd["token_embedding.weight"] = emb
    sd.update({k: torch.zeros(1) for k in json.loads((FIXTURE / "decoder_keys.json").read_text())})
    sd.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": sd, "epoch": 9}, path)
    return path


def test_matches_eyeclip(tmp_path, caplog):
    inputs = np.load(FIXTURE / "inputs.npz")
    path = released_checkpoint(tmp_path / "eyeclip.pth")
    with caplog.at_level("INFO"):
        m = create_model(f"openai-ckpt:{path}")
    assert "left out the 104 tensors of the MAE decoder" in caplog.text
    assert m.embed_dim == 24 and m.preprocess_cfg.image_size == 32
    assert_equals_upstream(m, FIXTURE)
    ours = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"].numpy()  # the shipped OpenAI vocabulary
    theirs = inputs["input_ids"][:, :ours.shape[1]]
    real = theirs != 0  # EyeCLIP pads with 0, transformers with end-of-text: the causal mask never sees either
    np.testing.assert_array_equal(ours[real], theirs[real])


def test_other_unknown_tensors_are_refused(tmp_path):
    path = released_checkpoint(tmp_path / "odd.pth", {"visual.decoder_head.weight": torch.zeros(2, 2)})
    with pytest.raises(MedvlkitError, match="visual.decoder_head.weight"):
        create_model(f"openai-ckpt:{path}")


def test_the_preset_reads_the_release_and_runs_the_tasks(tmp_path):
    import os

    from helpers import run_tasks

    released_checkpoint(Path(os.environ["MEDVLKIT_MODELS"]) / "eyeclip" / "eyeclip.pth")
    assert run_tasks("eyeclip", tmp_path)["lora_layers"]
    assert "eyeclip.pth" in (tmp_path / "z" / "result.json").read_text()


def test_prompt_learning_reaches_the_text_transformer(tmp_path):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"openai-ckpt:{released_checkpoint(tmp_path / 'eyeclip.pth')}"))
