"""OpenAI ResNet CLIPs: the fixture computed with openai-clip 1.0.1's own clip/model.py (RN50-style, tiny widths) is
reproduced to 1e-5, from a safetensors file, a pickled state dict and a TorchScript archive alike."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import reference_fixture, save_torchscript_state_dict, write_clip_tokenizer
from medvlkit import create_model
from medvlkit.models.clip_resnet import infer_resnet_config


@pytest.fixture(scope="module")
def folder():
    return reference_fixture("openai_clip_rn")


@pytest.fixture(scope="module")
def fixture(folder):
    return load_file(str(folder / "model.safetensors")), np.load(folder / "inputs.npz"), \
        np.load(folder / "expected.npz"), json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "torchscript"])
def test_resnet_clip_matches_openai_clip(fixture, folder, tmp_path, fmt):
    sd, inputs, expected, config = fixture
    arch = infer_resnet_config(sd)
    assert arch["layers"] == tuple(config["vision_layers"]) and arch["width"] == config["vision_width"]
    assert arch["input_resolution"] == config["image_resolution"] and arch["heads"] == config["vision_heads"]
    path = tmp_path / {"safetensors": "rn.safetensors", "pt": "rn.pt", "torchscript": "rn_jit.pt"}[fmt]
    if fmt == "safetensors":
        path.write_bytes((folder / "model.safetensors").read_bytes())
    elif fmt == "pt":
        torch.save(sd, path)
    else:
        save_torchscript_state_dict(sd, path)
    write_clip_tokenizer(tmp_path, vocab_size=1024)  # the fixture's vocabulary: end-of-text 1023
    m = create_model(f"openai-ckpt:{path}")
    assert m.preprocess_cfg.image_size == 96 and m.embed_dim == 64
    with torch.no_grad():
        img = m.encode_image(torch.from_numpy(inputs["pixel_values"]), normalize=False)
        txt = m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}, normalize=False)
    np.testing.assert_allclose(img.numpy(), expected["image_features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(txt.numpy(), expected["text_features"], atol=1e-5, rtol=1e-5)
    logits = m.logit_scale * m.encode_image(torch.from_numpy(inputs["pixel_values"])) @ \
        m.encode_text({"input_ids": torch.from_numpy(inputs["input_ids"])}).T
    np.testing.assert_allclose(logits.detach().numpy(), expected["logits_per_image"], atol=1e-4)


def test_resnet_clip_runs_the_tasks(fixture, folder, tmp_path):
    """zeroshot, embed, probe (backbone features too) and LoRA fine-tuning on the tiny ResNet CLIP."""
    from helpers import make_split_folders
    from medvlkit.apps.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "rn.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    write_clip_tokenizer(tmp_path / "m", vocab_size=1024)
    spec = f"openai-ckpt:{tmp_path / 'm' / 'rn.safetensors'}"
    data = make_split_folders(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    base = ["--model", spec, "--data", str(data), "-q", "--workers", "0"]
    assert main(["zeroshot", *base, "--split", "test", "--prompts", "pneumonia", "--bootstrap", "0", "--out",
                 str(tmp_path / "z")]) == 0
    assert main(["embed", *base, "--split", "test", "--out", str(tmp_path / "e")]) == 0
    assert main(["probe", *base, "--features", "backbone", "--bootstrap", "0", "--out", str(tmp_path / "p")]) == 0
    assert main(["finetune", *base, "--lora", "default", "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
                 "--bootstrap", "0", "--out", str(tmp_path / "f")]) == 0
    meta = json.loads((tmp_path / "f" / "best" / "finetune.json").read_text())
    assert any("attnpool" in n for n in meta["lora_layers"]) and any("text" in n for n in meta["lora_layers"])
    assert main(["zeroshot", "--model", f"ft:{tmp_path / 'f' / 'best'}", "--data", str(data), "--split", "test",
                 "--prompts", "pneumonia", "-q", "--workers", "0", "--bootstrap", "0", "--out",
                 str(tmp_path / "z2")]) == 0


def test_micro_batches_on_a_cpu_give_the_numbers_of_the_whole_batch(fixture, folder, tmp_path):
    """The tower takes four images at a time on a CPU without gradients (ModelBase.in_micro_batches): the same
    embeddings and feature maps as the batch whole; with gradients, and while traced for export, the batch whole."""
    path = tmp_path / "rn.safetensors"
    path.write_bytes((folder / "model.safetensors").read_bytes())
    write_clip_tokenizer(tmp_path, vocab_size=1024)
    m = create_model(f"openai-ckpt:{path}")
    assert m.cpu_micro_batch == 4
    pixels = torch.randn(9, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        parts, fmap = m.encode_image(pixels), m.image_feature_map(pixels)
        m.cpu_micro_batch = 0
        whole, fmap_whole = m.encode_image(pixels), m.image_feature_map(pixels)
    m.cpu_micro_batch = 4
    assert torch.allclose(parts, whole, atol=1e-6, rtol=0) and torch.allclose(fmap, fmap_whole, atol=1e-6, rtol=0)
    calls = []
    m.visual.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    with torch.inference_mode():
        m.encode_image(pixels)
    assert calls == [4, 4, 1]
    calls.clear()
    m.encode_image(pixels.clone().requires_grad_(True))
    assert calls == [9]
