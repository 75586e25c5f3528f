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

from medvlkit.errors import MedvlkitError
from medvlkit.finetune.lora import LoraSpec, add_lora, is_lora_param, load_lora_state_dict, lora_state_dict, merge_lora
from medvlkit.finetune.steps import ClassifierHead
from medvlkit.models.base import ModelBase

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


def read_meta(folder: Path) -> dict:
    meta_file = folder / META
    if not meta_file.is_file():
        raise MedvlkitError(f"ft:{folder}: no {META} there; pass the best/ folder of a `medvlkit finetune` run")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvlkitError(f"ft:{folder}: {META} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("base"), str):
        raise MedvlkitError(f"ft:{folder}: {META} must be an object naming its base model ('base'); was the folder "
                            "written by `medvlkit finetune`?")
    return meta


def apply_finetuned(model: ModelBase, folder: Path, meta: dict, merge: bool = True) -> ClassifierHead | None:
    """Insert the adapters of ``folder`` into ``model`` (its base), load every trained tensor, merge if asked.

    Returns:
        the classifier head when the run trained one.
    """
    from safetensors.torch import load_file

    if meta.get("lora"):
        add_lora(model, LoraSpec(**(meta["lora"] | {"targets": tuple(meta["lora"]["targets"])})),
                 meta["lora_layers"])
        load_lora_state_dict(model, load_file(str(folder / ADAPTER)))
    state = load_file(str(folder / TRAINED))
    head_state = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
    tower_state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    params = dict(model.named_parameters())
    unknown = [k for k in tower_state if k not in params]
    if unknown:
        raise MedvlkitError(f"ft:{folder}: trained tensors {unknown[:3]} do not exist in base model "
                            f"'{meta.get('base')}'; was the run made on another base?")
    with torch.no_grad():
        for k, v in tower_state.items():
            params[k].copy_(v.to(params[k].dtype))
    if merge and meta.get("lora"):
        merge_lora(model)
    head = None
    if head_state:
        w = head_state["linear.weight"]
        head = ClassifierHead(w.shape[1], w.shape[0]).to(model.device)
        head.load_state_dict(head_state)
    return head


def load_finetuned(ref: str, device: str = "cpu", dtype: torch.dtype = torch.float32, merge: bool = True) -> ModelBase:
    """``ft:DIR``: the base model of a fine-tuning run with its trained weights (adapters merged by default).

    The classifier head of a supervised run is attached as ``model.classifier`` with ``model.classnames``.
    """
    from medvlkit.models.registry import create_model

    folder = Path(ref).expanduser().resolve()
    meta = read_meta(folder)
    model = create_model(meta["base"], device=device)
    head = apply_finetuned(model, folder, meta, merge=merge)
    model.classifier, model.classnames, model.multilabel = head, meta.get("classnames"), meta.get("multilabel", False)
    model.name = f"ft:{folder}"
    model.validated_gate_threshold = None  # validated for the base weights, not for these
    model.weight_files = list(model.weight_files) + [str(folder / f) for f in (ADAPTER, TRAINED)
                                                      if (folder / f).exists()]
    return model.to(dtype=dtype).eval()
