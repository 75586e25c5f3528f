"""Options of one fine-tuning run (all recorded in ``out_dir/config.json``; ``--resume`` reads them back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from medvlkit.errors import MedvlkitError

MODES = ("contrastive", "supervised", "prompt_ce")
NO_VALIDATION = "none"  # val_split: a fixed recipe, the last epoch kept (CLIP-LoRA's few-shot recipe)
FREEZE = ("none", "vision", "text")
AMP = ("auto", "fp32", "bf16", "fp16")


@dataclass
class FinetuneConfig:
    """What to train, on what, and how.

    Attributes:
        model: base model spec (``lite``, ``hf:DIR``...).
        data: dataset path; ``format``: adapter name or auto; ``dataset_options``: adapter options
            (``path_column``, ``label_columns``, ``uncertain``, ``image_root``).
        out_dir: checkpoints, the best model (``best/``), history and results.
        mode: ``contrastive`` (image-caption InfoNCE; template captions from labels when the data has none),
            ``supervised`` (a linear classification head on the image embedding; CE or BCE) or ``prompt_ce``
            (CLIP-LoRA's loss: cross-entropy of each image over the class embeddings of ``prompts``, both towers in
            the graph; single-label data).
        prompts: ``prompt_ce``'s prompt set (a name or file; ``classes``: generic prompts of the class names; None:
            the phrasings contrastive fine-tuning uses). Its validation scores zero-shot with the same set.
        shots: train on K seeded images per class of the training split (0: all of it).
        lora: ``--lora`` text (``r=4,alpha=16,dropout=0.1,targets=...``); None: full fine-tuning.
        freeze: ``vision`` or ``text`` keeps that tower (and its head) fixed; ``none`` trains both.
        train_split, val_split: splits to train on and to choose the best epoch on; without a val split a
            seeded ``val_fraction`` of the training groups (``group_pattern``: patient id regex) is held out
            (``val_split="holdout"`` forces this even when a val split exists; ``"none"``: no validation, a fixed
            length, the last epoch is the model kept).
        epochs, max_steps: training length (``max_steps`` > 0 stops earlier); ``patience``: epochs without a better
            validation score before stopping.
        batch_size: global batch (summed over ranks); ``grad_cache``: chunk size for GradCache (0: off).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        lr: learning rate of the towers/adapters (None: 2e-4 with LoRA, 1e-5 full); ``head_lr``: classifier head
            and temperature; ``weight_decay``; ``warmup``: linear warm-up steps before the cosine decay.
        class_weight: ``balanced`` gives BCE per-class positive weights (negatives/positives) and CE inverse
            frequency weights; ``none`` leaves the loss unweighted.
        amp: mixed-precision training, the autocast dtype (weights stay fp32): ``auto`` (bf16, else fp16 with a
            loss scaler, on CUDA; off on CPU), ``fp32`` (off), ``bf16``, ``fp16``. Not the weights' dtype, which
            inference verbs call ``precision``.
        save_every: steps between checkpoints (also written at every epoch end and on Ctrl-C).
        max_val: validation images used per evaluation (0: all).
    """

    model: str = "lite"
    data: str = ""
    format: str = "auto"
    dataset_options: dict = field(default_factory=dict)
    out_dir: str = ""
    mode: str = "contrastive"
    prompts: str | None = None
    shots: int = 0
    lora: str | None = None
    freeze: str = "none"
    train_split: str = "train"
    val_split: str | None = None
    val_fraction: float = 0.1
    group_pattern: str | None = None
    epochs: int = 5
    max_steps: int = 0
    patience: int = 3
    batch_size: int = 32
    grad_cache: int = 0
    lr: float | None = None
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    warmup: int = 50
    class_weight: str = "balanced"
    amp: str = "auto"
    save_every: int = 100
    max_val: int = 0
    device: str = "auto"
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MedvlkitError(f"--mode {self.mode}: valid options: {', '.join(MODES)}")
        if self.freeze not in FREEZE:
            raise MedvlkitError(f"--freeze {self.freeze}: valid options: {', '.join(FREEZE)}")
        if self.amp not in AMP:
            raise MedvlkitError(f"--amp {self.amp}: valid options: {', '.join(AMP)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise MedvlkitError(f"--optimizer {self.optimizer}: valid options: adamw, sgd")
        if self.class_weight not in ("balanced", "none"):
            raise MedvlkitError(f"--class-weight {self.class_weight}: valid options: balanced, none")
        for name in ("epochs", "batch_size", "save_every"):
            if getattr(self, name) <= 0:
                raise MedvlkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.mode == "contrastive" and self.batch_size < 2:
            raise MedvlkitError("--batch-size must be at least 2 for a contrastive loss")
        if self.shots < 0:
            raise MedvlkitError(f"--shots {self.shots}: must be >= 0 (0: the whole training split)")
        if self.prompts is not None and self.mode != "prompt_ce":
            raise MedvlkitError("--prompts goes with --mode prompt_ce (the classes its cross-entropy runs over)")
        if self.grad_cache < 0 or self.max_steps < 0 or self.warmup < 0 or self.max_val < 0:
            raise MedvlkitError("--grad-cache, --max-steps, --warmup and --max-val must be >= 0")
        from medvlkit.engine.options import DataOptions

        unknown = set(self.dataset_options) - set(DataOptions.__dataclass_fields__) - {"format"}
        if unknown:
            raise MedvlkitError(f"dataset_options {sorted(unknown)}: valid keys: "
                                f"{', '.join(k for k in DataOptions.__dataclass_fields__ if k != 'format')}")
        if self.lr is not None and self.lr <= 0:
            raise MedvlkitError(f"--lr {self.lr} must be positive")

    @property
    def tower_lr(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 1e-5)

    def to_dict(self) -> dict:
        return asdict(self)
