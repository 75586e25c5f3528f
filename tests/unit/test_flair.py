"""FLAIR from its released ``flair_resnet.pth`` (``flair:FILE`` and the ``flair`` preset): equal to FLAIR's own
``flair/modeling/model.py`` on tiny weights in the released layout (``tests/fixtures/flair``, made by its ``make.py``
in a throwaway venv; the ResNet-50's tensors are rebuilt here from the formula that wrote them); its canvas resize,
and its expert-knowledge prompt sets."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import assert_equals_upstream
from medvlkit import create_model
from medvlkit.errors import MedvlkitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flair"


def released_checkpoint(folder: Path, extra: dict | None = None) -> Path:
    """``flair_resnet.pth`` as FLAIR saves it (a plain state dict), with ``text/`` holding the tokenizer."""
    sys.path.insert(0, str(FIXTURE))
    try:
        from make import formula
    finally:
        sys.path.remove(str(FIXTURE))
    with safe_open(str(FIXTURE / "weights.safetensors"), "pt") as f:
        layout = json.loads(f.metadata()["resnet"])
    sd = load_file(str(FIXTURE / "weights.safetensors"))
    for key, (index, shape) in layout.items():
        sd[key] = torch.tensor(0) if key.endswith("num_batches_tracked") else formula(index, key, tuple(shape))
    sd.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "flair_resnet.pth")
    shutil.copytree(FIXTURE / "text", folder / "text", dirs_exist_ok=True)
    return folder / "flair_resnet.pth"


def test_matches_flair(tmp_path):
    inputs = np.load(FIXTURE / "inputs.npz")
    m = create_model(f"flair:{released_checkpoint(tmp_path)}")
    assert m.embed_dim == 16 and m.preprocess_cfg.resize_mode == "canvas" and m.preprocess_cfg.image_size == 512
    tokens = m.tokenize([str(t) for t in inputs["texts"]])
    np.testing.assert_array_equal(tokens["input_ids"].numpy(), inputs["input_ids"])  # padded to the longest
    assert_equals_upstream(m, FIXTURE, tokens)


def test_other_tensors_are_refused(tmp_path):
    path = released_checkpoint(tmp_path / "a", {"vision_model.classifier.weight": torch.zeros(2)})
    with pytest.raises(MedvlkitError, match="vision_model.classifier.weight"):
        create_model(f"flair:{path}")
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(MedvlkitError, match="not a FLAIR checkpoint"):
        create_model(f"flair:{tmp_path / 'other.pth'}")


def test_canvas_puts_the_image_top_left_as_flair():
    """FLAIR's ImageScaling: long side to 512 with the other side int(h / (long / 512)), black right and bottom."""
    from medvlkit.models.base import ImagePreprocessor as Preprocessor
    from medvlkit.models.flair import FLAIR_PREPROCESS

    image = Image.new("RGB", (300, 200), (200, 100, 50))
    out = Preprocessor(FLAIR_PREPROCESS).to_uint8(image)
    rows = int(200 / (300 / 512))  # 341
    assert out.shape == (3, 512, 512)
    assert out[:, :rows, :].float().mean(dim=(1, 2)).tolist() == pytest.approx([200, 100, 50], abs=0.5)
    assert out[:, rows + 1:, :].max() == 0  # padded below, nothing above or left
    pixels = Preprocessor(FLAIR_PREPROCESS)(image)
    assert float(pixels.max()) == pytest.approx(200 / 255, abs=1e-6)  # [0, 1], no mean/std


def test_its_prompt_sets_hold_flair_s_dictionary():
    from medvlkit.data.prompts import load_prompt_set

    dr = load_prompt_set("flair_dr_grading")
    assert dr.templates == ["A fundus photograph of {}"]
    severe = next(c for c in dr.classes if c.name == "severe diabetic retinopathy")
    assert severe.positive == ["venous beading", "many severe haemorrhages", "intraretinal microvascular abnormality",
                               "severe diabetic retinopathy"]  # FLAIR's descriptions, then the class name
    fundus = load_prompt_set("flair_fundus")  # fundus_eye_diseases' folder names
    chosen = fundus.select(["cataract", "diabetic_retinopathy", "glaucoma", "normal"])
    assert chosen.classes[1].positive == ["diabetic retinopathy"] and \
        chosen.classes[3].positive[:2] == ["healthy", "no findings"]


@pytest.mark.slow
def test_the_preset_runs_the_tasks(tmp_path):
    from helpers import run_tasks

    released_checkpoint(Path(os.environ["MEDVLKIT_MODELS"]) / "flair")
    (Path(os.environ["MEDVLKIT_MODELS"]) / "flair" / "preprocess.json").write_text('{"image_size": 64}')
    meta = run_tasks("flair", tmp_path)
    assert any("conv" in n for n in meta["lora_layers"]) and any("query" in n for n in meta["lora_layers"])


def test_prompt_learning_reaches_the_bert_tower(tmp_path):
    from helpers import assert_prompt_learning_path

    assert_prompt_learning_path(create_model(f"flair:{released_checkpoint(tmp_path)}"))
