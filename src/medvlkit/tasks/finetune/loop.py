"""``medvlkit finetune``: contrastive (full / LoRA / frozen tower, GradCache) and supervised (CE / BCE head)
fine-tuning, on one process or under ``torchrun``, as a job of the one training loop (``medvlkit/engine/training.py``).

A run directory holds ``config.json``, ``checkpoint.pt`` (written atomically every ``save_every`` steps, at each
epoch end and on Ctrl-C; ``resume=True`` continues from it, batch for batch), ``best/`` (the model with the best
validation score, loadable as ``ft:<run>/best``), ``history.json`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlkit.data.dataset import ImageDataset
from medvlkit.engine.distributed import World, barrier, gather_objects, init_world, reduce_gradients, reduce_mean
from medvlkit.engine.losses import pair_targets
from medvlkit.engine.training import Job, LoopOptions, fit, open_run
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.models.registry import absolute_spec
from medvlkit.tasks.finetune.config import NO_VALIDATION, FinetuneConfig
from medvlkit.tasks.finetune.data import batch_loader, caption_pools, epoch_batches, pick_captions
from medvlkit.tasks.finetune.evaluation import validation_score
from medvlkit.tasks.finetune.lora import LoraSpec, add_lora, check_adapters_act, is_lora_param, target_names
from medvlkit.tasks.finetune.saved import save_finetuned
from medvlkit.tasks.finetune.steps import (
    ClassifierHead,
    class_weights,
    contrastive_step,
    prompt_ce_step,
    supervised_count,
    supervised_step,
)

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A model made ready for training: what trains, and how it is described on disk."""

    model: ModelBase
    head: ClassifierHead | None
    meta: dict
    n_trainable: int


def prepare_model(model: ModelBase, cfg: FinetuneConfig, classnames: list[str] | None = None,
                  multilabel: bool = False) -> Prepared:
    """Freeze, insert LoRA adapters, add a classifier head, as ``cfg`` says. Modifies ``model`` in place.

    Raises:
        MedvlkitError: nothing would train, or the LoRA targets match no layer.
    """
    if cfg.mode in ("contrastive", "prompt_ce"):
        model.require_text(f"{cfg.mode} fine-tuning (use --mode supervised: a classifier head)")
    towers, heads = model.tower_modules(), model.head_modules()
    trainable = [t for t in ("vision", "text") if t != cfg.freeze]
    if cfg.mode == "supervised":
        trainable = [t for t in trainable if t == "vision"]  # the text tower plays no part in a classifier
    for p in model.parameters():
        p.requires_grad_(False)
    meta: dict[str, Any] = {"base": absolute_spec(cfg.model), "mode": cfg.mode, "lora": None, "lora_layers": [],
            "freeze": cfg.freeze, "classnames": classnames, "multilabel": multilabel}
    if cfg.lora is not None:
        spec = LoraSpec.parse(cfg.lora)
        suffixes = spec.targets or tuple(model.default_lora_targets)
        if trainable:
            names = target_names(model, suffixes, [m for t in trainable for m in towers[t]])
            add_lora(model, spec, names)
            check_adapters_act(model, names)
            for n, p in model.named_parameters():
                p.requires_grad_(is_lora_param(n))
            meta |= {"lora": spec.to_dict() | {"targets": list(suffixes)}, "lora_layers": names}
        for t in trainable:
            for m in heads[t]:
                m.requires_grad_(True)
    else:
        for t in trainable:
            for m in towers[t] + heads[t]:
                m.requires_grad_(True)
    if cfg.mode == "prompt_ce" and not trainable:
        raise MedvlkitError("--freeze leaves nothing to train")
    if cfg.mode == "contrastive":
        if not trainable:
            raise MedvlkitError("--freeze leaves nothing to train in contrastive mode")
        model.log_scale_param().requires_grad_(True)
        bias = model.log_bias_param()
        if bias is not None:
            bias.requires_grad_(True)
    head = None
    if cfg.mode == "supervised":
        head = ClassifierHead(model.embed_dim, len(classnames or [])).to(model.device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) + (
        sum(p.numel() for p in head.parameters()) if head else 0)
    return Prepared(model, head, meta, n_trainable)


def set_train_mode(model: ModelBase, head: ClassifierHead | None) -> None:
    """Training mode (dropout on), except batch-norm statistics stay frozen: small fine-tuning batches would
    corrupt the pretrained running means."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    if head is not None:
        head.train()


def _autocast(amp: str, device: str):
    """(autocast factory, GradScaler or None) for an ``--amp`` value and device."""
    if amp == "auto":
        if not device.startswith("cuda"):
            amp = "fp32"
        else:
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(dev_type) if amp == "fp16" else None
    return (lambda: torch.autocast(dev_type, dtype=dtype)), scaler


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def split_train_val(cfg: FinetuneConfig, model=None, progress: bool = True
                    ) -> tuple[ImageDataset, ImageDataset | None]:
    """The training data (``cfg.shots`` seeded images per class of it, when given) and the validation data (see
    ``data/splits.py``: a val split, or a seeded, patient-level held-out part of train; None for
    ``val_split="none"``). With ``model``, validation holds no image the model was trained on
    (:meth:`DataOptions.held_out`; held out of train, those go back to train), unless ``--allow-seen``; the record
    is in ``val.meta["seen_by_model"]``.

    Raises:
        MedvlkitError: ``shots`` on data without single labels, or more shots than a class has.
    """
    from medvlkit.data.splits import few_shot_indices, holdout_indices, load_train, load_val
    from medvlkit.engine.options import DataOptions

    opts = DataOptions(format=cfg.format, **cfg.dataset_options)
    embed: dict[str, Any] = {"num_workers": cfg.workers, "progress": progress}
    train = load_train(cfg.data, opts, cfg.train_split)
    if cfg.shots:
        if not train.has_labels or train.multilabel:
            raise MedvlkitError(f"--shots needs single-label training data; '{train.name}' has "
                                f"{'several labels per image' if train.has_labels else 'no labels'}")
        train = train.subset(few_shot_indices(train.label_matrix, cfg.shots, cfg.seed))
    if cfg.val_split == NO_VALIDATION:
        return train, None
    val = load_val(cfg.data, opts, cfg.val_split)
    if val is not None:
        return train, val if model is None else opts.held_out(val, model, "val", **embed)
    labels = train.label_matrix if train.has_labels else np.zeros((len(train), 1), np.float32)
    tr, va = holdout_indices(train.items, labels, cfg.val_fraction, cfg.seed, cfg.group_pattern, train.groups)
    seen = None
    if model is not None:
        tr, va, seen = opts.holdout_unseen(train, model, train.items, tr, va, **embed)
    val = train.subset(va)
    if seen is not None:
        val.meta = dict(val.meta) | {"seen_by_model": seen}
    return train.subset(tr), val


def check_validation_scorable(val: ImageDataset | None, mode: str) -> None:
    """Validation scored by AUROC (supervised, or contrastive on labelled data) needs a class with both positive and
    negative images; refused at the start, not after an epoch whose score would be NaN.

    Raises:
        MedvlkitError: no class of the validation data has both.
    """
    if val is None or (mode == "contrastive" and val.texts) or not val.has_labels:
        return
    y = val.label_matrix
    known = ~np.isnan(y)
    both = [c for c in range(y.shape[1]) if (y[known[:, c], c] == 1).any() and (y[known[:, c], c] == 0).any()]
    if not both:
        present = sorted({val.classnames[c] for c in range(y.shape[1]) if (y[:, c] == 1).any()})
        raise MedvlkitError(f"the validation data ({len(val)} images) holds only {present or 'no'} positives: no class "
                            "has both positive and negative images, so its AUROC (the score that picks the best "
                            "epoch) is undefined. Use a validation split with several classes (--val-split holdout "
                            "holds out a stratified part of train)")


class FinetuneJob(Job[list[int]]):
    """Fine-tuning as a :class:`~medvlkit.engine.training.Job`: the seeded batch plan of ``finetune/data.py``, one
    contrastive or supervised step per batch, gradients summed over torchrun ranks, validation on rank 0."""

    def __init__(self, cfg: FinetuneConfig, prep: Prepared, train_ds: ImageDataset, val_ds: ImageDataset | None,
                 world: World, out: Path, progress: bool) -> None:
        model, head = prep.model, prep.head
        self.cfg, self.prep, self.model, self.head = cfg, prep, model, head
        self.train_ds, self.val_ds, self.world, self.out, self.progress = train_ds, val_ds, world, out, progress
        self.device = model.device
        self.pools, self.groups = caption_pools(train_ds) if cfg.mode == "contrastive" else ([], [])
        # a supervised run has labels (checked by the task); a contrastive one may have none
        self.labels = torch.from_numpy(train_ds.label_matrix) if train_ds.has_labels else torch.empty(0)
        self.weights: torch.Tensor | None = None
        self.prompts = training_prompts(cfg, train_ds) if cfg.mode == "prompt_ce" else None
        if self.prompts is not None:  # every class's prompts, tokenized once; owner: the class of each prompt
            texts = [(c, t) for c, cls in enumerate(self.prompts.classes) for t in self.prompts.texts(cls.positive)]
            self.class_tokens = model.tokenize([t for _, t in texts])
            self.owner = torch.tensor([c for c, _ in texts], device=model.device)
        if cfg.mode == "supervised" and cfg.class_weight == "balanced":
            self.weights = class_weights(self.labels, train_ds.multilabel).to(model.device)
        loss_params = [p for p in (model.log_scale_param(), model.log_bias_param()) if p is not None] \
            if cfg.mode == "contrastive" else []
        tower = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in loss_params)]
        heads = loss_params + (list(head.parameters()) if head else [])
        groups = [g for g in ({"params": tower, "lr": cfg.tower_lr},
                              {"params": heads, "lr": cfg.head_lr, "weight_decay": 0.0}) if g["params"]]
        self.optimizer = (torch.optim.AdamW(groups, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw" else
                          torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay))
        self.total_steps = cfg.epochs * len(self.epoch_batches(0))
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(min(cfg.warmup, self.total_steps // 10), self.total_steps))
        self.autocast, self.scaler = _autocast(cfg.amp, str(model.device))
        self.params = tower + heads
        self.replicated = {id(p) for p in loss_params}  # computed in full on every rank: averaged, not summed

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(len(self.train_ds), self.cfg.batch_size, self.cfg.seed, epoch)

    def load_batches(self, plan: list[list[int]], epoch: int):
        # the loader draws its seed from its own generator, never from the global RNG that dropout uses, so a
        # resumed run's dropout masks equal the uninterrupted run's
        return batch_loader(self.train_ds, self.model.image_preprocessor, [self.world.shard(b) for b in plan],
                            self.cfg.workers, seed=self.cfg.seed + epoch, pin_memory=self.device.type == "cuda")

    def train_mode(self) -> None:
        set_train_mode(self.model, self.head)

    def train_step(self, planned: list[int], batch, epoch: int) -> float:
        idx, pixels, _ = batch
        model, cfg, world = self.model, self.cfg, self.world
        pixels = model.image_preprocessor.normalize(pixels.to(self.device, non_blocking=True))
        scale = self.scaler.scale if self.scaler else (lambda x: x)
        if cfg.mode == "contrastive":
            captions = pick_captions(self.pools, planned, cfg.seed, epoch)
            targets = torch.from_numpy(pair_targets([self.groups[i] for i in planned], captions))
            mine = world.shard(list(range(len(planned))))
            tokens = model.tokenize([captions[j] for j in mine])
            return contrastive_step(model, pixels, tokens, targets.to(self.device), world, cfg.grad_cache,
                                    self.autocast, scale)
        y = self.labels[idx]
        if self.prompts is not None:
            count = sum(gather_objects(float(len(y)), world))
            loss = prompt_ce_step(model, pixels, torch.nan_to_num(y, nan=0.0).argmax(1), self.class_tokens, self.owner,
                                  len(self.prompts.classes), max(count, 1e-12), self.autocast, scale)
            return reduce_mean(loss, world) * world.size
        count = sum(gather_objects(supervised_count(y, self.train_ds.multilabel, self.weights), world))
        assert self.head is not None, "a supervised job has a classifier head"
        loss = supervised_step(model, self.head, pixels, y, self.train_ds.multilabel, self.weights,
                               max(count, 1e-12), self.autocast, scale)
        return reduce_mean(loss, world) * world.size

    def reduce_gradients(self) -> None:
        reduce_gradients(self.params, self.world, self.replicated)

    def validate(self, epoch: int) -> dict:
        """Validation metrics computed on rank 0 and shared with every rank (all ranks then agree on stopping)."""
        if self.val_ds is None:  # a fixed recipe: each epoch "beats" the last, so the last one is kept
            return {"score": float(epoch)}
        self.model.eval()
        if self.head is not None:
            self.head.eval()
        main = self.world.is_main
        score = validation_score(self.model, self.val_ds, self.cfg.mode, self.head, self.progress and main,
                                 num_workers=self.cfg.workers, prompts=self.prompts) if main else None
        return gather_objects(score, self.world)[0]

    def save_best(self, record: dict) -> None:
        if self.val_ds is None and record["step"] < self.total_steps and record["epoch"] < self.cfg.epochs - 1:
            return  # without validation only the final model is written (not one per epoch)
        score = {k: v for k, v in record.items() if k not in ("epoch", "step")}
        save_finetuned(self.model, self.out / "best",
                       self.prep.meta | {"val": score, "epoch": record["epoch"], "step": record["step"]}, self.head)

    def state_dict(self) -> dict:
        return {"trainable": {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad},
                "head": self.head.state_dict() if self.head else None}

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state["trainable"].items():
                params[n].copy_(v)
        if self.head is not None and state.get("head"):
            self.head.load_state_dict(state["head"])


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the summary also written to ``out_dir/summary.json``.

    Args:
        cfg: the run's options.
        resume: continue the run in ``cfg.out_dir`` from its checkpoint (same options required).
        progress: show progress bars (rank 0 only).
    """
    from medvlkit.models.registry import create_model, resolve_device

    if cfg.model.startswith("onnx:"):  # refused before any data is read (the model says so too, below)
        _refuse_inference_only(cfg.model)
    out = Path(cfg.out_dir)
    checkpoint = open_run(out, resume, cfg.to_dict())  # refused before any work if it is not plain data
    device = resolve_device(cfg.device)
    world = init_world(device)  # on CUDA it makes this rank's GPU the current device
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, device=device)
    if not model.trainable:
        _refuse_inference_only(cfg.model)
    train_ds, val_ds = split_train_val(cfg, model, progress and world.is_main)
    if val_ds is not None and cfg.max_val and len(val_ds) > cfg.max_val:
        val_ds = val_ds.subset(np.random.default_rng(cfg.seed).permutation(len(val_ds))[:cfg.max_val])
    if cfg.mode in ("supervised", "prompt_ce") and not train_ds.has_labels:
        raise MedvlkitError(f"--mode {cfg.mode} needs labels; '{train_ds.name}' has none")
    if cfg.mode == "prompt_ce" and train_ds.multilabel:
        raise MedvlkitError("--mode prompt_ce needs single-label data (one softmax over the classes)")
    check_validation_scorable(val_ds, cfg.mode)
    prep = prepare_model(model, cfg, train_ds.classnames if cfg.mode == "supervised" else None, train_ds.multilabel)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    job = FinetuneJob(cfg, prep, train_ds, val_ds, world, out, progress)
    opts = LoopOptions(epochs=cfg.epochs, patience=cfg.patience, max_steps=cfg.max_steps, save_every=cfg.save_every,
                       total_steps=job.total_steps, desc=f"finetune {cfg.mode}",
                       divergence_hint="lower --lr or --head-lr, or use --amp fp32")
    t_start = time.perf_counter()
    state = fit(job, opts, out, cfg.to_dict(), checkpoint, progress)
    barrier(world)
    summary = {"best": state.best, "history": state.history, "steps": state.step, "n_train": len(train_ds),
               "n_val": len(val_ds) if val_ds is not None else 0,
               "val_seen_by_model": val_ds.meta.get("seen_by_model") if val_ds is not None else None,
               "n_trainable_params": prep.n_trainable, "world_size": world.size,
               "train_seconds": time.perf_counter() - t_start, "config": cfg.to_dict(),
               "best_model": str(out / "best")}
    if world.is_main:
        (out / "history.json").write_text(json.dumps(state.history, indent=1) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def training_prompts(cfg: FinetuneConfig, train_ds: ImageDataset):
    """``prompt_ce``'s prompt set, matched to the training data's classes in their order (as zero-shot matches them):
    ``cfg.prompts`` by name or file, ``classes`` for generic prompts of the class names, None for the phrasings
    contrastive fine-tuning uses.

    Raises:
        MedvlkitError: the set lacks one of the data's classes.
    """
    from medvlkit.data.prompts import load_prompt_set, prompt_set_from_classes
    from medvlkit.tasks.finetune.evaluation import caption_prompts
    from medvlkit.tasks.zeroshot import prompts_used

    if cfg.prompts is None:
        return caption_prompts(train_ds)
    chosen = (prompt_set_from_classes(train_ds.classnames, "softmax") if cfg.prompts == "classes" else
              load_prompt_set(cfg.prompts))
    return prompts_used(train_ds, chosen, "softmax")


def _refuse_inference_only(spec: str) -> None:
    raise MedvlkitError(f"--model {spec} runs inference only (an ONNX export): fine-tune the PyTorch model it was "
                        "exported from, then export the result again")
