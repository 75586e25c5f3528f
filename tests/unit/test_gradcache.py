"""GradCache gives the same loss and gradients as the plain large-batch contrastive step."""

import pytest
import torch

from helpers import tiny_clip_config
from medvlkit.engine.losses import contrastive_loss
from medvlkit.models.base import PreprocessCfg
from medvlkit.models.hf import HFDualEncoder
from medvlkit.tasks.finetune.gradcache import gradcache_backward


def _model(dropout: float = 0.0, seed: int = 0) -> HFDualEncoder:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    cfg = tiny_clip_config()
    cfg.text_config.attention_dropout = cfg.vision_config.attention_dropout = dropout
    m = HFDualEncoder(CLIPModel(cfg), tokenizer=None, preprocess_cfg=PreprocessCfg(image_size=32), name="tiny")
    m.model.train()
    return m


def _batch(n: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (n, 10), generator=g)
    ids[:, 0], ids[:, -1] = 512, 513  # start / end of text
    return torch.randn(n, 3, 32, 32, generator=g), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _grads(m):
    return {k: p.grad.clone() for k, p in m.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_gradcache_equals_plain_large_batch(chunk):
    pixels, tokens = _batch()
    plain = _model()
    loss = contrastive_loss(plain.encode_image(pixels), plain.encode_text(tokens),
                            plain.model.logit_scale.exp().clamp(max=100))
    loss.backward()
    cached = _model()
    got = gradcache_backward(cached.encode_image, cached.encode_text, pixels, tokens, cached.model.logit_scale, chunk)
    torch.testing.assert_close(got, loss.detach(), atol=1e-6, rtol=1e-6)
    want, have = _grads(plain), _grads(cached)
    assert set(want) == set(have) and "logit_scale" in have and len(have) > 20
    for k in want:
        torch.testing.assert_close(have[k], want[k], atol=1e-5, rtol=1e-4, msg=k)


def test_gradcache_replays_dropout_masks():
    """With dropout, the re-embedding pass must see the same masks as the first pass: GradCache then equals a
    chunked forward that keeps every graph, under the same random stream."""
    pixels, tokens = _batch(8)
    ref = _model(dropout=0.3)
    torch.manual_seed(7)
    imgs, txts = [], []
    for sl in (slice(0, 4), slice(4, 8)):
        imgs.append(ref.encode_image(pixels[sl]))
        txts.append(ref.encode_text({k: v[sl] for k, v in tokens.items()}))
    loss = contrastive_loss(torch.cat(imgs), torch.cat(txts), ref.model.logit_scale.exp().clamp(max=100))
    loss.backward()
    gc = _model(dropout=0.3)
    torch.manual_seed(7)
    got = gradcache_backward(gc.encode_image, gc.encode_text, pixels, tokens, gc.model.logit_scale, 4)
    torch.testing.assert_close(got, loss.detach(), atol=1e-6, rtol=1e-6)
    for k, v in _grads(ref).items():
        torch.testing.assert_close(_grads(gc)[k], v, atol=1e-5, rtol=1e-4, msg=k)
