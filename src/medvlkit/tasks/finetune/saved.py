"""A fine-tuned model on disk, and ``create_model("ft:DIR")`` to load it.

``DIR`` holds ``finetune.json`` (base model spec, LoRA settings and target layers, classifier classes),
``adapter.safetensors`` (the LoRA weights alone, peft naming; only with LoRA; also written as peft's own
``adapter_config.json`` + ``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained`` reads onto the base
model) and ``trained.safetensors`` (every
other trained tensor: full fine-tuned tower weights, ``lite``'s projection heads, the temperature, the
classifier head as ``classifier.*``). Loading rebuilds the base model, inserts the adapters, loads both files and
by default merges the adapters into the base weights, so inference runs at the base model's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medvlkit.artifacts import check_shapes, read_json_object, read_safetensors
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.tasks.finetune.lora import (
    LoraSpec,
    add_lora,
    is_lora_param,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from medvlkit.tasks.finetune.steps import ClassifierHead

META, ADAPTER, TRAINED = "finetune.json", "adapter.safetensors", "trained.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # peft's own file names


def save_finetuned(model: ModelBase, out: Path, meta: dict, head: ClassifierHead | None = None) -> None:
    """Write the trained part of ``model`` (and ``head``) to ``out`` atomically (temporary names, then renames).

    Args:
        meta: ``base`` (spec), ``lora`` (LoraSpec dict or None), ``lora_layers`` (names), ``mode``, ``classnames``,
            ``multilabel``; written as ``finetune.json`` with the list of trained tensors.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    trained = {n: p.detach().cpu().float().contiguous() for n, p in model.named_parameters()
               if p.requires_grad and not is_lora_param(n)}
    if head is not None:
        trained |= {f"classifier.{k}": v.detach().cpu().float().contiguous() for k, v in head.state_dict().items()}
    files = {TRAINED: trained}
    texts = {META: json.dumps(meta | {"trained": sorted(trained)}, indent=1) + "\n"}
    if meta.get("lora"):
        adapter = {k: v.float() for k, v in lora_state_dict(model).items()}
        files[ADAPTER] = adapter
        # the same adapter as peft's own PeftModel.save_pretrained lays it out, so PeftModel.from_pretrained(base
        # model, this folder) reads it without medvlkit
        files[PEFT_WEIGHTS] = {f"base_model.model.{k}": v for k, v in adapter.items()}
        texts[PEFT_CONFIG] = json.dumps(_peft_config(meta), indent=1) + "\n"
    for name, tensors in files.items():
        save_file(tensors, str(out / (name + ".tmp")))
    for name, text in texts.items():
        (out / (name + ".tmp")).write_text(text)
    for name in [*files, *texts]:
        (out / (name + ".tmp")).replace(out / name)
    if not meta.get("lora"):
        for name in (ADAPTER, PEFT_WEIGHTS, PEFT_CONFIG):
            if (out / name).exists():
                (out / name).unlink()


def _peft_config(meta: dict) -> dict:
    """peft's ``adapter_config.json`` for the LoRA layers of ``meta`` (targets named in full)."""
    from peft import LoraConfig

    lora = meta["lora"]
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=list(meta["lora_layers"]))
    out = config.to_dict()
    out["base_model_name_or_path"] = meta.get("base")
    return json.loads(json.dumps(out, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


_KIND = "fine-tuned model folder (best/ of a `medvlkit finetune` run)"
_LOADING: set[Path] = set()  # ft: folders being loaded now: a base naming one of them would loop for ever


def read_meta(folder: Path) -> dict:
    """``finetune.json`` of a fine-tuned folder, checked: the base spec, the LoRA settings and layer names, the
    classifier's classes.

    Raises:
        MedvlkitError: missing, malformed, or a field of another type, in one line naming the file and the field.
    """
    from medvlkit.artifacts import json_field, positive_number, string_list

    meta_file = folder / META
    if not meta_file.is_file():
        raise MedvlkitError(f"ft:{folder}: no {META} there; pass the best/ folder of a `medvlkit finetune` run")
    meta = read_json_object(meta_file, _KIND)
    json_field(meta, "base", str, meta_file, _KIND, check=bool, expected="the base model's spec")
    lora = json_field(meta, "lora", (dict, type(None)), meta_file, _KIND, required=False, expected="an object or null")
    if lora is not None:
        unknown = sorted(set(lora) - {"r", "alpha", "dropout", "targets"})
        if unknown:
            raise MedvlkitError(f"{meta_file}: not a valid {_KIND} ('lora' has unknown key(s) {unknown}; valid: r, "
                                "alpha, dropout, targets)")
        json_field(lora, "r", int, meta_file, _KIND, check=lambda v: v > 0, expected="a positive integer (lora.r)")
        json_field(lora, "alpha", (int, float), meta_file, _KIND, check=positive_number,
                   expected="a positive number (lora.alpha)")
        json_field(lora, "dropout", (int, float), meta_file, _KIND, check=lambda v: 0 <= v < 1,
                   expected="a number in [0, 1) (lora.dropout)")
        json_field(lora, "targets", list, meta_file, _KIND, check=string_list, expected="a list of layer names")
        json_field(meta, "lora_layers", list, meta_file, _KIND, check=lambda v: string_list(v) and len(v) > 0,
                   expected="the names of the adapted layers")
    json_field(meta, "classnames", (list, type(None)), meta_file, _KIND, required=False,
               check=lambda v: v is None or string_list(v), expected="a list of class names or null")
    json_field(meta, "multilabel", bool, meta_file, _KIND, required=False)
    return meta


def apply_finetuned(model: ModelBase, folder: Path, meta: dict, merge: bool = True) -> ClassifierHead | None:
    """Insert the adapters of ``folder`` into ``model`` (its base), load every trained tensor, merge if asked.

    Returns:
        the classifier head when the run trained one.

    Raises:
        MedvlkitError: adapted layers the base lacks, unreadable tensor files, tensors of other shapes than the
            base's, or a classifier head that is incomplete or does not fit, in one line naming the file.
    """
    if meta.get("lora"):
        layers = set(dict(model.named_modules()))
        missing = [n for n in meta["lora_layers"] if n not in layers]
        if missing:
            raise MedvlkitError(f"{folder / META}: adapted layer(s) {missing[:3]} do not exist in base model "
                                f"'{meta['base']}'; was the run made on another base?")
        add_lora(model, LoraSpec(**(meta["lora"] | {"targets": tuple(meta["lora"]["targets"])})),
                 meta["lora_layers"])
        adapter = read_safetensors(folder / ADAPTER, _KIND)
        check_shapes(adapter, _lora_shapes(model), folder / ADAPTER, _KIND)
        load_lora_state_dict(model, adapter)
    state = read_safetensors(folder / TRAINED, _KIND)
    head_state = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
    tower_state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    params = dict(model.named_parameters())
    unknown = [k for k in tower_state if k not in params]
    if unknown:
        raise MedvlkitError(f"ft:{folder}: trained tensors {unknown[:3]} do not exist in base model "
                            f"'{meta.get('base')}'; was the run made on another base?")
    check_shapes(tower_state, {k: p.shape for k, p in params.items()}, folder / TRAINED, _KIND)
    with torch.no_grad():
        for k, v in tower_state.items():
            params[k].copy_(v.to(params[k].dtype))
    if merge and meta.get("lora"):
        merge_lora(model)
    return _head(head_state, folder, meta, model) if head_state else None


def _lora_shapes(model: ModelBase) -> dict[str, tuple]:
    """The adapter tensors' shapes in the naming of :func:`lora_state_dict`."""
    return {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}


def _head(state: dict, folder: Path, meta: dict, model: ModelBase) -> ClassifierHead:
    """The classifier head of a supervised run: a (C, D) weight and a (C,) bias, C its classes, D the model's."""
    weight, bias = state.get("linear.weight"), state.get("linear.bias")
    classes = meta.get("classnames") or []
    if weight is None or bias is None or weight.ndim != 2 or tuple(bias.shape) != (weight.shape[0],) or \
            weight.shape[0] != len(classes) or (model.embed_dim and weight.shape[1] != model.embed_dim):
        raise MedvlkitError(f"{folder / TRAINED}: not a valid {_KIND} (its classifier needs linear.weight "
                            f"({len(classes)}, {model.embed_dim or 'D'}) and linear.bias ({len(classes)},) for the "
                            f"classes {classes}; found {None if weight is None else list(weight.shape)} and "
                            f"{None if bias is None else list(bias.shape)})")
    head = ClassifierHead(weight.shape[1], weight.shape[0]).to(model.device)
    head.load_state_dict({"linear.weight": weight, "linear.bias": bias})
    return head


def load_finetuned(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32, merge: bool = True) -> ModelBase:
    """``ft:DIR``: the base model of a fine-tuning run with its trained weights (adapters merged by default).

    The classifier head of a supervised run is attached as ``model.classifier`` with ``model.classnames``.
    """
    from medvlkit.models.registry import create_model

    folder = Path(ref).expanduser().resolve()
    meta = read_meta(folder)
    if folder in _LOADING:
        raise MedvlkitError(f"{folder / META}: its base model '{meta['base']}' leads back to this folder; a "
                            "fine-tuned model's base must be another model")
    _LOADING.add(folder)
    try:
        model = create_model(meta["base"], device=device)
    finally:
        _LOADING.discard(folder)
    head = apply_finetuned(model, folder, meta, merge=merge)
    model.classifier, model.classnames, model.multilabel = head, meta.get("classnames"), meta.get("multilabel", False)
    model.name = f"ft:{folder}"
    model.validated_gate_threshold = None  # validated for the base weights, not for these
    model.validated_domain_thresholds = None
    model.weight_files = list(model.weight_files) + [str(folder / f) for f in (ADAPTER, TRAINED)
                                                      if (folder / f).exists()]
    return model.to(dtype=dtype).eval()
