"""``create_model(spec)`` and ``list_models()``: every backbone through one factory.

A spec is ``lite``, a preset name (``medvlkit models``), or ``<source>:<ref>`` where source is one of
``hf``, ``openai-ckpt``, ``open_clip``, ``biomedclip``, ``biovil``, ``medclip``, ``gloria``, ``ft``, ``onnx``. Sources
register themselves with :func:`register_source`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from medvlkit.errors import MedvlkitError
from medvlkit.models.presets import PRESETS, ModelPreset

if TYPE_CHECKING:
    from medvlkit.models.base import ModelBase

# Built-in sources by module path, imported when a spec needs them (listing models or printing --help stays fast).
_SOURCES: dict[str, Callable[..., ModelBase] | str] = {
    "lite": "medvlkit.models.lite:load_lite",
    "hf": "medvlkit.models.hf:load_hf",
    "openai-ckpt": "medvlkit.models.openai_ckpt:load_openai_ckpt",
    "open_clip": "medvlkit.models.open_clip:load_open_clip",
    "biomedclip": "medvlkit.models.biomedclip:load_biomedclip",
    "biovil": "medvlkit.models.biovil:load_biovil",
    "medclip": "medvlkit.models.medclip:load_medclip",
    "gloria": "medvlkit.models.gloria:load_gloria",
    "ft": "medvlkit.finetune.saved:load_finetuned",
    "onnx": "medvlkit.models.onnx_model:load_onnx",
}
WEIGHT_DTYPES = ("fp32", "fp16", "bf16")  # --precision: the dtype weights are cast to for inference
_TOKENIZER_SOURCES = ("openai-ckpt", "open_clip", "gloria")  # loaders that take tokenizer=DIR


def register_source(prefix: str) -> Callable[[Callable[..., ModelBase]], Callable[..., ModelBase]]:
    """Decorator: ``@register_source("hf")`` makes ``hf:<ref>`` specs call the decorated loader."""

    def wrap(fn: Callable[..., ModelBase]) -> Callable[..., ModelBase]:
        _SOURCES[prefix] = fn
        return fn

    return wrap


def absolute_spec(spec: str) -> str:
    """``spec`` with its path part made absolute (every source whose reference is a local file or folder), so a
    spec recorded in a run (``ft:DIR``'s base model) loads from any working directory. Presets and hub ids stay."""
    source, sep, ref = spec.partition(":")
    if sep and Path(ref).expanduser().exists():
        return f"{source}:{Path(ref).expanduser().resolve()}"
    return spec


def _loader(source: str) -> Callable[..., ModelBase]:
    fn = _SOURCES[source]
    if isinstance(fn, str):
        module, name = fn.split(":")
        fn = _SOURCES[source] = getattr(importlib.import_module(module), name)
    return fn


def torch_dtype(precision: str):
    """``fp32`` / ``fp16`` / ``bf16`` -> the torch dtype."""
    import torch

    if precision not in WEIGHT_DTYPES:
        raise MedvlkitError(f"--precision {precision}: valid options: {', '.join(WEIGHT_DTYPES)} (the weights' dtype; "
                            "mixed-precision training is finetune's --amp)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def models_dir() -> Path:
    """Where presets are looked for locally: ``$MEDVLKIT_MODELS`` or ``~/.cache/medvlkit/models``."""
    return Path(os.environ.get("MEDVLKIT_MODELS", Path.home() / ".cache" / "medvlkit" / "models")).expanduser()


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, mps or cpu, whichever exists; other names are checked. Under torchrun (``LOCAL_RANK``
    set, ``WORLD_SIZE`` > 1) ``auto`` and ``cuda`` mean this rank's own GPU, ``cuda:LOCAL_RANK``."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedvlkitError(f"--device {device}: no CUDA device is visible; use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise MedvlkitError(f"--device {device}: valid options are cpu, cuda, cuda:N, mps, auto")
    return device


def _resolve_preset(preset: ModelPreset) -> str:
    """A preset's spec pointing at its local copy: ``$MEDVLKIT_MODELS/<name>/<local_name>`` for presets whose weights
    are one file, the folder itself for the others. ``hf:`` presets fall back to their hub id (the local Hugging Face
    cache); a missing copy is an error naming the path and how to fetch it otherwise."""
    source, _, ref = preset.spec.partition(":")
    if source == "lite":
        return preset.spec
    local = models_dir() / preset.name
    target = local / preset.local_name if preset.local_name else local
    if target.exists() and (target.is_file() if preset.local_name else target.is_dir()):
        return f"{source}:{target}"
    if source == "hf" or "$MEDVLKIT_MODELS" not in ref:
        return preset.spec
    raise MedvlkitError(f"preset '{preset.name}' needs {target}; {preset.fetch}")


def create_model(spec: str = "lite", device: str = "cpu", precision: str = "fp32", **kwargs) -> ModelBase:
    """Build a model from a spec.

    Args:
        spec: ``lite``, a preset name, ``hf:<dir or hub id>``, ``openai-ckpt:<file>``, ``open_clip:<name>``.
        device: cpu, cuda, cuda:N, mps or auto.
        precision: fp32, fp16 or bf16.
        **kwargs: passed to the source's loader (e.g. ``tokenizer=DIR`` for openai-ckpt).

    Returns:
        A model in eval mode on ``device`` with ``encode_image``/``encode_text``/``tokenize``/``preprocess``.
    """
    dtype = torch_dtype(precision)
    device = resolve_device(device)
    preset = PRESETS.get(spec)
    if preset is not None:
        spec = _resolve_preset(preset)
    source, sep, ref = spec.partition(":")
    if source in _SOURCES and (sep or source == "lite"):
        if sep and not ref:
            raise MedvlkitError(f"model spec '{spec}' has nothing after '{source}:'; e.g. {source}:/path/to/model")
        loader = _loader(source)
        if "tokenizer" in kwargs and "tokenizer" not in inspect.signature(loader).parameters:
            raise MedvlkitError(f"--tokenizer applies to {', '.join(_TOKENIZER_SOURCES)} models; '{spec}' carries "
                                "its own tokenizer")
        model = loader(ref, device=device, dtype=dtype, **kwargs)
        if preset is not None and preset.preprocess is not None:  # the weights' own input size is kept
            model.set_preprocess(dataclasses.replace(preset.preprocess, image_size=model.preprocess_cfg.image_size))
        return model
    raise MedvlkitError(f"unknown model spec '{spec}'. Valid: a preset ({', '.join(PRESETS)}) or "
                        f"<source>:<ref> with source one of {', '.join(sorted(s for s in _SOURCES if s != 'lite'))}; "
                        "e.g. hf:/models/clip-vit-base-patch32")


def list_models(pattern: str = "*") -> list[ModelPreset]:
    """Registered presets whose name matches a shell pattern (``list_models("*clip*")``)."""
    return [p for name, p in PRESETS.items() if fnmatch.fnmatch(name, pattern)]
