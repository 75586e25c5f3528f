"""Few-shot adaptation of a frozen dual encoder on its cached embeddings: the methods of the literature that need
only unit image embeddings, the class text embeddings of a prompt set and the model's temperature.

- ``tip_adapter`` (Zhang et al., ECCV 2022): training-free. A cache whose keys are the K-shot image embeddings and
  values their one-hot labels; logits = ``scale * x W^T + alpha * exp(-beta * (1 - x K^T)) V``;
- ``tip_adapter_f``: the same with the keys fine-tuned by cross-entropy (AdamW, lr 1e-3, eps 1e-4, cosine schedule,
  20 epochs of batches of 256: the paper's recipe, here without its augmented views: the embeddings are frozen);
- ``clip_adapter`` (Gao et al., IJCV 2023): a bottleneck MLP (D -> D/4 -> D, ReLU after each layer, no biases) on
  the image embedding, mixed back as ``ratio * A(x) + (1 - ratio) * x``, then compared with the text embeddings;
  SGD (momentum 0.9, lr 2e-3, cosine) over 200 epochs of batches of 32; ``ratio`` from 0.2/0.4/0.6/0.8 on validation;
- ``clap`` (Silva-Rodriguez et al., CVPR 2024, "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
  Models"): a linear probe whose class weights start at the text embeddings and are held near them by a penalty
  ``sum_c lambda_c ||w_c - t_c||^2``, each ``lambda_c`` the mean zero-shot probability of class c on its own shots
  (so no validation is needed); SGD, momentum 0.9, lr 0.1, 300 epochs of batches of 32, without augmentations.

- ``coop`` (Zhou et al., IJCV 2022): prompt learning. The prompt ``[V1]..[V4] <class>.`` goes through the frozen
  text tower with the context vectors ``V`` (shared by the classes, initialised from the word embeddings of "a photo
  of a", the paper's initialisation) learned by cross-entropy on the shots' image embeddings: SGD (momentum 0.9,
  lr 2e-3, cosine) over the paper's epochs (50 for 1-2 shots, 100 for 4-8, 200 beyond), batches of 32. Only the
  context vectors receive gradients. Needs a model whose text tower takes word embeddings
  (:meth:`~medvlkit.models.base.ModelBase.encode_text_from_embeddings`: every backbone whose text tower has a
  word-embedding table medvlkit reaches).

Hyper-parameters are chosen on a validation part of the K shots, never on test (:func:`split_shots`): Tip-Adapter's
``alpha``/``beta`` on a grid (the paper's search, ranges 0-3 and 0-7), with the final cache built from all K shots; at
one shot per class nothing is left to validate on and the paper's defaults (``alpha = 1``, ``beta = 5.5``) are used.
Single-label (softmax) data only: the methods are defined for one class per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvlkit.engine.scores import log_softmax
from medvlkit.errors import MedvlkitError

METHODS = ("tip_adapter", "tip_adapter_f", "clip_adapter", "clap", "coop")
CLIP_ADAPTER_RATIOS = (0.2, 0.4, 0.6, 0.8)  # the residual ratios the CLIP-Adapter paper compares; 0.2 its default
TIP_DEFAULTS = {"alpha": 1.0, "beta": 5.5}
ALPHAS = tuple(np.round(np.linspace(0.0, 3.0, 13)[1:], 4))    # 0.25 .. 3
BETAS = tuple(np.round(np.linspace(0.0, 7.0, 15)[1:], 4))     # 0.5 .. 7


def tip_logits(x: np.ndarray, text: np.ndarray, keys: np.ndarray, values: np.ndarray, scale: float,
               alpha: float, beta: float) -> np.ndarray:
    """Tip-Adapter's logits (N, C): the zero-shot logits ``scale * x text^T`` plus ``alpha`` times the cache's
    ``exp(-beta * (1 - x keys^T)) values``, in float64."""
    x64 = x.astype(np.float64)
    affinity = np.exp(-beta * (1.0 - x64 @ keys.astype(np.float64).T))
    return scale * (x64 @ text.astype(np.float64).T) + alpha * affinity @ values.astype(np.float64)


def split_shots(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices of K-shot data, per class: half of each class's shots (rounded down) validate, the
    rest fit. One shot per class gives no validation (an empty array)."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_val = len(rows) // 2
        val += rows[:n_val].tolist()
        fit += rows[n_val:].tolist()
    return np.array(sorted(fit), dtype=int), np.array(sorted(val), dtype=int)


def validation_key(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """What every validation search here maximises: accuracy on the validation shots (the papers' criterion), ties
    broken by the lower cross-entropy (a few validation shots tie on accuracy over most of a grid)."""
    accuracy = float((logits.argmax(1) == y).mean())
    return accuracy, -float(-log_softmax(logits)[np.arange(len(y)), y].mean())


def search_tip(x_val: np.ndarray, y_val: np.ndarray, text: np.ndarray, keys: np.ndarray, values: np.ndarray,
               scale: float) -> tuple[dict[str, float], float]:
    """The (alpha, beta) of the grid with the best validation accuracy (the paper's criterion), ties broken by the
    lower validation cross-entropy (a few validation shots tie on accuracy over most of the grid), then by grid
    order; and that accuracy."""
    best, best_key = dict(TIP_DEFAULTS), (-1.0, 0.0)
    for beta in BETAS:
        for alpha in ALPHAS:
            logits = tip_logits(x_val, text, keys, values, scale, alpha, beta)
            key = validation_key(logits, y_val)
            if key > best_key:
                best, best_key = {"alpha": float(alpha), "beta": float(beta)}, key
    return best, best_key[0]


@dataclass
class FewShotAdapter:
    """A fitted few-shot method: arrays only (it never sees a model or a dataset), so it saves and loads like the
    probe. ``predict_log_proba`` gives (N, C) class log-probabilities in ``classnames_`` order.

    Attributes:
        method: one of :data:`METHODS`.
        classnames_: the classes, in column order.
        scale: the model's logit scale (its own temperature).
        text: (C, D) the prompt set's class embeddings (zero-shot weights).
        arrays: the method's fitted arrays (``keys``/``values`` for Tip-Adapter, ``weights`` for CLAP).
        hyper: its hyper-parameters and where they came from.
        seen_items_: the images that fitted it or chose its hyper-parameters (never scored: the probe's rule).
    """

    method: str
    classnames_: list[str]
    scale: float
    text: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    hyper: dict[str, Any] = field(default_factory=dict)
    seen_items_: dict[str, list[str]] = field(default_factory=dict)
    multilabel_: bool = False

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.method in ("tip_adapter", "tip_adapter_f"):
            return tip_logits(x, self.text, self.arrays["keys"], self.arrays["values"], self.scale,
                              self.hyper["alpha"], self.hyper["beta"])
        if self.method == "clip_adapter":
            return clip_adapter_logits(x, self.text, self.arrays["down"], self.arrays["up"], self.scale,
                                       self.hyper["ratio"])
        return self.scale * (x.astype(np.float64) @ self.arrays["weights"].astype(np.float64).T)

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        return log_softmax(self.logits(x))

    def save(self, path: Path, header: dict[str, Any]) -> None:
        """``adapter.npz``: the arrays, the classes, the method and its hyper-parameters, and ``header`` (the model
        it was fitted on)."""
        import json

        meta = {"method": self.method, "classnames": self.classnames_, "scale": self.scale, "hyper": self.hyper,
                **header}
        arrays: dict[str, Any] = {f"a_{k}": v for k, v in self.arrays.items()}
        np.savez(path, text=self.text, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> tuple[FewShotAdapter, dict[str, Any]]:
        """(the adapter, its header) from :meth:`save`'s file.

        Raises:
            MedvlkitError: not an adapter file.
        """
        import json

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
                text = z["text"]
        except (OSError, KeyError, ValueError) as err:
            raise MedvlkitError(f"{path}: not an adapter saved by `medvlkit adapt` ({err})") from None
        return cls(meta["method"], meta["classnames"], float(meta["scale"]), text, arrays, meta["hyper"]), meta


def one_hot(y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(y), n))
    out[np.arange(len(y)), y] = 1.0
    return out


def fit_tip_keys(x: np.ndarray, y: np.ndarray, text: np.ndarray, scale: float, alpha: float, beta: float,
                 seed: int, epochs: int = 20, batch: int = 256) -> np.ndarray:
    """Tip-Adapter-F: the cache keys (init: ``x``) fine-tuned by cross-entropy on (x, y), values and text fixed.
    AdamW (lr 1e-3, eps 1e-4), cosine schedule over ``epochs`` epochs of ``batch`` (the paper's recipe)."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float64))
    keys = torch.nn.Parameter(xt.clone())
    values = torch.from_numpy(one_hot(y, text.shape[0]))
    zs = scale * xt @ torch.from_numpy(text.astype(np.float64)).T
    target = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.AdamW([keys], lr=1e-3, eps=1e-4)
    steps = epochs * max(1, -(-len(x) // batch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            affinity = torch.exp(-beta * (1.0 - xt[rows] @ keys.T))
            loss = torch.nn.functional.cross_entropy(zs[rows] + alpha * affinity @ values, target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return keys.detach().numpy()


def _adapted(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, ratio: float) -> torch.Tensor:
    """CLIP-Adapter's image feature: ``ratio * relu(relu(x down) up) + (1 - ratio) * x``, re-normalised."""
    mixed = ratio * torch.relu(torch.relu(x @ down) @ up) + (1.0 - ratio) * x
    return mixed / mixed.norm(dim=-1, keepdim=True)


def clip_adapter_logits(x: np.ndarray, text: np.ndarray, down: np.ndarray, up: np.ndarray, scale: float,
                        ratio: float) -> np.ndarray:
    """CLIP-Adapter's logits (N, C) in float64: the adapted, re-normalised image embeddings against ``text``."""
    with torch.no_grad():
        f = _adapted(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(down.astype(np.float64)),
                     torch.from_numpy(up.astype(np.float64)), ratio)
        return (scale * f @ torch.from_numpy(text.astype(np.float64)).T).numpy()


def fit_clip_adapter(x: np.ndarray, y: np.ndarray, text: np.ndarray, scale: float, ratio: float, seed: int,
                     epochs: int = 200, batch: int = 32, lr: float = 2e-3) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-Adapter's two bottleneck layers (D x D/4, D/4 x D; PyTorch's default init, seeded) trained by
    cross-entropy with the text embeddings fixed. Returns (down, up)."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(d, max(1, d // 4), bias=False).double(),
              torch.nn.Linear(max(1, d // 4), d, bias=False).double()]
    xt, t = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(text.astype(np.float64))
    target = torch.from_numpy(y.astype(np.int64))
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * max(1, -(-len(x) // batch)))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            f = _adapted(xt[rows], layers[0].weight.T, layers[1].weight.T, ratio)
            loss = torch.nn.functional.cross_entropy(scale * f @ t.T, target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return layers[0].weight.detach().T.numpy().copy(), layers[1].weight.detach().T.numpy().copy()


COOP_INIT = "a photo of a"


def coop_epochs(shots: int) -> int:
    """The CoOp paper's schedule: 50 epochs for 1-2 shots, 100 for 4-8, 200 for 16."""
    return 50 if shots <= 2 else 100 if shots <= 8 else 200


def coop_prompt_encoder(model: Any, class_texts: list[str], init: str = COOP_INIT) -> tuple[Any, torch.Tensor]:
    """(encode, initial context): ``encode(ctx)`` gives the (C, D) unit text embeddings of ``[ctx] <class text>.``
    for each class, through ``model``'s frozen text tower, differentiable in ``ctx`` (M, H); the initial context is
    the word embeddings of ``init`` (M = its number of tokens).

    Where the context goes is found from the tokenizer, not assumed (with or without a start token, padding with the
    end token or not: CLIP, BERT and SigLIP alike): "X" and "Y" differ at the first word's position S; "<init> X" and
    "<init> Y" at S + M; prompts with M placeholders "X" must differ from the same prompts with "Y" at exactly
    S..S+M-1.

    Raises:
        MedvlkitError: the model's text tower does not take embeddings, or its tokenizer does not keep the context
            placeholders as one token each at the positions of the context.
    """
    def ids(texts: list[str]) -> torch.Tensor:
        return model.tokenize(texts)["input_ids"]

    def first_difference(a: str, b: str) -> int:
        pair = ids([a, b])
        where = (pair[0] != pair[1]).nonzero().flatten().tolist()
        return where[0] if where else -1

    start = first_difference("X", "Y")
    n = first_difference(f"{init} X", f"{init} Y") - start if start >= 0 else 0
    init_tokens = model.tokenize([init])
    with torch.no_grad():
        ctx0 = model.text_input_embeddings(init_tokens)[0, start:start + n].detach().clone()
    tokens = model.tokenize([" ".join(["X"] * n) + f" {t}." for t in class_texts])
    other = ids([" ".join(["Y"] * n) + f" {t}." for t in class_texts])
    where = tokens["input_ids"] != other
    if n < 1 or not bool((where.sum(1) == n).all() and where[:, start:start + n].all()):
        raise MedvlkitError(f"{model.name}: its tokenizer does not keep {n or 'the'} context placeholders as one token "
                            f"each where '{init}' sits; CoOp cannot place its context vectors")
    with torch.no_grad():
        base = model.text_input_embeddings(tokens).detach()

    def encode(ctx: torch.Tensor) -> torch.Tensor:
        emb = torch.cat([base[:, :start], ctx.unsqueeze(0).expand(len(class_texts), -1, -1).to(base.dtype),
                         base[:, start + n:]], dim=1)
        return model.encode_text_from_embeddings(emb, tokens)

    return encode, ctx0


def fit_coop(x: np.ndarray, y: np.ndarray, encode: Any, ctx0: torch.Tensor, scale: float, seed: int, epochs: int,
             frozen: list[torch.nn.Parameter], batch: int = 32, lr: float = 2e-3) -> tuple[np.ndarray, np.ndarray]:
    """CoOp's context vectors (init ``ctx0``) trained by cross-entropy of ``scale * x encode(ctx)^T``; ``frozen``:
    the model's parameters, which get no gradient (their ``requires_grad`` is restored after). Returns (context,
    the final (C, D) class embeddings)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.nn.Parameter(ctx0.clone().float())
    xt, target = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD([ctx], lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * max(1, -(-len(x) // batch)))
    before = [p.requires_grad for p in frozen]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=g)
                for start in range(0, len(x), batch):
                    rows = order[start:start + batch]
                    loss = torch.nn.functional.cross_entropy(scale * xt[rows] @ encode(ctx).T, target[rows])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
        with torch.no_grad():
            final = encode(ctx)
    finally:
        for p, flag in zip(frozen, before):
            p.requires_grad_(flag)
    return ctx.detach().numpy(), final.detach().numpy()


def clap_lambdas(x: np.ndarray, y: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    """CLAP's per-class penalty weights: the mean zero-shot probability of class c over the shots of class c."""
    probs = np.exp(log_softmax(scale * (x.astype(np.float64) @ text.astype(np.float64).T)))
    return np.array([probs[y == c, c].mean() if np.any(y == c) else 0.0 for c in range(text.shape[0])])


def fit_clap(x: np.ndarray, y: np.ndarray, text: np.ndarray, scale: float, seed: int, epochs: int = 300,
             batch: int = 32, lr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """CLAP: class weights (init: ``text``) trained by cross-entropy plus ``sum_c lambda_c ||w_c - t_c||^2`` with
    :func:`clap_lambdas`; SGD (momentum 0.9, ``lr``) over ``epochs`` epochs of ``batch``. Returns (weights, lambdas)."""
    lambdas = clap_lambdas(x, y, text, scale)
    g = torch.Generator().manual_seed(seed)
    xt, t0 = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(text.astype(np.float64))
    w = torch.nn.Parameter(t0.clone())
    lam, target = torch.from_numpy(lambdas), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(scale * xt[rows] @ w.T, target[rows]) + \
                (lam * ((w - t0) ** 2).sum(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach().numpy(), lambdas


def fit_fewshot(method: str, x: np.ndarray, y: np.ndarray, classnames: list[str], text: np.ndarray, scale: float,
                seed: int = 0, prompt_model: Any = None, class_texts: list[str] | None = None) -> FewShotAdapter:
    """Fit ``method`` on K-shot unit embeddings ``x`` (N, D) with class indices ``y`` (N,), the prompt set's class
    embeddings ``text`` (C, D) and the model's ``scale``; hyper-parameters from a validation part of the shots
    (:func:`split_shots`; see the module docstring). ``coop`` also needs ``prompt_model`` (the model, whose text
    tower it runs) and ``class_texts`` (each class's name as the prompt's last words).

    Raises:
        MedvlkitError: an unknown method, or a class without shots.
    """
    if method not in METHODS:
        raise MedvlkitError(f"--method {method}: valid options: {', '.join(METHODS)}")
    missing = [classnames[c] for c in range(len(classnames)) if not np.any(y == c)]
    if missing:
        raise MedvlkitError(f"no shots of class {missing[0]}: every class needs at least one")
    ad = FewShotAdapter(method, list(classnames), float(scale), text.astype(np.float32))
    if method == "coop":
        if prompt_model is None or class_texts is None:
            raise MedvlkitError("coop needs the model and the class texts (prompt_model, class_texts)")
        encode, ctx0 = coop_prompt_encoder(prompt_model, class_texts)
        shots = int(np.bincount(y).max())
        ctx, weights = fit_coop(x, y, encode, ctx0, scale, seed, coop_epochs(shots), list(prompt_model.parameters()))
        ad.arrays = {"weights": weights.astype(np.float32), "context": ctx.astype(np.float32)}
        ad.hyper = {"context_init": COOP_INIT, "n_context": int(ctx.shape[0]), "epochs": coop_epochs(shots),
                    "class_texts": list(class_texts), "source": "the paper's fixed recipe (no validation)"}
        return ad
    if method == "clap":
        weights, lambdas = fit_clap(x, y, text, scale, seed)
        ad.arrays = {"weights": weights.astype(np.float32)}
        ad.hyper = {"lambdas": [float(v) for v in lambdas], "source": "CLAP: zero-shot confidence on the shots"}
        return ad
    fit, val = split_shots(y, seed)
    if method == "clip_adapter":
        if len(val) == 0:
            ratio, source = CLIP_ADAPTER_RATIOS[0], "the paper's default ratio (one shot per class: nothing to " \
                                                    "validate on)"
        else:
            scores = []
            for r in CLIP_ADAPTER_RATIOS:
                down, up = fit_clip_adapter(x[fit], y[fit], text, scale, r, seed)
                logits = clip_adapter_logits(x[val], text, down, up, scale, r)
                scores.append(validation_key(logits, y[val]))
            ratio = CLIP_ADAPTER_RATIOS[max(range(len(scores)), key=lambda i: (scores[i], -i))]
            source = f"ratio chosen on {len(val)} validation shots (accuracy {max(scores)[0]:.3f}); the adapter " \
                     f"then trained on all {len(x)} shots"
        down, up = fit_clip_adapter(x, y, text, scale, ratio, seed)
        ad.arrays = {"down": down.astype(np.float32), "up": up.astype(np.float32)}
        ad.hyper = {"ratio": ratio, "source": source}
        return ad
    values = one_hot(y, len(classnames))
    if len(val) == 0:
        hyper: dict[str, Any] = dict(TIP_DEFAULTS) | {"source": "the paper's defaults (one shot per class: nothing "
                                                                "to validate on)"}
    else:
        keys = x[fit] if method == "tip_adapter" else fit_tip_keys(x[fit], y[fit], text, scale, TIP_DEFAULTS["alpha"],
                                                                   TIP_DEFAULTS["beta"], seed)
        best, acc = search_tip(x[val], y[val], text, keys, values[fit], scale)
        hyper = best | {"source": f"grid search on {len(val)} validation shots (accuracy {acc:.3f}); the cache "
                                  f"then built from all {len(x)} shots"}
    keys = x if method == "tip_adapter" else fit_tip_keys(x, y, text, scale, hyper["alpha"], hyper["beta"], seed)
    ad.arrays = {"keys": keys.astype(np.float32), "values": values.astype(np.float32)}
    ad.hyper = hyper
    return ad
