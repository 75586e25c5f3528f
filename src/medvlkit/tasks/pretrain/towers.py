"""The frozen towers of ``lite`` as a model whose "embeddings" are tower features, so that the embedding
cache and loaders of ``medvlkit.engine.features`` serve pretraining unchanged."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medvlkit.data.dataset import ImageDataset
from medvlkit.data.io import read_image
from medvlkit.data.items import split_view
from medvlkit.engine.cache import EmbeddingCache
from medvlkit.engine.features import embed_images
from medvlkit.models.base import ModelBase, TextBatch
from medvlkit.models.lite import LiteModel


class LiteTowers(ModelBase):
    """``encode_image`` -> (B, 1280) and ``encode_text`` -> (B, 384) tower features (never normalised)."""

    def __init__(self, lite: LiteModel) -> None:
        super().__init__(lite.preprocess_cfg, lite.weight_files[1:])  # tower weights only: heads may change
        self.lite = lite
        self.name = "lite-towers"

    @property
    def engine(self) -> str:
        return self.lite.engine

    def tokenize(self, texts: list[str]) -> TextBatch:
        return self.lite.tokenize(texts)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.lite.image_features(pixels)

    def encode_text(self, tokens: TextBatch, normalize: bool = False) -> torch.Tensor:
        return self.lite.text_features(tokens)


class CorpusImages(ImageDataset):
    """Corpus items, where ``<item>@@<view>`` is an augmented view of ``<item>`` (see :data:`VIEWS`)."""

    def load_image(self, index: int, draft: int | None = None, high_bit: str = "robust") -> Image.Image:
        item, view = split_view(self.items[index])
        image = read_image(item, draft=draft, high_bit=high_bit)
        return VIEWS[view](image) if view else image


VIEWS = {"gray": lambda im: im.convert("L"),
         # MedMNIST's 28 px copies (BreastMNIST is BUSI so): grey, bicubic down to 28 px; the model's resize brings
         # it back up, as it does BreastMNIST's images
         "small28": lambda im: im.convert("L").resize((28, 28), Image.Resampling.BICUBIC)}


def image_tower_features(towers: LiteTowers, items: list[str], **embed_options) -> np.ndarray:
    """(N, 1280) features of image items and views (cached on disk; unreadable items are an error here)."""
    emb = embed_images(towers, CorpusImages(items=items, name="pretrain"), on_error="fail", **embed_options)
    return emb.vectors


@torch.inference_mode()
def text_tower_features(towers: LiteTowers, texts: list[str], batch_size: int = 256,
                        cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """{text: (384,) feature} for unique texts, cached on disk by text hash."""
    import hashlib

    store = EmbeddingCache(towers.fingerprint() + "-text", cache_dir)
    unique = sorted(set(texts))
    keys = {t: hashlib.sha1(t.encode()).hexdigest() for t in unique}
    found = store.get(list(keys.values()))
    todo = [t for t in unique if keys[t] not in found]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        vecs = towers.encode_text(towers.tokenize(chunk)).float().cpu().numpy()
        store.put([keys[t] for t in chunk], vecs)
        found.update(zip((keys[t] for t in chunk), vecs))
    return {t: found[keys[t]] for t in unique}
