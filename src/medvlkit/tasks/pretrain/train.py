"""``medvlkit pretrain``: train the projection heads of ``lite`` on image-caption pairs from real data.

The towers stay frozen, so their features are computed once (and cached on disk); training the heads is then
fast on a CPU. The training runs on the one loop of ``medvlkit/engine/training.py`` (feature batches are just another
batch source): each epoch end and each interruption is checkpointed atomically (``checkpoint.pt``), the best
epoch on validation is written as ``best/lite_heads.safetensors`` (float16, the file medvlkit ships) +
``best/lite_config.json``, and ``resume=True`` continues an interrupted run batch for batch.
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

from medvlkit.engine.losses import contrastive_loss, pair_targets
from medvlkit.engine.training import Job, LoopOptions, fit, open_run
from medvlkit.errors import MedvlkitError
from medvlkit.models.lite import LiteConfig, LiteHeads, LiteModel, save_heads
from medvlkit.tasks.pretrain.corpus import Pair, build_corpus, sample_epoch
from medvlkit.tasks.pretrain.towers import LiteTowers, image_tower_features, text_tower_features
from medvlkit.tasks.pretrain.validate import choose_gate_threshold, prompt_texts, val_prompt_sets, validate

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
        engine: what computes the frozen image tower's features (``auto``: ONNX Runtime on a CPU; ``torch``
            reproduces lite v1's features bit for bit; the two agree within 1e-4).
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
    engine: str = "auto"

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


class PretrainJob(Job[list[tuple[int, str]]]):
    """Training the ``lite`` heads as a :class:`~medvlkit.engine.training.Job`: batches of precomputed tower features.

    The epoch plan (:func:`sample_epoch`) comes from one ``random.Random(seed)`` drawn epoch after epoch; for epoch
    ``e`` it is re-drawn from the seed, so the plan is a pure function of (seed, epoch) and resuming needs no RNG
    state, while an uninterrupted run draws exactly what the pre-loop code drew (the shipped heads stay
    reproducible).
    """

    def __init__(self, cfg: PretrainConfig, heads: LiteHeads, train: Features, val: Features, out: Path) -> None:
        self.cfg, self.heads, self.train, self.val, self.out = cfg, heads, train, val, out
        self.optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self._rng, self._next_epoch = random.Random(cfg.seed), 0

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, str]]]:
        if epoch < self._next_epoch:
            self._rng, self._next_epoch = random.Random(self.cfg.seed), 0
        while True:
            plan = sample_epoch(self.train.pairs, self.cfg.cap_per_source, self._rng)
            self._next_epoch += 1
            if self._next_epoch > epoch:
                break
        size = self.cfg.batch_size
        return [b for b in (plan[s:s + size] for s in range(0, len(plan) - 1, size)) if len(b) >= 2]

    def load_batches(self, plan: list[list[tuple[int, str]]], epoch: int):
        for batch in plan:
            idx, caps = [i for i, _ in batch], [c for _, c in batch]
            yield (torch.from_numpy(self.train.images[idx]),
                   torch.from_numpy(np.stack([self.train.texts[c] for c in caps])),
                   torch.from_numpy(pair_targets([self.train.pairs[i].group for i in idx], caps)))

    def train_mode(self) -> None:
        self.heads.train()

    def train_step(self, planned, batch, epoch: int) -> float:
        images, texts, targets = batch
        img = F.normalize(self.heads.project_image(images), dim=-1)
        txt = F.normalize(self.heads.project_text(texts), dim=-1)
        loss = contrastive_loss(img, txt, self.heads.log_logit_scale.exp().clamp(max=100.0), targets)
        loss.backward()
        return loss.item()

    def validate(self, epoch: int) -> dict:
        return validate(self.heads, self.val.pairs, self.val.images, self.val.texts)

    def save_best(self, record: dict) -> None:
        self.heads.cfg.gate_threshold = choose_gate_threshold(self.heads, self.val.pairs, self.val.images,
                                                              self.val.texts)
        save_heads(self.heads, self.out / "best", metadata={"epoch": record["epoch"], "val_score": record["score"]},
                   half=True)

    def state_dict(self) -> dict:
        return {"heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train the ``lite`` heads; returns the summary written to ``out_dir/summary.json``."""
    out = Path(cfg.out_dir)
    checkpoint = open_run(out, resume, asdict(cfg))  # checked before any work
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    torch.manual_seed(cfg.seed)
    lite_cfg = LiteConfig(embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
    heads = LiteHeads(lite_cfg)
    lite = LiteModel(heads)
    lite.use_engine(cfg.engine)
    towers = LiteTowers(lite)
    extra = [t for ps in val_prompt_sets().values() for t in prompt_texts(ps)]
    t0 = time.perf_counter()
    train, val = (extract(cfg, towers, part, extra, progress) for part in ("train", "val"))
    from medvlkit.tasks.pretrain.manifest import write_manifest

    write_manifest(train.pairs, out / "best", cfg.workers, progress)  # what the heads train on, declared beside them
    feature_seconds = time.perf_counter() - t0
    job = PretrainJob(cfg, heads, train, val, out)
    opts = LoopOptions(epochs=cfg.epochs, patience=cfg.patience, scheduler_interval="epoch", desc="pretrain",
                       total_steps=cfg.epochs * len(job.epoch_batches(0)), divergence_hint="lower --lr")
    state = fit(job, opts, out, asdict(cfg), checkpoint, progress)
    best = state.best
    summary = {"best": best, "history": state.history, "n_train_pairs": len(train.pairs),
               "n_val_pairs": len(val.pairs), "feature_seconds": feature_seconds, "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from medvlkit.engine.results import write_result

    write_result(out, dataset=cfg.data_root, model="lite (heads pretrained here)", task="pretrain",
                 metrics={k: v for k, v in best.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")},
                 config=asdict(cfg), seed=cfg.seed,
                 extra={"best_dir": str(out / "best"), "best_epoch": best["epoch"], "n_train_pairs": len(train.pairs),
                        "n_val_pairs": len(val.pairs), "split": "val (best epoch)"})
    return summary
