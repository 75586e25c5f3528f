"""``medvlkit export``: a model's two towers as ONNX graphs, checked against PyTorch before the folder is kept.

An export folder (read back by ``--model onnx:DIR``, :mod:`medvlkit.models.onnx_model`) holds:

- ``image.onnx``: float32 pixels (batch, 3, S, S), normalised as the manifest's preprocessing says -> unit
  embeddings (batch, D);
- ``text.onnx``: the tokenizer outputs the recipe names (int64, (batch, tokens)) -> unit embeddings (batch, D);
- ``tokenizer/``: the model's Hugging Face tokenizer (``save_pretrained``);
- ``manifest.json``: format and version, the source model's name and fingerprint, embed dim, logit scale (and bias),
  preprocessing, the tokenizer recipe (context length, padding, keys), the gate threshold, opset, quantisation, and
  the verification (max abs difference of the unit embeddings, ONNX Runtime vs PyTorch, on real images and texts).

Verification is part of the export: images that ship inside scikit-image and pydicom (photos, fundus, histology, CT,
MR; no download) or ``verify_data``, and the texts of shipped prompt sets. An fp32 export whose difference exceeds
``1e-4`` is an error and the folder is removed. ``--quantize int8`` (ONNX Runtime dynamic quantisation of the
weights) writes the int8 graphs instead; their difference is recorded, not bounded: its cost in accuracy is measured
by ``benchmarks/onnx_export.py``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.models.onnx_graph import export_graph, onnx_modules, quiet
from medvlkit.models.onnx_model import FORMAT, VERSION

TOLERANCE = 1e-4
QUANTIZE = ("int8",)
DEFAULT_OPSET = 17
_VERIFY_PROMPT_SETS = ("pneumonia", "modality", "chest_xray_findings")


class _ImageTower(torch.nn.Module):
    def __init__(self, model: ModelBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


class _TextTower(torch.nn.Module):
    def __init__(self, model: ModelBase, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(dict(zip(self.keys, tokens)), normalize=True)


def verification_inputs(model: ModelBase, verify_data: Path | None = None, limit: int = 16) -> tuple[
        torch.Tensor, list[str]]:
    """Real images (preprocessed for ``model``) and texts that an export is checked on."""
    from medvlkit.data import load_dataset
    from medvlkit.data.prompts import load_prompt_set
    from medvlkit.engine.pixels import view_of

    with tempfile.TemporaryDirectory() as tmp:
        if verify_data is None:
            from medvlkit.tasks.demo import write_bundled_images

            write_bundled_images(Path(tmp))
            items = load_dataset(Path(tmp)).items
        else:
            items = load_dataset(verify_data).items
        pre = model.image_preprocessor
        pixels = pre.normalize(torch.stack([view_of(it, pre) for it in items[:limit]]))
    texts = []
    for name in _VERIFY_PROMPT_SETS:
        ps = load_prompt_set(name)
        texts += [t for c in ps.classes for t in ps.texts(c.positive)[:2]]
    return pixels, texts + ["", "a very long report " * 40]  # an empty text and one past the context length


def _max_diff(reference, exported, inputs, exported_inputs=None) -> float:
    """Max abs difference between the PyTorch and the ONNX Runtime unit embeddings of one batch."""
    with torch.no_grad():
        want = reference(inputs).float().numpy()
    got = exported(inputs if exported_inputs is None else exported_inputs).numpy()
    return float(np.abs(got - want).max())


def _check_quantize(quantize: str | None) -> None:
    if quantize not in (None, *QUANTIZE):
        raise MedvlkitError(f"--quantize {quantize}: valid options: {', '.join(QUANTIZE)}")


def _quantize(path: Path) -> None:
    """int8 weights for the matrix products (MatMul, Gemm): ONNX Runtime's dynamic quantisation. Convolutions stay
    fp32: quantised dynamically (ConvInteger) they made lite's embedding 0.41x as fast as PyTorch's on a 2-core CPU,
    where the fp32 graph is 4.8x (``benchmarks/onnx_export.py``)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    with quiet(logging.getLogger()):  # "consider pre-processing" advice on every call
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    out.replace(path)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # the fp32 weights the int8 graph no longer uses


def _check_exportable(model: ModelBase, out_dir: Path, quantize: str | None):
    """Refuse what cannot be exported faithfully; returns the model's tokenizer recipe."""
    model.require_text("ONNX export (it exports an image and a text graph)")
    onnx_modules()
    _check_quantize(quantize)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MedvlkitError(f"--out {out_dir} exists and is not empty; choose a new folder")
    if not model.trainable:
        raise MedvlkitError(f"'{model.name}' is already an ONNX export; export its source model "
                            f"({getattr(model, 'manifest', {}).get('source_spec')}) instead")
    if model.dtype != torch.float32:
        raise MedvlkitError("export from fp32 weights (--precision fp32); ONNX Runtime's own quantisation is "
                            "--quantize int8")
    recipe = model.token_recipe()
    if recipe is None or not hasattr(model, "tokenizer") or not hasattr(model.tokenizer, "save_pretrained"):
        raise MedvlkitError(f"model '{model.name}' tokenises with its own code, not a Hugging Face tokenizer: its "
                            "text tower cannot be exported yet")
    return recipe


def _compare(model: ModelBase, exported, pixels: torch.Tensor, texts: list[str], verify_data: Path | None) -> dict:
    """The largest difference between PyTorch's and the exported graphs' unit embeddings, over every batch shape
    the graphs were not traced with: all inputs at once, one alone, other token lengths."""
    image_batches = [pixels, pixels[:1]]
    text_batches = [texts, texts[:1], texts[-2:-1], texts[-1:]]
    return {"image_max_abs_diff": max(_max_diff(model.encode_image, exported.encode_image, b) for b in image_batches),
            "text_max_abs_diff": max(_max_diff(model.encode_text, exported.encode_text, model.tokenize(b),
                                               exported.tokenize(b)) for b in text_batches),
            "n_images": int(len(pixels)), "n_texts": len(texts),
            "images": "bundled demo images" if verify_data is None else str(verify_data)}


def export_onnx(model: ModelBase, out_dir: Path, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                verify_data: Path | None = None, spec: str | None = None) -> dict:
    """Export ``model``'s towers to ``out_dir`` and verify them (see the module docstring). Returns the manifest.

    Raises:
        MedvlkitError: no ONNX packages, a tokenizer the backend cannot reproduce, an exporter failure, an unknown
            ``quantize``, or (fp32) a difference over ``1e-4`` against PyTorch (the folder is then removed).
    """
    out_dir = Path(out_dir)
    recipe = _check_exportable(model, out_dir, quantize)
    model = model.eval().cpu()
    pixels, texts = verification_inputs(model, verify_data)
    tokens = model.tokenize(texts)
    with torch.no_grad():
        embed_dim = int(model.encode_text(model.tokenize(texts[:1])).shape[1])
    keys = tuple(tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            # wrappers in eval mode: an exporter restores the mode it found, recursively, into the model itself
            exporters = [export_graph(_ImageTower(model).eval(), (pixels[:2],), out_dir / "image.onnx", ["pixels"],
                                       {"pixels": {0: "batch"}}, opset),
                         export_graph(_TextTower(model, keys).eval(), tuple(tokens[k][:2] for k in keys),
                                       out_dir / "text.onnx", list(keys), {k: {0: "batch", 1: "tokens"} for k in keys},
                                       opset)]
        if quantize:
            _quantize(out_dir / "image.onnx")
            _quantize(out_dir / "text.onnx")
        tokenizer: Any = model.tokenizer  # a transformers tokenizer (checked by _check_exportable)
        tokenizer.save_pretrained(str(out_dir / "tokenizer"))
        bias = model.log_bias_param()
        manifest = {"format": FORMAT, "version": VERSION, "model": model.name, "source_spec": spec,
                    "source_fingerprint": model.fingerprint(), "embed_dim": embed_dim,
                    "logit_scale": float(model.logit_scale),
                    "logit_bias": None if bias is None else float(bias.detach()),
                    "validated_gate_threshold": model.validated_gate_threshold,
                    "validated_domain_thresholds": model.validated_domain_thresholds, "scope": model.scope,
                    "preprocess": model.preprocess_cfg.to_dict(), "tokenizer": recipe.to_dict() | {"keys": list(keys)},
                    "opset": opset, "exporters": dict(zip(("image", "text"), exporters)),
                    "quantize": quantize, "image": "image.onnx", "text": "text.onnx"}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        from medvlkit.models.onnx_model import load_onnx

        model.eval()
        diff = _compare(model, load_onnx(str(out_dir)), pixels, texts, verify_data)
        manifest["verification"] = diff | {"tolerance": None if quantize else TOLERANCE}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        worst = max(diff["image_max_abs_diff"], diff["text_max_abs_diff"])
        if not quantize and not worst <= TOLERANCE:
            raise MedvlkitError(f"the exported graphs differ from PyTorch by {worst:.2e} (max abs, unit embeddings; "
                                f"image {diff['image_max_abs_diff']:.2e}, text {diff['text_max_abs_diff']:.2e}), "
                                f"over {TOLERANCE:g}: export refused. Report the model and --opset")
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return manifest


def export_task(spec: str, out_dir: Path, fmt: str = "onnx", opset: int = DEFAULT_OPSET, quantize: str | None = None,
                verify_data: Path | None = None, run=None) -> dict:
    """The ``export`` task: load ``spec`` (fp32, CPU) and :func:`export_onnx` it. Returns the manifest."""
    from medvlkit.models import create_model
    from medvlkit.models.registry import absolute_spec

    if fmt != "onnx":
        raise MedvlkitError(f"--format {fmt}: valid options: onnx")
    _check_quantize(quantize)  # before the model is loaded
    kwargs = {"tokenizer": run.tokenizer} if run is not None and run.tokenizer else {}
    model = create_model(spec, device="cpu", precision="fp32", engine="torch", **kwargs)
    return export_onnx(model, out_dir, opset, quantize, verify_data, spec=absolute_spec(spec))
