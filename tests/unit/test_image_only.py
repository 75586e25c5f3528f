"""Image-only backbones (RAD-DINO, DINOv2): transformers' ``Dinov2Model`` is the upstream implementation; the loader
must give its class token after the final layer norm, with the processor's pixels. What needs no text runs end to
end; what needs text vectors is refused in one line, before any work."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_split_folders
from medvlkit import create_model
from medvlkit.apps.cli import main
from medvlkit.errors import MedvlkitError


def save_tiny_dinov2(folder, seed: int = 0, image_size: int = 28):
    """A random Dinov2Model + the BitImageProcessor RAD-DINO's repository carries (shortest edge, centre crop)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=7, image_size=image_size)).eval().save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      do_center_crop=True, image_mean=[0.5307] * 3, image_std=[0.2583] * 3,
                      resample=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_split_folders(tmp_path_factory.mktemp("dino_data"), {"train": 6, "val": 4, "test": 4})


def test_the_embedding_is_transformers_class_token_on_the_processors_pixels(dino_dir):
    from transformers import BitImageProcessor, Dinov2Model

    m = create_model(f"hf:{dino_dir}")
    assert not m.has_text and m.embed_dim == 32 and m.preprocess_cfg.image_size == 28
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (61, 47, 3), dtype=np.uint8))
    want_px = torch.as_tensor(BitImageProcessor.from_pretrained(dino_dir)(images=img, return_tensors="np")
                              ["pixel_values"])
    torch.testing.assert_close(m.preprocess([img]), want_px, atol=2e-2, rtol=0)
    ref = Dinov2Model.from_pretrained(dino_dir).eval()
    with torch.no_grad():
        want = ref(pixel_values=want_px).pooler_output
        torch.testing.assert_close(m.encode_image(want_px, normalize=False), want, atol=1e-5, rtol=1e-5)
        got = m.encode_image(want_px)
    torch.testing.assert_close(got, want / want.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_what_needs_text_is_refused_in_one_line_before_any_work(dino_dir, folder, tmp_path, capsys):
    m = create_model(f"hf:{dino_dir}")
    with pytest.raises(MedvlkitError, match="image-only"):
        m.tokenize(["a chest x-ray"])
    spec, data = f"hf:{dino_dir}", str(folder)
    for argv in (["zeroshot", "--model", spec, "--data", data, "--split", "test", "--prompts", "pneumonia"],
                 ["retrieve", "--model", spec, "--data", data, "--split", "test"],
                 ["gate", "--model", spec, "--data", data, "--split", "test"],
                 ["finetune", "--model", spec, "--data", data, "--epochs", "1", "--out", str(tmp_path / "ft")]):
        assert main([*argv, "--out", str(tmp_path / argv[0])] if argv[0] != "finetune" else argv) == 2, argv
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' weight-loading bar
        assert last.startswith("error: ") and "image-only" in last, (argv, last)


@pytest.mark.slow
def test_embed_probe_search_and_supervised_lora_run_end_to_end(dino_dir, folder, tmp_path, capsys):
    spec, data = f"hf:{dino_dir}", str(folder)
    assert main(["embed", "--model", spec, "--data", data, "--split", "test", "--out", str(tmp_path / "emb"),
                 "-q"]) == 0
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (8, 32)
    assert main(["probe", "--model", spec, "--data", data, "--out", str(tmp_path / "probe"), "--bootstrap", "0",
                 "-q"]) == 0
    assert "auroc" in json.loads((tmp_path / "probe" / "result.json").read_text())["metrics"]
    assert main(["index", "--model", spec, "--data", data, "--split", "test", "--out", str(tmp_path / "idx"),
                 "-q"]) == 0
    query = next((folder / "test" / "NORMAL").iterdir())
    assert main(["search", "--index", str(tmp_path / "idx"), "--image", str(query), "-k", "2"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--text", "pneumonia"]) == 2
    assert "image-only" in capsys.readouterr().err
    assert main(["audit", "--data", data, "--model", spec, "--out", str(tmp_path / "audit")]) == 0  # embeddings too
    out = tmp_path / "sup"
    assert main(["finetune", "--model", spec, "--data", data, "--mode", "supervised", "--lora", "default",
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"] and (out / "best").is_dir()


def test_serve_embeds_and_searches_by_image_and_refuses_zero_shot(dino_dir, tmp_path):
    from fastapi.testclient import TestClient

    from helpers import make_image
    from medvlkit.apps.serve.app import create_app
    from medvlkit.apps.serve.engine import ServeEngine

    model = create_model(f"hf:{dino_dir}")
    image = make_image(tmp_path / "a.png", seed=1)
    files = [("files", ("a.png", image.read_bytes(), "application/octet-stream"))]
    with TestClient(create_app(ServeEngine(model, cache=False))) as c:
        info = c.get("/info").json()
        assert info["prompt_sets"] == {} and info["text_tower"] is False
        got = c.post("/embed", files=files)
        assert got.status_code == 200
        with torch.no_grad():
            want = model.encode_image(model.preprocess([Image.open(image).convert("RGB")]))[0].numpy()
        np.testing.assert_allclose(got.json()["embeddings"][0], want, atol=1e-5)
        for response in (c.post("/zeroshot", files=files, data={"prompts": "pneumonia"}),
                         c.post("/embed", data={"texts": ["pneumonia"]})):
            assert response.status_code == 400 and "image-only" in response.json()["error"]


def test_explain_without_prompts_is_attention_rollout(dino_dir, folder, tmp_path):
    """Abnar & Zuidema's recurrence, computed here from transformers' own attention weights, equals the maps."""
    from transformers import Dinov2Model

    from medvlkit.tasks.explain import attention_rollout

    m = create_model(f"hf:{dino_dir}")
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 28, 28)
    ref = Dinov2Model.from_pretrained(dino_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        att = [a.double().mean(1).numpy() for a in ref(pixel_values=pixels, output_attentions=True).attentions]
    want = []
    for b in range(2):
        r = np.eye(att[0].shape[-1])
        for a in att:
            a = 0.5 * a[b] + 0.5 * np.eye(len(a[b]))
            r = (a / a.sum(-1, keepdims=True)) @ r
        want.append(r[0, 1:].reshape(4, 4))
    want = torch.nn.functional.interpolate(torch.tensor(np.stack(want))[:, None].float(), size=(28, 28),
                                           mode="bilinear", align_corners=False)[:, 0].numpy()
    got = attention_rollout(m, pixels)
    np.testing.assert_allclose(got, want / want.reshape(2, -1).max(1)[:, None, None], atol=1e-5)

    out = tmp_path / "explain"
    assert main(["explain", "--model", f"hf:{dino_dir}", "--data", str(folder), "--split", "test", "--limit", "2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "attention_rollout" and len(result["images"]) == 2
    assert np.load(out / result["images"][0]["map"]).shape == (1, 28, 28)
    assert main(["explain", "--model", f"hf:{dino_dir}", "--data", str(folder), "--split", "test", "--prompts",
                 "pneumonia", "--out", str(tmp_path / "refused")]) == 2
