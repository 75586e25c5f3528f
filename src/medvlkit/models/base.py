"""The one surface every backbone shows to the tasks, and the preprocessing that travels with it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from medvlkit.errors import ImageReadError, MedvlkitError
from medvlkit.files import stat_fingerprint
from medvlkit.limits import max_pixels
from medvlkit.models.preprocess import PreprocessCfg

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
TextBatch = dict[str, torch.Tensor]
"""Tokenizer output: at least ``input_ids`` (B, L); often ``attention_mask`` (B, L)."""



@dataclass
class ImagePreprocessor:
    """Turns PIL images into the (3, S, S) float tensor one model expects. Picklable for loader workers.

    Two halves: :meth:`to_uint8` (decode-side geometry: grey to RGB, resize, crop or pad; run in loader workers, so
    only uint8 pixels, a quarter of float32's bytes, cross process boundaries and the host-device copy) and
    :meth:`normalize` (scale and normalise, on whatever device the pixels are). Calling the preprocessor does both.
    """

    cfg: PreprocessCfg = field(default_factory=PreprocessCfg)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Resize, crop, scale to [0, 1] and normalise one image. Returns (3, S, S) float32."""
        return self.normalize(self.to_uint8(image))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> float32 scaled to [0, 1] and normalised by the config's mean and std, on the
        pixels' device (the same float32 operations, in the same order, as a numpy path would do)."""
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        return (pixels.to(torch.float32) / 255.0 - mean) / std

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """The geometric half: one image as (3, S, S) uint8, ready for :meth:`normalize`."""
        cfg = self.cfg
        # Grey images become RGB only here, at the model boundary (all backbones take 3 channels).
        image = image.convert("L").convert("RGB") if cfg.grayscale else image.convert("RGB")
        resample = _RESAMPLE.get(cfg.interpolation, Image.Resampling.BILINEAR)
        size = cfg.image_size
        if cfg.resize_mode == "squash" and cfg.interpolation == "tf_bilinear":
            image = _tf_bilinear(image, size)
        elif cfg.resize_mode == "squash":
            image = image.resize((size, size), resample=resample)
        elif cfg.resize_mode == "square":
            w, h = image.size
            side = max(size, w, h)
            if side * side > max_pixels():  # a 1 x 400,000 strip would need a 400,000 px square canvas
                raise ImageReadError("<image>", f"a {w}x{h} image padded to a {side}x{side} square is over the limit "
                                                f"of {max_pixels()} pixels")
            canvas = Image.new("RGB", (side, side))
            canvas.paste(image, (int((side - w) / 2), int((side - h) / 2)))  # MedCLIPFeatureExtractor.pad_img
            image = canvas.resize((size, size), resample=resample)
        elif cfg.resize_mode == "longest":
            image = _longest_side(image, size, resample)
        elif cfg.resize_mode == "canvas":
            image = _letterbox(image, size, resample, centred=False)
        elif cfg.resize_mode == "pad" and cfg.resize_size:
            image = _letterbox(image, cfg.resize_size, resample)
            offset = (cfg.resize_size - size) // 2
            image = image.crop((offset, offset, offset + size, offset + size))
        elif cfg.resize_mode == "pad":
            image = _letterbox(image, cfg.pad_size or size, Image.Resampling.LANCZOS if cfg.pad_size else resample)
            if cfg.pad_size and cfg.pad_size != size:
                image = image.resize((size, size), resample=resample)
        else:
            w, h = image.size
            short = cfg.resize_size or size
            scale = short / min(w, h)
            # floor, as torchvision's Resize and transformers' CLIP processor compute the long side
            new_w, new_h = max(short, int(w * scale)), max(short, int(h * scale))
            if new_w * new_h > max_pixels():  # a thin strip (1 x 400,000 px) would be blown up to billions of pixels
                raise ImageReadError("<image>", f"a {w}x{h} image resized to {new_w}x{new_h} is over the limit of "
                                                f"{max_pixels()} pixels (aspect ratio {max(w, h) / min(w, h):.0f}:1)")
            image = image.resize((new_w, new_h), resample=resample)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())  # (3, S, S)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess a list of images. Returns (B, 3, S, S)."""
        return torch.stack([self(im) for im in images])


def _tf_bilinear(image: Image.Image, side: int) -> Image.Image:
    """TensorFlow's ``tf.image.resize(method="bilinear", antialias=False)`` to ``side x side`` (half-pixel centres,
    which are torch's ``align_corners=False``; no low-pass filter when shrinking), rounded to uint8. Equal to
    TensorFlow 2.21's float output within the rounding (``tests/fixtures/tf_bilinear``)."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False,
                                          antialias=False)[0]
    return Image.fromarray(out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def _longest_side(image: Image.Image, side: int, resample) -> Image.Image:
    """open_clip's ``resize_mode="longest"``: ``ResizeKeepRatio(side, longest=1)`` (each side divided by the larger
    ratio and rounded) then ``CenterCropOrPad(side, fill=0)`` (black padding, left/top ``(side - n) // 2``)."""
    w, h = image.size
    ratio = max(h / side, w / side)
    new_w, new_h = max(1, round(w / ratio)), max(1, round(h / ratio))
    canvas = Image.new(image.mode, (side, side))
    canvas.paste(image.resize((new_w, new_h), resample=resample), ((side - new_w) // 2, (side - new_h) // 2))
    return canvas  # the long side is exactly ``side``: nothing to crop


def _letterbox(image: Image.Image, side: int, resample, centred: bool = True) -> Image.Image:
    """Long side to ``side`` (aspect kept, sizes truncated as CheXzero's ``data_process.preprocess`` and FLAIR's
    ``ImageScaling`` do), pasted on a black square: centred (CheXzero) or at the top-left corner (FLAIR's canvas).
    Nothing of a portrait radiograph is cut off."""
    w, h = image.size
    if centred:  # CheXzero: x * (side / long)
        ratio = side / max(w, h)
        new = (max(1, int(w * ratio)), max(1, int(h * ratio)))
    else:  # FLAIR: x / (long / side), which rounds differently in the last bit
        scale = max(w, h) / side
        new = (max(1, int(w / scale)), max(1, int(h / scale)))
    canvas = Image.new(image.mode, (side, side))
    at = ((side - new[0]) // 2, (side - new[1]) // 2) if centred else (0, 0)
    canvas.paste(image.resize(new, resample=resample), at)
    return canvas


@runtime_checkable
class VisionLanguageModel(Protocol):
    """What every backbone offers: two encoders into one space, and how to feed them."""

    name: str
    embed_dim: int
    preprocess_cfg: PreprocessCfg
    context_length: int
    logit_scale: float

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D)."""
        ...

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        """Tokenizer output for B texts -> (B, D)."""
        ...

    def tokenize(self, texts: list[str]) -> TextBatch:
        """Texts -> tokens, cut at ``context_length`` tokens (never characters)."""
        ...

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S)."""
        ...


def _biovil_text(text: str) -> str:
    import re

    return re.sub(r"[!?.]+$", "", text.strip())  # hi-ml's TextInput.tokenize_input_prompts


TEXT_RULES = {"biovil": _biovil_text}
"""Named text clean-ups a :class:`TokenizerRecipe` applies before tokenising (by name, so a manifest can hold it)."""


@dataclass(frozen=True)
class TokenizerRecipe:
    """How a model turns texts into token tensors with its Hugging Face tokenizer. Defined once per model and used
    by the PyTorch model's ``tokenize`` and, read back from an export's manifest, by the ONNX backend.

    Attributes:
        max_length: tokens kept per text (the model's context length; cut in tokens, never characters).
        padding: ``True`` (to the longest text of the batch) or ``"max_length"`` (SigLIP was trained so).
        keys: the tokenizer outputs the text tower reads, in this order.
        text_rule: a name in :data:`TEXT_RULES` applied to each text first, or None.
    """

    max_length: int
    padding: bool | str = True
    keys: tuple[str, ...] = ("input_ids", "attention_mask")
    text_rule: str | None = None

    def __call__(self, tokenizer, texts: list[str], tensors: str = "pt") -> dict:
        """Tokenise ``texts``: a dict of the ``keys`` the tokenizer gives, as ``tensors`` (``pt`` or ``np``)."""
        texts = [TEXT_RULES[self.text_rule](t) for t in texts] if self.text_rule else list(texts)
        out = tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                        return_tensors=tensors)
        return {k: out[k] for k in self.keys if k in out}

    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "padding": self.padding, "keys": list(self.keys),
                "text_rule": self.text_rule}

    @classmethod
    def from_dict(cls, raw: dict) -> TokenizerRecipe:
        return cls(int(raw["max_length"]), raw.get("padding", True), tuple(raw.get("keys", ("input_ids",))),
                   raw.get("text_rule"))


class ModelBase(torch.nn.Module):
    """Shared plumbing for medvlkit's model wrappers: preprocessing, device, fingerprint."""

    name: str = "model"
    embed_dim: int = 0
    context_length: int = 77
    validated_gate_threshold: float | None = None
    """P(medical) threshold for the medical-image gate, chosen on validation data for these very weights (``lite``
    ships one); None means none was validated and a gate needs one from the user."""
    validated_domain_thresholds: dict[str, float] | None = None
    """Per modality (``chest x-ray``...), the P(modality) threshold the domain check (:mod:`medvlkit.tasks.domain`)
    uses, chosen on validation data for these very weights; None: the check falls back to the most probable modality."""
    scope: str | None = None
    """What the weights were trained and validated on, from their model card, printed where their answers are shown
    (it travels with the model, through ``export`` too); None when nothing is said."""
    has_text: bool = True
    """False for image-only backbones (RAD-DINO, DINOv2: :mod:`medvlkit.models.image_only`): they embed, probe,
    search by image and fine-tune with a classifier head; what needs text vectors is refused by :meth:`require_text`."""
    hub_source: dict[str, Any] | None = None
    """Where the weights came from when they were fetched from a model hub (:meth:`medvlkit.models.hub.Snapshot.record`:
    repository, revision, commit, weight files' sha256); None for local files. Results record it."""
    training_manifest_file: str | None = None
    """The file listing the images these weights were trained on (:mod:`medvlkit.models.training_data`); None when
    the model declares none (then nothing can be said of seen images, and results say so)."""

    cpu_micro_batch: int = 0
    """Images a convolutional tower takes at a time on a CPU when no gradient is wanted (0: the batch whole; see
    :meth:`in_micro_batches`). A CNN's early activations for a batch of 64 at 224 px are ~100 MB a layer, far outside
    a CPU's caches: families that measured faster and identical in small parts set it (``lite``, ModifiedResNet)."""

    @property
    def engine(self) -> str:
        """What computes the image tower now: ``torch``, or ``onnx`` where a verified ONNX Runtime graph of the
        unchanged tower serves it (``lite`` on a CPU: :mod:`medvlkit.models.fast_tower`). Embedding caches and
        results record it: the two agree within 1e-4, not bit for bit."""
        return "torch"

    if TYPE_CHECKING:  # every backbone defines these (see VisionLanguageModel); declared for the type checker only
        @property
        def logit_scale(self) -> float: ...

        def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...

        def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor: ...

        # set on a fine-tuned supervised model by its loader (tasks.finetune.saved); absent on others
        classifier: torch.nn.Module | None
        classnames: list[str] | None
        multilabel: bool

    def __init__(self, preprocess_cfg: PreprocessCfg, weight_files: list[str] | None = None) -> None:
        super().__init__()
        self.preprocess_cfg = preprocess_cfg
        self.image_preprocessor = ImagePreprocessor(preprocess_cfg)
        self.weight_files = list(weight_files or [])

    def in_micro_batches(self, tower: Any, pixels: torch.Tensor) -> torch.Tensor:
        """``tower(pixels)``, in parts of :attr:`cpu_micro_batch` images on a CPU when no gradient is wanted; whole
        otherwise (training, gradient heatmaps) and while a graph is traced for export (its batch axis stays free)."""
        k = self.cpu_micro_batch
        if not k or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return tower(pixels)
        if pixels.device.type != "cpu" or torch.is_grad_enabled() or len(pixels) <= k:
            return tower(pixels)
        return torch.cat([tower(part) for part in pixels.split(k)])

    def require_text(self, task: str) -> None:
        """Refuse ``task`` in one line when this model has no text tower (called where text vectors are first needed:
        the zero-shot answer path, text embedding, and the start of each task that needs them).

        Raises:
            MedvlkitError: an image-only model.
        """
        if not self.has_text:
            raise MedvlkitError(f"{self.name} is an image-only model (no text tower), so {task} cannot run on it; "
                                "embed, probe, index and search by image, audit and fine-tuning with a classifier "
                                "head (--mode supervised) work")

    def text_word_embedding(self) -> torch.nn.Module | None:
        """The text tower's word-embedding table (``input_ids`` -> (B, L, H), looked up once per :meth:`encode_text`
        before positions are added), or None where the tower has none medvlkit can reach (ONNX, TorchScript,
        image-only). Backbones override this one method; prompt learning (CoOp) then works through
        :meth:`text_input_embeddings` and :meth:`encode_text_from_embeddings`."""
        return None

    def _word_table(self) -> torch.nn.Module:
        table = self.text_word_embedding() if self.has_text else None
        if table is None:
            raise MedvlkitError(f"{self.name}: its text tower does not take word embeddings in medvlkit, so prompt "
                                "learning (--method coop) cannot run on it; the other --method choices can")
        return table

    def text_input_embeddings(self, tokens: TextBatch) -> torch.Tensor:
        """The text tower's word embeddings of ``tokens`` (B, L, H), before positions are added: what prompt
        learning (CoOp) replaces with learned context vectors.

        Raises:
            MedvlkitError: this backbone's text tower does not take embeddings.
        """
        table = self._word_table()
        return table(tokens["input_ids"].to(self.device))

    def encode_text_from_embeddings(self, embeds: torch.Tensor, tokens: TextBatch,
                                    normalize: bool = True) -> torch.Tensor:
        """:meth:`encode_text` with word embeddings (B, L, H) in place of the table's lookup of
        ``tokens["input_ids"]`` (everything else, the attention mask and where the tower pools, still comes from
        ``tokens``): with ``text_input_embeddings(tokens)`` it gives ``encode_text(tokens)``. One path for every
        backbone: a forward hook swaps the table's output, so the tower's own code runs unchanged.

        Raises:
            MedvlkitError: no table; the tower looked the table up other than exactly once, or with another shape.
        """
        table, calls = self._word_table(), []

        def swap(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if output.shape != embeds.shape:
                raise MedvlkitError(f"{self.name}: embeddings of shape {tuple(embeds.shape)} given where its text "
                                    f"tower looked up {tuple(output.shape)}")
            calls.append(1)
            return embeds.to(output.dtype)

        handle = table.register_forward_hook(swap)
        try:
            out = self.encode_text(tokens, normalize)
        finally:
            handle.remove()
        if len(calls) != 1:
            raise MedvlkitError(f"{self.name}: its text tower looked up its word embeddings {len(calls)} times in one "
                                "encoding; prompt learning needs exactly one lookup")
        return out

    def training_manifest(self):
        """The :class:`~medvlkit.models.training_data.TrainingManifest` these weights declare, or None."""
        from medvlkit.models.training_data import read_manifest

        return read_manifest(self.training_manifest_file) if self.training_manifest_file else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) float32 tensor on the CPU."""
        return self.image_preprocessor.batch(images)

    def set_preprocess(self, cfg: PreprocessCfg) -> None:
        """Use ``cfg`` (e.g. a preset's, for weights that do not carry their own); it enters the fingerprint."""
        self.preprocess_cfg = cfg
        self.image_preprocessor = ImagePreprocessor(cfg)

    trainable: bool = True
    """False for models that only run inference (``onnx:``): fine-tuning refuses them."""

    def image_feature_map(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """For CNN image towers, the last convolutional stage's output (B, K, h, w) that :meth:`embed_feature_map`
        turns into the embedding (Grad-CAM explains it); None for towers without one."""
        return None

    def embed_feature_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The rest of the image tower after :meth:`image_feature_map`: (B, K, h, w) -> (B, D), not normalised."""
        raise NotImplementedError(f"{type(self).__name__} has no feature-map split")

    def token_recipe(self) -> TokenizerRecipe | None:
        """How this model tokenises (with ``self.tokenizer``), or None when its tokenisation is its own code (then
        its text tower cannot be exported)."""
        return None

    def tokenize(self, texts: list[str]) -> TextBatch:
        """Texts -> token tensors by :meth:`token_recipe` (models without one override this)."""
        recipe = self.token_recipe()
        if recipe is None:
            raise NotImplementedError(f"{type(self).__name__} must define token_recipe() or tokenize()")
        return recipe(self.tokenizer, texts)

    def tower_modules(self) -> dict[str, list[torch.nn.Module]]:
        """The trainable parts by tower: ``{"vision": [...], "text": [...]}`` (for ``--freeze`` and LoRA targets)."""
        raise NotImplementedError(f"{type(self).__name__} does not support fine-tuning")

    default_lora_targets: tuple[str, ...] = ()

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower's pooled features before the projection into the shared space. (B, 3, S, S) -> (B, F)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose backbone features")

    def head_modules(self) -> dict[str, list[torch.nn.Module]]:
        """Parts trained in full even under LoRA, by tower (none by default)."""
        return {"vision": [], "text": []}

    def log_scale_param(self) -> torch.nn.Parameter:
        """The learned log temperature that the contrastive loss trains."""
        raise NotImplementedError(f"{type(self).__name__} does not support fine-tuning")

    def log_bias_param(self) -> torch.nn.Parameter | None:
        """SigLIP-family models' learned logit bias (their sigmoid loss trains it); None for softmax (CLIP) models."""
        return None

    def fingerprint(self) -> str:
        """A short id of (model name, preprocessing, weight dtype, weight files' and tokenizer files' paths, sizes,
        mtimes) for the embedding caches: bf16 and fp32 weights give different vectors, and so does another
        tokenizer (``--tokenizer DIR``) for the same weights; neither may share cached vectors."""
        files = list(self.weight_files) + tokenizer_files(getattr(self, "tokenizer", None))
        parts = [self.name, self.preprocess_cfg.identity(), str(self.dtype)] + [stat_fingerprint(f) for f in files]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


    def weights_identity(self) -> str:
        """What ``result.json`` records as ``pretrained``: each weight file's name and sha256 prefix."""
        return "; ".join(f"{os.path.basename(f)}:sha256:{file_sha256(f)[:12]}" for f in self.weight_files
                         if os.path.isfile(f)) or self.name


_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                    "special_tokens_map.json", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")


def tokenizer_files(tokenizer) -> list[str]:
    """The files a Hugging Face tokenizer was read from (its ``name_or_path`` folder), for fingerprints."""
    folder = getattr(tokenizer, "name_or_path", None)
    if not folder or not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in _TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))]


_SHA_CACHE: dict[str, str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for the life of the process."""
    key = stat_fingerprint(path)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


class LearnedTemperature:
    """For models that keep their learned log temperature as ``self.log_logit_scale`` (a parameter)."""

    log_logit_scale: torch.nn.Parameter

    @property
    def logit_scale(self) -> float:
        """The learned temperature (exp of the stored log scale)."""
        return float(self.log_logit_scale.detach().exp())

    def log_scale_param(self) -> torch.nn.Parameter:
        return self.log_logit_scale


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm. (B, D) -> (B, D)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class BackboneView(ModelBase):
    """A model whose image "embeddings" are its image tower's pooled features before the projection (for linear
    probes on the wider representation). Cached under its own fingerprint; it has no text side."""

    def __init__(self, model: ModelBase) -> None:
        super().__init__(model.preprocess_cfg, model.weight_files)
        self.base = model
        self.training_manifest_file = model.training_manifest_file  # same tower, same training images
        self.name = f"{model.name}#backbone"
        self.embed_dim = 0

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.base.image_backbone_features(pixels)
        return l2_normalize(feats) if normalize else feats

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        raise NotImplementedError("backbone features are image-only; use the model itself for text")
