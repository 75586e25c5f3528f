"""BMC-CLIP (BMCA-CLIP's release, BIOMEDICA/BMC_CLIP_CF): an open_clip training checkpoint of the ViT-L-14 config,
read by ``bmc:`` with that config's activation and heads; equal to open_clip 3.3.0 on tiny seeded weights of that
kind (``tests/fixtures/bmc_clip``); downloaded from a hub on 127.0.0.1 by ``medvlkit download bmc-clip``. Read as an
OpenAI checkpoint (QuickGELU), the same weights give other vectors: the reason it has its own source."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bmc_clip"


def released(path: Path) -> Path:
    sd = load_file(str(FIXTURE / "weights.safetensors"))
    rows = np.load(FIXTURE / "token_rows.npz")
    emb = torch.zeros(49408, sd["ln_final.weight"].shape[0])
    emb[torch.from_numpy(rows["ids"])] = torch.from_numpy(rows["rows"])
    sd["token_embedding.weight"] = emb
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


def features(m, inputs):
    with torch.no_grad():
        return (m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False).numpy(),
                m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False).numpy())


def test_matches_open_clip_and_not_as_an_openai_checkpoint(tmp_path):
    inputs, expected = np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "expected.npz")
    path = released(tmp_path / "BMC_CLIP_CF.pt")
    m = create_model(f"bmc:{path}")
    img, txt = features(m, inputs)
    np.testing.assert_allclose(img, expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt, expected["text_features"], atol=1e-5, rtol=1e-5)
    ours = m.tokenize([str(t) for t in inputs["texts"]])["input_ids"].numpy()
    theirs = inputs["input_ids"][:, :ours.shape[1]]
    np.testing.assert_array_equal(ours[theirs != 0], theirs[theirs != 0])  # the shipped BPE; padding differs
    assert create_model(f"bmc:{tmp_path}").embed_dim == 24  # the folder holding it
    quick = create_model(f"openai-ckpt:{path}")  # OpenAI's QuickGELU: loads, but is another model
    assert not np.allclose(features(quick, inputs)[0], expected["image_features"], atol=1e-3)


def test_download_from_the_hub_records_the_commit(hub, tmp_path, monkeypatch):
    from medvlkit.apps.cli import main

    commit = hub.add("BIOMEDICA/BMC_CLIP_CF", {"BMC_CLIP_CF.pt": released(tmp_path / "r" / "BMC_CLIP_CF.pt"),
                                               "README.md": b"# BMC-CLIP\n"})
    assert main(["download", "bmc-clip"]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # then offline: from the cache, the commit still recorded
    m = create_model("bmc-clip")
    assert m.hub_source["hub"] == "BIOMEDICA/BMC_CLIP_CF" and m.hub_source["commit"] == commit


def test_a_checkpoint_of_something_else_is_refused(tmp_path):
    torch.save({"state_dict": {"module.visual.conv1.weight": torch.zeros(2)}}, tmp_path / "x.pt")
    with pytest.raises(MedvlkitError, match="not an open_clip ViT CLIP"):
        create_model(f"bmc:{tmp_path / 'x.pt'}")


@pytest.mark.slow
def test_the_preset_runs_the_tasks(tmp_path):
    import os

    from helpers import run_tasks

    released(Path(os.environ["MEDVLKIT_MODELS"]) / "bmc-clip" / "BMC_CLIP_CF.pt")
    assert run_tasks("bmc-clip", tmp_path)["lora_layers"]


def test_prompt_learning_reaches_the_bert_tower(tmp_path):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"bmc:{released(tmp_path / 'BMC_CLIP_CF.pt')}"))
