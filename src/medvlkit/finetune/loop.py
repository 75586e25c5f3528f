"""``medvlkit finetune``: the one training loop for contrastive (full / LoRA / frozen tower, GradCache) and
supervised (CE / BCE head) fine-tuning, on one process or under ``torchrun``.

A run directory holds ``config.json``, ``checkpoint.pt`` (written atomically every ``save_every`` steps, at each
epoch end and on Ctrl-C; ``resume=True`` continues from it, batch for batch), ``best/`` (the model with the best
validation score, loadable as ``ft:<run>/best``), ``history.json`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medvlkit.checkpoint import load_checkpoint, save_checkpoint
from medvlkit.data.dataset import ImageDataset
from medvlkit.errors import MedvlkitError, NoSplitsError
from medvlkit.finetune.config import FinetuneConfig
from medvlkit.finetune.data import batch_loader, caption_pools, epoch_batches, pick_captions
from medvlkit.finetune.distributed import World, barrier, gather_objects, init_world, reduce_gradients, reduce_mean
from medvlkit.finetune.evaluation import validation_score
from medvlkit.finetune.lora import LoraSpec, add_lora, is_lora_param, target_names
from medvlkit.finetune.saved import save_finetuned
from medvlkit.finetune.steps import ClassifierHead, class_weights, contrastive_step, supervised_count, supervised_step
from medvlkit.interrupt import StopRequest
from medvlkit.models.base import ModelBase
from medvlkit.pretrain.corpus import pair_targets

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
    towers, heads = model.tower_modules(), model.head_modules()
    trainable = [t for t in ("vision", "text") if t != cfg.freeze]
    if cfg.mode == "supervised":
        trainable = [t for t in trainable if t == "vision"]  # the text tower plays no part in a classifier
    for p in model.parameters():
        p.requires_grad_(False)
    meta = {"base": _absolute_spec(cfg.model), "mode": cfg.mode, "lora": None, "lora_layers": [],
            "freeze": cfg.freeze, "classnames": classnames, "multilabel": multilabel}
    if cfg.lora is not None:
        spec = LoraSpec.parse(cfg.lora)
        suffixes = spec.targets or tuple(model.default_lora_targets)
        if trainable:
            names = target_names(model, suffixes, [m for t in trainable for m in towers[t]])
            add_lora(model, spec, names)
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
    if cfg.mode == "contrastive":
        if not trainable:
            raise MedvlkitError("--freeze leaves nothing to train in contrastive mode")
        model.log_scale_param().requires_grad_(True)
        if model.log_bias_param() is not None:
            model.log_bias_param().requires_grad_(True)
    head = None
    if cfg.mode == "supervised":
        head = ClassifierHead(model.embed_dim, len(classnames or [])).to(model.device)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad) + (
        sum(p.numel() for p in head.parameters()) if head else 0)
    return Prepared(model, head, meta, n)


def _absolute_spec(spec: str) -> str:
    """A spec whose path part is absolute, so ``ft:DIR`` loads from any working directory."""
    source, sep, ref = spec.partition(":")
    if sep and Path(ref).expanduser().exists():  # every source whose reference is a local file or folder
        return f"{source}:{Path(ref).expanduser().resolve()}"
    return spec


def set_train_mode(model: ModelBase, head: ClassifierHead | None) -> None:
    """Training mode (dropout on), except batch-norm statistics stay frozen: small fine-tuning batches would
    corrupt the pretrained running means."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    if head is not None:
        head.train()


def _autocast(precision: str, device: str):
    """(autocast factory, GradScaler or None) for a precision name and device."""
    if precision == "auto":
        if not device.startswith("cuda"):
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    scaler = torch.amp.GradScaler(dev_type) if precision == "fp16" else None
    return (lambda: torch.autocast(dev_type, dtype=dtype)), scaler


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def split_train_val(cfg: FinetuneConfig) -> tuple[ImageDataset, ImageDataset]:
    """The training data and the validation data (a val split, or a seeded held-out part of train)."""
    from medvlkit.data import load_dataset
    from medvlkit.probe import holdout_indices

    opts = cfg.dataset_options
    try:
        train = load_dataset(cfg.data, split=cfg.train_split, format=cfg.format, **opts)
    except NoSplitsError:
        train = load_dataset(cfg.data, split=None, format=cfg.format, **opts)
        logger.warning("%s has no splits: all of it trains, and validation is a held-out part of it", cfg.data)
    if cfg.val_split not in (None, "holdout"):
        return train, load_dataset(cfg.data, split=cfg.val_split, format=cfg.format, **opts)
    if cfg.val_split is None:
        try:
            return train, load_dataset(cfg.data, split="val", format=cfg.format, **opts)
        except MedvlkitError:
            pass
    labels = train.labels if train.has_labels else np.zeros((len(train), 1), np.float32)
    tr, va = holdout_indices(train.items, labels, cfg.val_fraction, cfg.seed, cfg.group_pattern)
    return train.subset(tr), train.subset(va)


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the summary also written to ``out_dir/summary.json``.

    Args:
        cfg: the run's options.
        resume: continue the run in ``cfg.out_dir`` from its checkpoint (same options required).
        progress: show progress bars (rank 0 only).
    """
    from medvlkit.models.registry import create_model, resolve_device

    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise MedvlkitError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if resume and not ckpt_path.exists():
        raise MedvlkitError(f"--resume: no checkpoint.pt in {out}")
    state = load_checkpoint(ckpt_path) if resume else None  # refused before any work if it is not plain data
    device = resolve_device(cfg.device)
    world = init_world(device)
    if device == "cuda" and world.size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = split_train_val(cfg)
    if cfg.max_val and len(val_ds) > cfg.max_val:
        val_ds = val_ds.subset(np.random.default_rng(cfg.seed).permutation(len(val_ds))[:cfg.max_val])
    if cfg.mode == "supervised" and not train_ds.has_labels:
        raise MedvlkitError(f"--mode supervised needs labels; '{train_ds.name}' has none")
    model = create_model(cfg.model, device=device)
    prep = prepare_model(model, cfg, train_ds.classnames if cfg.mode == "supervised" else None, train_ds.multilabel)
    head = prep.head
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    pools, groups = caption_pools(train_ds) if cfg.mode == "contrastive" else (None, None)
    labels_all = torch.from_numpy(train_ds.labels) if train_ds.has_labels else None
    weights = None
    if cfg.mode == "supervised" and cfg.class_weight == "balanced":
        weights = class_weights(labels_all, train_ds.multilabel).to(model.device)

    loss_params = [p for p in (model.log_scale_param(), model.log_bias_param()) if p is not None] \
        if cfg.mode == "contrastive" else []
    params_tower = [p for n, p in model.named_parameters() if p.requires_grad and all(p is not q for q in loss_params)]
    params_head = loss_params + (list(head.parameters()) if head else [])
    groups_opt = [{"params": params_tower, "lr": cfg.tower_lr}, {"params": params_head, "lr": cfg.head_lr,
                                                                  "weight_decay": 0.0}]
    groups_opt = [g for g in groups_opt if g["params"]]
    opt = (torch.optim.AdamW(groups_opt, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw" else
           torch.optim.SGD(groups_opt, momentum=0.9, weight_decay=cfg.weight_decay))
    steps_per_epoch = len(epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, 0))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(cfg.warmup, total // 10), total))
    autocast, scaler = _autocast(cfg.precision, device)
    all_params = params_tower + params_head
    replicated = {id(p) for p in loss_params}  # computed in full on every rank: averaged, not summed

    step, epoch, batch_pos, history = 0, 0, 0, []
    best = {"score": -math.inf, "epoch": -1, "step": 0}
    if state is not None:
        now = cfg.to_dict()  # options added to medvlkit after the checkpoint was written are not compared
        diff = {k: (v, now[k]) for k, v in state["config"].items() if k in now and now[k] != v}
        if diff:
            raise MedvlkitError(f"--resume with other options than the checkpoint's: {diff} (checkpoint, now)")
        _load_trainable(model, head, state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and model.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], model.device)
        step, epoch, batch_pos, history, best = (state[k] for k in ("step", "epoch", "batch_pos", "history", "best"))
        if world.is_main:
            logger.info("resuming %s at step %d (epoch %d, batch %d)", ckpt_path, step, epoch, batch_pos)

    saved = {"step": step}

    def checkpoint() -> None:
        saved["step"] = step
        if world.is_main:
            save_checkpoint(ckpt_path, {
                "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                "head": head.state_dict() if head else None, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None,
                "step": step, "epoch": epoch, "batch_pos": batch_pos,
                "history": history, "best": best, "config": cfg.to_dict()})

    bar = tqdm(total=total, initial=step, desc=f"finetune {cfg.mode}", unit="step",
               disable=not (progress and world.is_main))
    stop, t_start, seen = step >= total, time.perf_counter(), 0
    in_step = False  # True while a step has changed some state (RNG, weights) but not yet its counters
    try:
        with StopRequest() as stop_request:
            while not stop and epoch < cfg.epochs:
                batches = epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, epoch)[batch_pos:]
                # the loader draws its seed from its own generator, never from the global RNG that dropout uses,
                # so a resumed run's dropout masks equal the uninterrupted run's
                loader = batch_loader(train_ds, model.image_preprocessor, [world.shard(b) for b in batches],
                                      cfg.workers, seed=cfg.seed + epoch)
                losses = []
                set_train_mode(model, head)
                for global_batch, (idx, pixels) in zip(batches, loader):
                    in_step = True
                    loss = _train_step(model, head, cfg, world, global_batch, idx, pixels.to(model.device), pools,
                                       groups, labels_all, train_ds.multilabel, weights, epoch, autocast, scaler)
                    if not math.isfinite(loss):
                        raise MedvlkitError(f"the training loss is {loss} at step {step + 1}: the run has diverged "
                                            "(lower --lr or --head-lr, or use --precision fp32); the best model saved "
                                            "so far is kept in best/")
                    reduce_gradients(all_params, world, replicated)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                    sched.step()
                    step, batch_pos, seen = step + 1, batch_pos + 1, seen + len(global_batch)
                    in_step = False
                    losses.append(loss)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}",
                                    samples_s=f"{seen / max(time.perf_counter() - t_start, 1e-9):.1f}")
                    if step % cfg.save_every == 0:
                        checkpoint()
                    if any(gather_objects(stop_request.requested, world)):
                        raise KeyboardInterrupt  # between steps: the handler below writes the checkpoint
                    if step >= total:
                        stop = True
                        break
                # end of an epoch (or of the step budget): validate, keep the best, maybe stop early
                score = _validate(model, head, val_ds, cfg, world, progress)
                history.append({"epoch": epoch, "step": step,
                                "train_loss": float(np.mean(losses)) if losses else None,
                                **score, "samples_per_s": seen / max(time.perf_counter() - t_start, 1e-9)})
                if score["score"] > best["score"]:
                    best = {"score": score["score"], "epoch": epoch, "step": step, **score}
                    if world.is_main:
                        save_finetuned(model, out / "best",
                                       prep.meta | {"val": score, "epoch": epoch, "step": step}, head)
                epoch, batch_pos = epoch + 1, 0
                checkpoint()
                if epoch - 1 - best["epoch"] >= cfg.patience:
                    logger.info("early stop after epoch %d (best %d)", epoch - 1, best["epoch"])
                    break
    except KeyboardInterrupt:
        if not in_step:  # between steps the state is consistent: save it (a forced stop mid-step keeps the last)
            checkpoint()
        bar.close()
        raise MedvlkitError(f"interrupted at step {step}; the checkpoint at step "
                            f"{saved['step']} is saved: continue with the same command and "
                            "--resume") from None
    bar.close()
    barrier(world)
    summary = {"best": best, "history": history, "steps": step, "n_train": len(train_ds), "n_val": len(val_ds),
               "n_trainable_params": prep.n_trainable, "world_size": world.size,
               "train_seconds": time.perf_counter() - t_start, "config": cfg.to_dict(),
               "best_model": str(out / "best")}
    if world.is_main:
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _train_step(model, head, cfg: FinetuneConfig, world: World, global_batch: list[int], idx: list[int],
                pixels: torch.Tensor, pools, groups, labels_all, multilabel: bool, weights, epoch: int, autocast,
                scaler) -> float:
    """Forward and backward of one global batch (gradients accumulated, not yet applied). Returns the loss."""
    scale = scaler.scale if scaler else (lambda x: x)
    if cfg.mode == "contrastive":
        captions = pick_captions(pools, global_batch, cfg.seed, epoch)
        targets = torch.from_numpy(pair_targets([groups[i] for i in global_batch], captions))
        mine = world.shard(list(range(len(global_batch))))
        tokens = model.tokenize([captions[j] for j in mine])
        return contrastive_step(model, pixels, tokens, targets.to(model.device), world, cfg.grad_cache, autocast,
                                scale)
    y = labels_all[idx]
    count = sum(gather_objects(supervised_count(y, multilabel, weights), world))
    loss = supervised_step(model, head, pixels, y, multilabel, weights, max(count, 1e-12), autocast, scale)
    return reduce_mean(loss, world) * world.size


def _load_trainable(model: ModelBase, head: ClassifierHead | None, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state["trainable"].items():
            params[n].copy_(v)
    if head is not None and state.get("head"):
        head.load_state_dict(state["head"])


def _validate(model, head, val_ds: ImageDataset, cfg: FinetuneConfig, world: World, progress: bool) -> dict:
    """Validation metrics computed on rank 0 and shared with every rank (all ranks then agree on stopping)."""
    model.eval()
    if head is not None:
        head.eval()
    score = validation_score(model, val_ds, cfg.mode, head, progress and world.is_main) if world.is_main else None
    return gather_objects(score, world)[0]
