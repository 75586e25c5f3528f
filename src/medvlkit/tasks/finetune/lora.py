"""LoRA adapters (through peft) on any medvlkit model: parse ``--lora``, pick target layers by tower, save the
adapter weights on their own, and merge them into the base weights for inference."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase

logger = logging.getLogger(__name__)
_LORA_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters.

    Attributes:
        r: rank of the update.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        targets: module-name suffixes to adapt (``q_proj``...); empty: the model's ``default_lora_targets``.
    """

    r: int = 4
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise MedvlkitError(f"--lora r={self.r} alpha={self.alpha} dropout={self.dropout}: need r > 0, alpha > 0, "
                                "0 <= dropout < 1")

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``"r=4,alpha=16,dropout=0.1,targets=q_proj,v_proj"`` (every key optional; ``""`` or ``"default"``: defaults).

        Raises:
            MedvlkitError: an unknown key or a value that is not a number, naming the valid keys.
        """
        values: dict[str, float] = {}
        targets: list[str] = []
        key = None
        for token in filter(None, (t.strip() for t in text.split(","))):
            if token == "default":
                continue
            if "=" in token:
                key, _, value = token.partition("=")
                key = key.strip()
                if key not in ("r", "alpha", "dropout", "targets"):
                    raise MedvlkitError(f"--lora {text}: unknown key '{key}'; valid keys: r, alpha, dropout, targets "
                                        "(e.g. r=4,alpha=16,dropout=0.1,targets=q_proj,v_proj,fc1,fc2)")
                if key == "targets":
                    targets[:] = [value.strip()] if value.strip() else []
                    continue
                try:
                    values[key] = int(value) if key == "r" else float(value)
                except ValueError:
                    raise MedvlkitError(f"--lora {text}: {key}={value} is not a number") from None
            elif key == "targets":
                targets.append(token)
            else:
                raise MedvlkitError(f"--lora {text}: '{token}' has no key; write key=value pairs")
        return cls(r=int(values.get("r", cls.r)), alpha=values.get("alpha", cls.alpha),
                   dropout=values.get("dropout", cls.dropout), targets=tuple(targets))

    def to_dict(self) -> dict:
        return asdict(self) | {"targets": list(self.targets)}


def target_names(model: nn.Module, suffixes: tuple[str, ...], within: list[nn.Module]) -> list[str]:
    """Full names of the Linear/Conv2d modules of ``model`` inside ``within`` whose name ends with a suffix.

    The ``out_proj`` of torch's ``nn.MultiheadAttention`` is never a candidate: the attention reads its weight
    directly instead of calling it, so an adapter there would train and save but never change an output.

    Raises:
        MedvlkitError: nothing matches, listing the layer names that could be targeted.
    """
    inside = {id(m) for root in within for m in root.modules()}
    unused = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    if unused & inside:
        logger.info("LoRA: %d out_proj layers inside torch's MultiheadAttention are left out (it reads their weights "
                    "directly: an adapter there would have no effect)", len(unused & inside))
    candidates = [(n, m) for n, m in model.named_modules()
                  if id(m) in inside and id(m) not in unused and isinstance(m, _LORA_TYPES)]
    names = [n for n, _ in candidates if any(n == s or n.endswith("." + s) for s in suffixes)]
    if not names:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, _ in candidates})
        raise MedvlkitError(f"--lora targets={','.join(suffixes)} match no Linear/Conv2d layer of the trainable "
                            f"towers; layer names there: {', '.join(leaves[:30])}")
    return names


def add_lora(model: nn.Module, spec: LoraSpec, names: list[str]) -> int:
    """Insert LoRA adapters (peft) into the named layers, in place. Returns the number of adapter parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    alpha: Any = spec.alpha  # peft annotates lora_alpha as int; it scales by alpha / r, floats included
    config = LoraConfig(r=spec.r, lora_alpha=alpha, lora_dropout=spec.dropout, target_modules=names)
    inject_adapter_in_model(config, model)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def check_adapters_act(model: ModelBase, names: list[str]) -> None:
    """Run one blank image (and one text, where the model has a text tower) through ``model`` with a hook on every
    adapted layer, and refuse a layer the forward never calls: an adapter there (a projection whose weight a
    functional attention reads directly, say) would train and be saved without ever changing an output.

    Raises:
        MedvlkitError: adapted layers the forward never calls, named.
    """
    called: set[str] = set()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: called.add(n)) for n in names]
    try:
        with torch.no_grad():
            side = model.preprocess_cfg.image_size
            model.encode_image(torch.zeros(1, 3, side, side, device=model.device, dtype=model.dtype))
            if model.has_text:
                model.encode_text(model.tokenize(["a"]))
    finally:
        for hook in hooks:
            hook.remove()
    idle = [n for n in names if n not in called]
    if idle:
        raise MedvlkitError(f"--lora: {len(idle)} of the targeted layers never run as modules in this model "
                            f"({', '.join(idle[:3])}{'...' if len(idle) > 3 else ''}): adapters there would train and "
                            "be saved without changing any output; choose other layers with --lora targets=...")


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone (peft's naming, without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights written by :func:`lora_state_dict` into a model that :func:`add_lora` prepared.

    Raises:
        MedvlkitError: adapter tensors that the model has no place for.
    """
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise MedvlkitError(f"adapter weights do not fit this model: {unexpected[:3]}... (was it trained on another "
                            "base model or other targets?)")


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base layer and remove the adapters (inference runs at base speed).

    Returns:
        the number of layers merged.
    """
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged
