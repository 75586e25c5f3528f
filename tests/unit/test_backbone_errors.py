"""Every backbone family answers a truncated or foreign weights file with a one-line error that names the file and
says what was expected (no traceback, no half-loaded model)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import recipe_state_dict, reference_fixture, write_clip_tokenizer
from medvlkit import create_model
from medvlkit.errors import MedvlkitError


def _biomedclip(tmp):
    shutil.copytree(reference_fixture("open_clip", "biomedclip_tiny"), tmp / "m",
                    ignore=shutil.ignore_patterns("open_clip_model.safetensors"))
    return "biomedclip", tmp / "m", tmp / "m" / "open_clip_pytorch_model.bin"


def _open_clip(tmp):
    shutil.copytree(reference_fixture("open_clip", "vit_b32_tiny"), tmp / "m",
                    ignore=shutil.ignore_patterns("open_clip_model.safetensors"))
    write_clip_tokenizer(tmp / "m", vocab_size=1024)
    return "open_clip", tmp / "m", tmp / "m" / "open_clip_pytorch_model.bin"


def _biovil(tmp):
    src = reference_fixture("biovil")
    (tmp / "m").mkdir()
    torch.save(recipe_state_dict(json.loads((src / "image_recipe.json").read_text())),
               tmp / "m" / "biovil_image_resnet50_proj_size_128.pt")
    for f in (src / "tiny_cxr_bert").iterdir():
        shutil.copy(f, tmp / "m" / f.name)
    shutil.copy(src / "text_model.safetensors", tmp / "m" / "model.safetensors")
    return "biovil", tmp / "m", tmp / "m" / "biovil_image_resnet50_proj_size_128.pt"


def _medclip(tmp):
    src = reference_fixture("medclip")
    (tmp / "m").mkdir()
    torch.save(load_file(src / "medclip_vit.safetensors"), tmp / "m" / "pytorch_model.bin")
    shutil.copytree(src / "tiny_bio_clinicalbert", tmp / "m" / "text")
    shutil.copytree(src / "tiny_swin", tmp / "m" / "vision")
    return "medclip", tmp / "m", tmp / "m" / "pytorch_model.bin"


def _resnet_clip(tmp):
    (tmp / "m").mkdir()
    shutil.copy(reference_fixture("openai_clip_rn") / "model.safetensors", tmp / "m" / "rn.safetensors")
    write_clip_tokenizer(tmp / "m", vocab_size=1024)
    return "openai-ckpt", tmp / "m" / "rn.safetensors", tmp / "m" / "rn.safetensors"


FAMILIES = {"biomedclip": _biomedclip, "open_clip": _open_clip, "biovil": _biovil, "medclip": _medclip,
            "resnet_clip": _resnet_clip}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_weights_get_one_line_errors(family, damage, tmp_path):
    source, ref, weights = FAMILIES[family](tmp_path)
    create_model(f"{source}:{ref}")  # intact: loads
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) * 2 // 3])
    elif weights.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"classifier.weight": torch.zeros(3, 4)}, str(weights))
    else:
        torch.save({"classifier.weight": torch.zeros(3, 4)}, weights)
    with pytest.raises(MedvlkitError) as info:
        create_model(f"{source}:{ref}")
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert weights.name in message or str(ref) in message, message


@pytest.mark.parametrize("family", ["biovil", "medclip", "resnet_clip"])
def test_a_bad_preprocess_json_is_one_line(family, tmp_path):
    """The preprocess.json override beside the weights is read by one function for every source that takes it."""
    source, ref, weights = FAMILIES[family](tmp_path)
    (weights.parent / "preprocess.json").write_text('{"image_size": "big"}')
    with pytest.raises(MedvlkitError, match="preprocess.json: not a valid preprocessing config") as info:
        create_model(f"{source}:{ref}")
    assert "\n" not in str(info.value)
