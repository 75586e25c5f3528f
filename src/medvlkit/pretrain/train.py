"""``medvlkit pretrain``: train the projection heads of ``lite`` on image-caption pairs from real data.

The towers stay frozen, so their features are computed once (and cached on disk); training the heads is then
fast on a CPU. Each epoch is checkpointed atomically (``checkpoint.pt``), the best epoch on validation is
written as ``best/lite_heads.safetensors`` (float16, the file medvlkit ships) + ``best/lite_config.json``,
and ``resume=True`` continues an interrupted run.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medvlkit.checkpoint import load_checkpoint, save_checkpoint
from medvlkit.errors import MedvlkitError
from medvlkit.losses import contrastive_loss
from medvlkit.models.lite import LiteConfig, LiteHeads, LiteModel, save_heads
from medvlkit.pretrain.corpus import Pair, build_corpus, pair_targets, sample_epoch
from medvlkit.pretrain.towers import LiteTowers, image_tower_features, text_tower_features
from medvlkit.pretrain.validate import choose_gate_threshold, prompt_texts, val_prompt_sets, validate

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Options of one pretraining run (all recorded in ``out_dir/config.json``).

    Attributes:
        data_root: the medvlkit data folder (``$MEDVLKIT_DATA``).
        out_dir: where checkpoints, the best heads and the history go.
        epochs: maximum epochs; ``patience`` epochs without a better val score stop early.
        batch_size: pairs per contrastive batch.
        lr, weight_decay: AdamW settings.
        cap_per_source: images drawn per source per epoch (balances the sources; 0 = all).
        embed_dim, hidden_dim, dropout: head shape (:class:`LiteConfig`).
        seed: seeds sampling, initialisation and dropout.
        sources: corpus sources to use (default: all, see ``pretrain/corpus.py``).
        workers, feature_batch_size: image feature extraction settings.
    """

    data_root: str
    out_dir: str
    epochs: int = 60
    patience: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    cap_per_source: int = 1500
    embed_dim: int = 256
    hidden_dim: int = 1024
    dropout: float = 0.1
    seed: int = 0
    sources: tuple[str, ...] | None = None
    workers: int = 2
    feature_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "feature_batch_size"):
            if getattr(self, name) <= 0:
                raise MedvlkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise MedvlkitError("--batch-size must be at least 2 for a contrastive loss")


@dataclass
class Features:
    """Frozen-tower features of one corpus part."""

    pairs: list[Pair]
    images: np.ndarray            # (N, 1280)
    texts: dict[str, np.ndarray]  # caption -> (384,)


def extract(cfg: PretrainConfig, towers: LiteTowers, part: str, extra_texts: list[str], progress: bool) -> Features:
    pairs = build_corpus(Path(cfg.data_root), part, list(cfg.sources) if cfg.sources else None)
    images = image_tower_features(towers, [p.item for p in pairs], batch_size=cfg.feature_batch_size,
                                  num_workers=cfg.workers, progress=progress)
    texts = text_tower_features(towers, [c for p in pairs for c in p.captions] + extra_texts)
    return Features(pairs, images, texts)


def _train_epoch(heads: LiteHeads, opt: torch.optim.Optimizer, feats: Features, cfg: PretrainConfig,
                 rng: random.Random) -> float:
    heads.train()
    plan = sample_epoch(feats.pairs, cfg.cap_per_source, rng)
    losses = []
    for start in range(0, len(plan) - 1, cfg.batch_size):
        batch = plan[start:start + cfg.batch_size]
        if len(batch) < 2:
            break
        idx, caps = [i for i, _ in batch], [c for _, c in batch]
        img = F.normalize(heads.project_image(torch.from_numpy(feats.images[idx])), dim=-1)
        txt = F.normalize(heads.project_text(torch.from_numpy(np.stack([feats.texts[c] for c in caps]))), dim=-1)
        targets = torch.from_numpy(pair_targets([feats.pairs[i].group for i in idx], caps))
        loss = contrastive_loss(img, txt, heads.log_logit_scale.exp().clamp(max=100.0), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train the ``lite`` heads; returns the summary written to ``out_dir/summary.json``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise MedvlkitError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None  # checked before any work
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    torch.manual_seed(cfg.seed)
    lite_cfg = LiteConfig(embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
    heads = LiteHeads(lite_cfg)
    towers = LiteTowers(LiteModel(heads))
    extra = [t for ps in val_prompt_sets().values() for t in prompt_texts(ps)]
    t0 = time.perf_counter()
    train, val = (extract(cfg, towers, part, extra, progress) for part in ("train", "val"))
    feature_seconds = time.perf_counter() - t0
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    rng, history, best, start_epoch = random.Random(cfg.seed), [], {"score": -1.0, "epoch": -1}, 0
    if state is not None:
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        logger.info("resuming %s at epoch %d", ckpt_path, start_epoch)
    bar = tqdm(range(start_epoch, cfg.epochs), desc="pretrain", disable=not progress)
    for epoch in bar:
        loss = _train_epoch(heads, opt, train, cfg, rng)
        sched.step()
        metrics = validate(heads, val.pairs, val.images, val.texts)
        history.append({"epoch": epoch, "train_loss": loss, **metrics})
        if metrics["score"] > best["score"]:
            best = {"score": metrics["score"], "epoch": epoch, **metrics}
            heads.cfg.gate_threshold = choose_gate_threshold(heads, val.pairs, val.images, val.texts)
            save_heads(heads, out / "best", metadata={"epoch": epoch, "val_score": metrics["score"]}, half=True)
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{metrics['score']:.3f}", best=best["epoch"])
        save_checkpoint(ckpt_path, {"heads": heads.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "rng": rng.getstate(),
                                     "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                                     "epoch": epoch})
        if epoch - best["epoch"] >= cfg.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best["epoch"])
            break
    summary = {"best": best, "history": history, "n_train_pairs": len(train.pairs), "n_val_pairs": len(val.pairs),
               "feature_seconds": feature_seconds, "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from medvlkit.results import write_result

    write_result(out, dataset=cfg.data_root, model="lite (heads pretrained here)", task="pretrain",
                 metrics={k: v for k, v in best.items() if isinstance(v, (int, float))}, config=asdict(cfg),
                 seed=cfg.seed, extra={"best_dir": str(out / "best"), "n_train_pairs": len(train.pairs),
                                       "n_val_pairs": len(val.pairs), "split": "val (best epoch)"})
    return summary
