"""``create_model(spec)`` and ``list_models()``: every backbone through one factory.

A spec is ``lite``, a preset name (``medvlkit models``), or ``<source>:<ref>`` where source is one of
``hf``, ``openai-ckpt``, ``open_clip``, ``biomedclip``, ``biovil``, ``medclip``, ``gloria``, ``pmc-clip``,
``flair``, ``conch``, ``unimed``, ``bmc``, ``ft``, ``onnx``. Sources register themselves with :func:`register_source`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvlkit.errors import MedvlkitError
from medvlkit.models.fast_tower import resolve_engine
from medvlkit.models.presets import PRESETS, ModelPreset

if TYPE_CHECKING:
    import torch

    from medvlkit.models.base import ModelBase
    from medvlkit.models.hub import Snapshot

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
    "pmc-clip": "medvlkit.models.pmc_clip:load_pmc_clip",
    "flair": "medvlkit.models.flair:load_flair",
    "conch": "medvlkit.models.conch:load_conch",
    "unimed": "medvlkit.models.unimed:load_unimed",
    "bmc": "medvlkit.models.bmc_clip:load_bmc",
    "ft": "medvlkit.tasks.finetune.saved:load_finetuned",
    "onnx": "medvlkit.models.onnx_model:load_onnx",
}
WEIGHT_DTYPES = ("fp32", "fp16", "bf16")  # --precision: the dtype weights are cast to for inference
# the loaders that take tokenizer=DIR
_TOKENIZER_SOURCES = ("openai-ckpt", "open_clip", "gloria", "pmc-clip", "flair", "conch", "unimed", "bmc")


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


def torch_dtype(precision: str) -> torch.dtype:
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


def _local_copy(preset: ModelPreset) -> Path | None:
    """``$MEDVLKIT_MODELS/<name>/<local_name>`` (a file) or ``$MEDVLKIT_MODELS/<name>`` (a folder), if present."""
    local = models_dir() / preset.name
    target = local / preset.local_name if preset.local_name else local
    return target if target.exists() and (target.is_file() if preset.local_name else target.is_dir()) else None


def _ships_with_medvlkit(preset: ModelPreset) -> bool:
    """``lite`` and its shipped versions (``lite@1``): weights inside the package, nothing to find or fetch."""
    return preset.spec == "lite" or preset.spec.startswith("lite@")


def _resolve_preset(preset: ModelPreset) -> str:
    """A preset's spec: its local copy in ``$MEDVLKIT_MODELS`` when there is one, else its hub repository
    (downloaded on first use, :mod:`medvlkit.models.hub`); a preset fetched by hand and not present is an error
    naming the path and the steps."""
    source, _, ref = preset.spec.partition(":")
    if _ships_with_medvlkit(preset):
        return preset.spec
    local = _local_copy(preset)
    if local is not None:
        return f"{source}:{local}"
    if preset.hub_id:
        return f"{source}:{preset.hub_id}"
    target = models_dir() / preset.name / preset.local_name
    raise MedvlkitError(f"preset '{preset.name}' needs {target}; {preset.fetch}")


def preset_status(preset: ModelPreset) -> str:
    """Where a preset's weights are on this machine, without touching the network: ``ships with medvlkit``,
    ``local copy``, ``in the hub cache``, ``downloads on first use`` or ``not on this machine``."""
    from medvlkit.models.hub import HubRef, cached

    if _ships_with_medvlkit(preset):
        return "ships with medvlkit"
    if _local_copy(preset) is not None:
        return f"local copy ({models_dir() / preset.name})"
    if preset.hub_id:
        return "in the hub cache" if cached(HubRef(preset.hub_id)) else "downloads on first use"
    return "not on this machine"


# the sources whose reference can be a hub id
_HUB_SOURCES = ("open_clip:hf-hub:", "hf:", "biomedclip:", "biovil:", "conch:", "bmc:")


def download(name: str) -> Snapshot:
    """Fetch a preset's hub repository, or a hub spec's (``hf:org/name[@revision]``, ``open_clip:hf-hub:...``,
    ``biomedclip:...``, ``biovil:...``, ``conch:...``, ``bmc:...``), into the Hugging Face cache, for a machine that
    goes offline later.

    Raises:
        MedvlkitError: a preset whose weights are fetched by hand (the steps are named), a spec that names no hub
            repository, or a failed download (see :func:`medvlkit.models.hub.fetch`).
    """
    from medvlkit.models.hub import HubRef, fetch

    preset = PRESETS.get(name)
    if preset is not None:
        if not preset.hub_id:
            raise MedvlkitError(f"preset '{name}' is not on a hub medvlkit downloads from; {preset.fetch}")
        source = preset.spec.partition(":")[0] + ":"
        return fetch(HubRef(preset.hub_id), source, f"medvlkit download {name}")
    prefix = next((p for p in _HUB_SOURCES if name.startswith(p)), None)
    hub = HubRef.parse(name[len(prefix):]) if prefix else None
    if prefix is None or hub is None:
        hub_presets = ", ".join(p for p in PRESETS if PRESETS[p].hub_id)
        raise MedvlkitError(f"medvlkit download {name}: give a preset ({hub_presets}) or a hub spec: "
                            "hf:org/name[@revision], open_clip:hf-hub:org/name, biomedclip:org/name, biovil:org/name, "
                            "conch:org/name, bmc:org/name")
    return fetch(hub, prefix)


def create_model(spec: str = "lite", device: str = "cpu", precision: str = "fp32", engine: str = "auto",
                 **kwargs: Any) -> ModelBase:
    """Build a model from a spec.

    Args:
        spec: ``lite`` (``lite@1``: its first version), a preset name, ``hf:<dir or hub id>``,
            ``openai-ckpt:<file>``, ``open_clip:<name>``.
        device: cpu, cuda, cuda:N, mps or auto.
        precision: fp32, fp16 or bf16.
        engine: what computes the image tower: ``auto`` (ONNX Runtime where the model offers it, on a CPU in fp32,
            with the ``onnx`` extra: ``lite``), ``torch``, or ``onnx`` (refused for models that do not offer it).
            See :mod:`medvlkit.models.fast_tower`.
        **kwargs: passed to the source's loader (e.g. ``tokenizer=DIR`` for openai-ckpt).

    Returns:
        A model in eval mode on ``device`` with ``encode_image``/``encode_text``/``tokenize``/``preprocess``.
    """
    dtype = torch_dtype(precision)
    device = resolve_device(device)
    resolve_engine(engine, device, dtype)  # checked before any weights are read
    preset = PRESETS.get(spec)
    if preset is not None:
        spec = _resolve_preset(preset)
    source, sep, ref = spec.partition(":")
    if source.startswith("lite@") and not sep:  # a shipped version of lite by name: lite@1
        source, sep, ref = "lite", ":", "@" + source[len("lite@"):]
    if source in _SOURCES and (sep or source == "lite"):
        if sep and not ref:
            raise MedvlkitError(f"model spec '{spec}' has nothing after '{source}:'; e.g. {source}:/path/to/model")
        loader = _loader(source)
        if "tokenizer" in kwargs and "tokenizer" not in inspect.signature(loader).parameters:
            raise MedvlkitError(f"--tokenizer applies to {', '.join(_TOKENIZER_SOURCES)} models; '{spec}' carries "
                                "its own tokenizer")
        if "engine" in inspect.signature(loader).parameters:
            kwargs["engine"] = engine
        elif engine == "onnx":
            raise MedvlkitError(f"--engine onnx: '{spec}' runs on PyTorch only (lite offers ONNX Runtime); export it "
                                "with `medvlkit export --model SPEC --format onnx --out DIR` and use --model onnx:DIR")
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
