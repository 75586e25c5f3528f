import numpy as np
import pytest
import torch
from PIL import Image

from helpers import bytes_to_unicode, load_clip_tokenizer, make_image, tiny_clip_config, write_clip_tokenizer
from medvlkit import MedvlkitError, create_model, list_models
from medvlkit.models.base import ImagePreprocessor, PreprocessCfg
from medvlkit.models.openai_ckpt import hf_to_openai_state_dict, infer_clip_config


def _pil(seed=0, size=(50, 40)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_hf_clip_embeddings_match_transformers(tiny_clip_dir):
    from transformers import CLIPModel

    m = create_model(f"hf:{tiny_clip_dir}")
    ref = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    pixels = m.preprocess([_pil(0), _pil(1)])
    assert pixels.shape == (2, 3, 32, 32)
    tokens = m.tokenize(["pneumonia", "a chest x-ray with no finding"])
    with torch.no_grad():
        want_img = ref.get_image_features(pixel_values=pixels)
        want_txt = ref.get_text_features(**tokens)
    want_img = getattr(want_img, "pooler_output", want_img)
    want_txt = getattr(want_txt, "pooler_output", want_txt)
    with torch.no_grad():
        got_img, got_txt = m.encode_image(pixels, normalize=False), m.encode_text(tokens, normalize=False)
    torch.testing.assert_close(got_img, want_img)
    torch.testing.assert_close(got_txt, want_txt)
    assert m.embed_dim == 32 and m.context_length == 32
    assert m.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    assert torch.allclose(m.encode_image(pixels).norm(dim=-1), torch.ones(2))


def test_hf_preprocess_matches_clip_image_processor(tiny_clip_dir):
    from transformers import CLIPImageProcessor

    m = create_model(f"hf:{tiny_clip_dir}")
    proc = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    img = _pil(3, (61, 47))
    want = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"]))
    torch.testing.assert_close(m.preprocess([img]), want, atol=2e-2, rtol=0)


def test_hf_siglip(tiny_siglip_dir):
    from transformers import SiglipModel

    m = create_model(f"hf:{tiny_siglip_dir}")
    assert m.preprocess_cfg.resize_mode == "squash"
    assert m.preprocess_cfg.interpolation == "bicubic"  # what SiglipImageProcessor saved (resample=3)
    assert m.preprocess_cfg.mean == (0.5, 0.5, 0.5)
    tokens = m.tokenize(["short", "a longer piece of text"])
    assert tokens["input_ids"].shape == (2, 16)  # SigLIP pads to the full context length
    ref = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    pixels = m.preprocess([_pil(0)])
    with torch.no_grad():
        want = ref.get_image_features(pixel_values=pixels)
    want = getattr(want, "pooler_output", want)
    torch.testing.assert_close(m.encode_image(pixels, normalize=False), want)
    assert m.encode_text(tokens).shape == (2, m.embed_dim)


def test_openai_ckpt_roundtrip_matches_hf(tmp_path):
    from transformers import CLIPModel

    torch.manual_seed(0)
    hf = CLIPModel(tiny_clip_config()).eval()
    sd = hf_to_openai_state_dict(hf)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in sd and sd["visual.proj"].shape == (64, 32)
    torch.save(sd, tmp_path / "clip.pt")
    write_clip_tokenizer(tmp_path)  # vocab.json + merges.txt beside the checkpoint
    m = create_model(f"openai-ckpt:{tmp_path / 'clip.pt'}")
    cfg = infer_clip_config(sd)
    assert cfg.vision_config.image_size == 32 and cfg.vision_config.patch_size == 8
    assert cfg.text_config.num_hidden_layers == 2 and cfg.projection_dim == 32
    pixels = torch.randn(3, 3, 32, 32)
    tokens = m.tokenize(["no pneumonia", "cardiomegaly", "x"])
    with torch.no_grad():
        want_i = hf.get_image_features(pixel_values=pixels)
        want_t = hf.get_text_features(**tokens)
        got_i, got_t = m.encode_image(pixels, normalize=False), m.encode_text(tokens, normalize=False)
    torch.testing.assert_close(got_i, getattr(want_i, "pooler_output", want_i), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_t, getattr(want_t, "pooler_output", want_t), atol=1e-5, rtol=1e-5)
    assert m.model.config._attn_implementation == "sdpa"  # fused attention kernels, also when built from a state dict


def test_hf_models_use_fused_attention(tiny_clip_dir, tiny_siglip_dir):
    """transformers' scaled-dot-product attention (flash / memory-efficient kernels on GPU), not the eager path."""
    for spec in (f"hf:{tiny_clip_dir}", f"hf:{tiny_siglip_dir}"):
        model = create_model(spec).model
        assert model.config._attn_implementation == "sdpa", spec
        assert model.vision_model.config._attn_implementation == "sdpa", spec


def test_openai_ckpt_text_pooling_follows_openai_argmax(tmp_path):
    """OpenAI pools the token with the highest id (end-of-text); padding after it must not change the result."""
    from transformers import CLIPModel

    torch.manual_seed(1)
    hf = CLIPModel(tiny_clip_config()).eval()
    torch.save(hf_to_openai_state_dict(hf), tmp_path / "c.pt")
    write_clip_tokenizer(tmp_path)
    m = create_model(f"openai-ckpt:{tmp_path / 'c.pt'}")
    ids = m.tokenize(["effusion"])["input_ids"]
    padded = torch.cat([ids, torch.full((1, 5), 513)], dim=1)
    with torch.no_grad():
        a = m.encode_text({"input_ids": ids})
        b = m.encode_text({"input_ids": padded})
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ids[0, -1] == 513 and ids.argmax() == ids.shape[1] - 1


def test_openai_ckpt_errors(tmp_path):
    with pytest.raises(MedvlkitError, match="does not exist"):
        create_model(f"openai-ckpt:{tmp_path / 'missing.pt'}")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "rn50.pt")
    with pytest.raises(MedvlkitError, match="ResNet"):
        create_model(f"openai-ckpt:{tmp_path / 'rn50.pt'}")
    from transformers import CLIPModel

    torch.save(hf_to_openai_state_dict(CLIPModel(tiny_clip_config())), tmp_path / "notok" / "c.pt") if (
        tmp_path / "notok").mkdir() is None else None
    with pytest.raises(MedvlkitError, match="tokenizer"):
        create_model(f"openai-ckpt:{tmp_path / 'notok' / 'c.pt'}")


def test_create_model_errors(tmp_path):
    with pytest.raises(MedvlkitError, match="unknown model spec"):
        create_model("nonsense:abc")
    with pytest.raises(MedvlkitError, match="nothing after"):
        create_model("hf:")
    with pytest.raises(MedvlkitError, match="offline.*medvlkit download hf:someone/not-a-local-model"):
        create_model("hf:someone/not-a-local-model")  # conftest: HF_HUB_OFFLINE=1 (the downloads: test_hub_download)
    with pytest.raises(MedvlkitError, match="no such directory"):
        create_model("hf:/no/such/dir")
    with pytest.raises(MedvlkitError, match="medvlkit download hf:openai/clip-vit-base-patch32"):
        create_model("clip-vit-b32")  # a preset with no local copy, offline
    with pytest.raises(MedvlkitError, match="chexzero"):
        create_model("chexzero")
    with pytest.raises(MedvlkitError, match="precision"):
        create_model("hf:x", precision="fp8")
    with pytest.raises(MedvlkitError, match="open_clip"):
        create_model("open_clip:ViT-B-32")  # open_clip is an optional extra that cannot be imported here
    with pytest.raises(MedvlkitError, match="medvlkit download biomedclip:microsoft/BiomedCLIP"):
        create_model("biomedclip")  # its folder in $MEDVLKIT_MODELS, else its hub repository (offline here)


def test_preset_found_in_models_dir(tiny_clip_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MEDVLKIT_MODELS", str(tmp_path))
    shutil.copytree(tiny_clip_dir, tmp_path / "clip-vit-b32")
    m = create_model("clip-vit-b32")
    assert m.embed_dim == 32


def test_list_models_has_presets():
    names = [p.name for p in list_models()]
    for want in ("lite", "clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "pubmedclip-vit-b32", "chexzero",
                 "biomedclip", "medsiglip"):
        assert want in names
    assert [p.name for p in list_models("*siglip*")] == ["siglip-b16", "medsiglip"]
    assert all(p.licence and p.fetch and p.preprocessing for p in list_models())


def test_preprocess_shortest_and_squash():
    img = Image.fromarray(np.full((40, 80, 3), 255, np.uint8))
    short = ImagePreprocessor(PreprocessCfg(image_size=20))(img)
    squash = ImagePreprocessor(PreprocessCfg(20, (0.5,) * 3, (0.5,) * 3, "bilinear", "squash"))(img)
    assert short.shape == squash.shape == (3, 20, 20)
    torch.testing.assert_close(squash, torch.ones(3, 20, 20))  # (1 - 0.5) / 0.5
    grey = Image.fromarray(np.zeros((30, 30), np.uint8), mode="L")
    assert ImagePreprocessor(PreprocessCfg(image_size=16))(grey).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="resize_mode"):
        PreprocessCfg(resize_mode="letterbox")


def test_tokenizer_cuts_tokens_not_characters(tiny_clip_dir):
    m = create_model(f"hf:{tiny_clip_dir}")
    long_text = "pleural effusion " * 50
    ids = m.tokenize([long_text])["input_ids"]
    assert ids.shape[1] == m.context_length == 32
    assert int(ids[0, -1]) == 513  # still ends with end-of-text after truncation


def test_byte_tokenizer_helper(tmp_path):
    tok = load_clip_tokenizer(write_clip_tokenizer(tmp_path))
    assert len(bytes_to_unicode()) == 256 and len(tok) == 514
    make_image(tmp_path / "x.png")
