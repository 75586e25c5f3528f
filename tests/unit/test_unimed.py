"""UniMed-CLIP from its released training checkpoints (``unimed:FILE`` and the ``unimed-clip-*`` presets): equal to
UniMed-CLIP's own fork of open_clip (``CLIP`` + ``HFTextEncoder`` + ``HFTokenizer``) on tiny seeded weights in the
release's layout, numpy numbers beside the tensors included (``tests/fixtures/unimed_clip``, made by its ``make.py``
in a throwaway venv); other tensors are refused."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "unimed_clip"


def test_matches_unimed_clip():
    inputs, expected = np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "expected.npz")
    m = create_model(f"unimed:{FIXTURE / 'checkpoint.pt'}")  # a training file with numpy scalars: read, not refused
    assert m.embed_dim == 24 and m.preprocess_cfg.image_size == 32 and m.context_length == 256
    ours = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"]
    n = ours.shape[1]
    assert torch.equal(ours, torch.from_numpy(inputs["input_ids"][:, :n])) and not inputs["input_ids"][:, n:].any()
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy()
        txt = m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy()
        short = m.encode_text({"input_ids": ours}, normalize=False).numpy()
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(short, expected["text_features"], atol=1e-5, rtol=1e-5)  # padding is masked out
    assert m.logit_scale == pytest.approx(float(np.exp(expected["logit_scale"])), rel=1e-6)


def test_other_tensors_and_other_pickles_are_refused(tmp_path):
    raw = torch.load(FIXTURE / "checkpoint.pt", weights_only=False)  # the test's own file
    raw["state_dict"]["module.extra_head.weight"] = torch.zeros(2)
    shutil.copytree(FIXTURE / "text", tmp_path / "text")
    torch.save(raw, tmp_path / "odd.pt")
    with pytest.raises(MedvlkitError, match="extra_head.weight"):
        create_model(f"unimed:{tmp_path / 'odd.pt'}")
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "args": Path("x")}, tmp_path / "code.pt")
    with pytest.raises(MedvlkitError, match="refused"):  # numpy numbers are allowed, other objects are not
        create_model(f"unimed:{tmp_path / 'code.pt'}")


@pytest.mark.slow
def test_the_preset_runs_the_tasks(tmp_path):
    from helpers import run_tasks

    folder = Path(os.environ["MEDVLKIT_MODELS"]) / "unimed-clip-b16"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE / "checkpoint.pt", folder / "unimed_clip_vit_b16.pt")
    shutil.copytree(FIXTURE / "text", folder / "text")
    meta = run_tasks("unimed-clip-b16", tmp_path)
    assert any("q_proj" in n for n in meta["lora_layers"]) and any("query" in n for n in meta["lora_layers"])


def test_prompt_learning_reaches_the_text_tower():
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"unimed:{FIXTURE / 'checkpoint.pt'}"))
