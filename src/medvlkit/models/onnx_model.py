"""``onnx:DIR``: a folder written by ``medvlkit export`` run on ONNX Runtime, with no PyTorch weights.

The model shows the same surface as every other (``encode_image``, ``encode_text``, ``tokenize``, preprocessing,
``logit_scale``), so every inference task (embed, zeroshot, retrieve, gate, index, search, serve, probe on its unit
embeddings) runs on it; fine-tuning refuses it. Tokenisation is the source model's recipe (from the manifest) with the
saved tokenizer; preprocessing is the manifest's. CPU provider, or CUDA's when ``--device cuda`` and ONNX Runtime
has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medvlkit.errors import MedvlkitError, first_line
from medvlkit.models.base import ModelBase, TextBatch, TokenizerRecipe
from medvlkit.models.preprocess import PreprocessCfg


class OnnxModel(ModelBase):
    """Two ONNX Runtime sessions (image and text towers) behind medvlkit's model surface."""

    trainable = False

    def __init__(self, folder: Path, manifest: dict, image_session, text_session, tokenizer, providers: list[str]):
        graphs = [folder / manifest["image"], folder / manifest["text"]]
        super().__init__(PreprocessCfg(**manifest["preprocess"]),  # graphs and their external weights, if any
                         weight_files=[str(p) for g in graphs for p in (g, g.with_name(g.name + ".data"))
                                       if p.is_file()])
        self.folder, self.manifest, self.providers = folder, manifest, providers
        self.image_session, self.text_session, self.tokenizer = image_session, text_session, tokenizer
        self.recipe = TokenizerRecipe.from_dict(manifest["tokenizer"])
        self.name = f"onnx:{folder}"
        self.embed_dim = int(manifest["embed_dim"])
        self.context_length = self.recipe.max_length
        self.validated_gate_threshold = manifest.get("validated_gate_threshold")
        self.validated_domain_thresholds = manifest.get("validated_domain_thresholds")
        self.scope = manifest.get("scope")  # the source model's card travels with the export
        self._logit_scale = float(manifest["logit_scale"])

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if "CUDAExecutionProvider" in self.providers else "cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def log_scale_param(self) -> torch.nn.Parameter:
        raise MedvlkitError(f"{self.name} is an ONNX export: it runs inference only. Fine-tune the PyTorch model "
                            f"({self.manifest.get('source_spec') or self.manifest['model']}) and export again")

    def log_bias_param(self) -> None:
        return None

    def tower_modules(self) -> dict:
        self.log_scale_param()
        return {}

    def token_recipe(self) -> TokenizerRecipe:
        return self.recipe

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, S, S) float pixels -> (B, D) unit embeddings (the graph normalises; raw features are not kept)."""
        if not normalize:
            raise MedvlkitError(f"{self.name} gives unit embeddings only (the export keeps no raw features)")
        x = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.image_session.run(None, {"pixels": x})[0])

    def encode_text(self, tokens: TextBatch, normalize: bool = True) -> torch.Tensor:
        if not normalize:
            raise MedvlkitError(f"{self.name} gives unit embeddings only (the export keeps no raw features)")
        feeds = {k: np.ascontiguousarray(tokens[k].detach().cpu().numpy().astype(np.int64))
                 for k in self.recipe.keys}
        return torch.from_numpy(self.text_session.run(None, feeds)[0])

    def image_backbone_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise MedvlkitError(f"{self.name} keeps no backbone features; use --features projected")


# What `medvlkit export --format onnx` writes (medvlkit.tasks.export) and this reads.
FORMAT, VERSION = "medvlkit-onnx", 1


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not folder.is_dir() or not path.is_file():
        raise MedvlkitError(f"onnx:{folder}: not an export folder (no manifest.json); write one with `medvlkit "
                            "export --model SPEC --format onnx --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvlkitError(f"onnx:{folder}: manifest.json is not valid JSON ({first_line(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MedvlkitError(f"onnx:{folder}: manifest.json is not a medvlkit ONNX manifest (format "
                            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != VERSION:
        raise MedvlkitError(f"onnx:{folder}: manifest version {manifest.get('version')} is not {VERSION}; export "
                            "again with this medvlkit")
    missing = [k for k in ("image", "text", "preprocess", "tokenizer", "embed_dim", "logit_scale") if k not in manifest]
    if missing:
        raise MedvlkitError(f"onnx:{folder}: manifest.json lacks {', '.join(missing)}")
    return manifest


def load_onnx(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> OnnxModel:
    """Load an export folder. ``device``: ``cuda`` uses ONNX Runtime's CUDA provider when installed (else an
    error); anything else the CPU.

    Raises:
        MedvlkitError: not an export folder, a damaged graph or tokenizer, fp16/bf16 asked for, no onnxruntime.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise MedvlkitError(f"onnx: models need onnxruntime: pip install 'medvlkit[onnx]' ({err})") from None
    from transformers import AutoTokenizer

    if dtype != torch.float32:
        raise MedvlkitError("onnx: models run in the dtype they were exported in; drop --precision (int8 is "
                            "`medvlkit export --quantize int8`)")
    folder = Path(ref).expanduser().resolve()
    manifest = _read_manifest(folder)
    available = ort.get_available_providers()
    want_cuda = str(device).startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" not in available:
        raise MedvlkitError(f"--device {device}: this onnxruntime has no CUDA provider (pip install "
                            "onnxruntime-gpu), or use --device cpu")
    providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
    sessions = []
    for key in ("image", "text"):
        path = folder / manifest[key]
        try:
            sessions.append(ort.InferenceSession(str(path), providers=providers))
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for missing or damaged graphs
            raise MedvlkitError(f"onnx:{folder}: {manifest[key]} cannot be loaded ({first_line(err)}); export "
                                "again") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    except Exception as err:  # noqa: BLE001
        raise MedvlkitError(f"onnx:{folder}: tokenizer/ cannot be loaded ({first_line(err)}); export again") \
            from None
    image_session, text_session = sessions
    return OnnxModel(folder, manifest, image_session, text_session, tokenizer, providers)
