"""What a server answers with, without any HTTP: the model (loaded once), its prompt sets encoded once, the gate,
an optional search index, and the functions that turn decoded uploads into answers. The HTTP layer
(:mod:`medvlkit.apps.serve.app`) runs :meth:`ServeEngine.encode_pixels` through the micro-batcher on one inference
thread and everything else on worker threads; used directly, every method is an ordinary blocking call.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medvlkit.data.io import read_image
from medvlkit.data.prompts import PromptSet, list_prompt_sets, load_prompt_set, prompt_set_from_classes
from medvlkit.engine.answer import POS_NEG_OVER, ClassVectors, answer, class_vectors
from medvlkit.engine.features import embed_texts
from medvlkit.engine.pixels import view_of
from medvlkit.engine.scores import check_finite
from medvlkit.errors import MedvlkitError
from medvlkit.models.base import ModelBase
from medvlkit.tasks.domain import check_domain, domain_vectors
from medvlkit.tasks.gate import gate_vectors, medical_probability
from medvlkit.tasks.search import SearchIndex

THUMBNAIL_SIDE = 256
_ADHOC_SETS = 64  # class lists given in requests whose vectors are kept


def default_prompt_sets() -> list[str]:
    """Every shipped prompt set but the gate's own."""
    return [n for n in list_prompt_sets() if n != "medical_gate"]


@dataclass(frozen=True)
class ServeLimits:
    """What one request may carry, and what the server spends at once.

    Attributes:
        max_upload_bytes: the whole request body.
        max_request_pixels: the pixels a request's images may declare in their headers, together (checked before
            anything is decoded; each image is also held to ``MEDVLKIT_MAX_PIXELS``).
        max_decode_pixels: the pixels being decoded at any moment, over all requests (decoding waits its turn).
        body_timeout_s: how long a request body may take to arrive, in all (a slow partial body is dropped).
        fast_decode: decode large JPEG uploads at a reduced scale (at least twice the model's input size), as
            ``--fast-decode`` does for files.
    """

    max_upload_bytes: int = 32 << 20
    max_files: int = 16
    max_texts: int = 256
    max_k: int = 100
    max_request_pixels: int = 100_000_000
    max_decode_pixels: int = 100_000_000
    body_timeout_s: float = 60.0
    fast_decode: bool = True


class ServeEngine:
    """A loaded model ready to answer requests.

    Args:
        model: any medvlkit model (``create_model``); put in eval mode.
        prompt_sets: the prompt sets offered (names or files); default: every shipped set but the gate's. The first
            is the default of a request that names none.
        index: a search index built with this model (``load_index``), for ``/search`` and similar cases.
        gate_threshold: P(medical) threshold; default the model's validated one. A model without one reports
            P(medical) with no verdict.
        cache: read/write prompt vectors in the on-disk text cache (a restart does not re-encode them).
    """

    def __init__(self, model: ModelBase, prompt_sets: Sequence[str | PromptSet] | None = None,
                 index: SearchIndex | None = None, gate_threshold: float | None = None, cache: bool = True,
                 cache_dir: str | None = None) -> None:
        model.eval()
        self.model, self.index = model, index
        if index is not None:
            index.check_model(model)
        if not model.has_text:  # an image-only model: /embed and /search by image; zero-shot is refused per request
            if prompt_sets:
                model.require_text("serving prompt sets (--prompts)")
            self.prompt_sets, self.default_set, self.gate, self.domain = {}, "", None, None
        else:
            sets = [p if isinstance(p, PromptSet) else load_prompt_set(p)
                    for p in (prompt_sets or default_prompt_sets())]
            if not sets:
                raise MedvlkitError("serve needs at least one prompt set (--prompts NAME|FILE)")
            self.prompt_sets = {p.name: class_vectors(model, p, cache=cache, cache_dir=cache_dir) for p in sets}
            self.default_set = sets[0].name
            self.gate = gate_vectors(model, cache=cache, cache_dir=cache_dir)
            self.domain = domain_vectors(model, cache=cache, cache_dir=cache_dir)  # the domain check's modality set
        self.gate_threshold = gate_threshold if gate_threshold is not None else model.validated_gate_threshold
        self._adhoc: OrderedDict[tuple, ClassVectors] = OrderedDict()
        self._adhoc_lock = threading.Lock()

    # --- images -------------------------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str = "upload", fast_decode: bool = False) -> torch.Tensor:
        """An upload's bytes -> the model's uint8 input (3, S, S), by the one pixel path
        (:func:`~medvlkit.engine.pixels. view_of`): the same reading and geometry as ``embed`` (``fast_decode``: as
        ``embed --fast-decode``).

        Raises:
            ImageReadError: not a supported image (by content), corrupt, or over the pixel limit
                (:class:`~medvlkit.errors.ImageTooLargeError`).
        """
        pre = self.model.image_preprocessor
        return view_of(data, pre, name, draft=pre.cfg.decode_size() if fast_decode else None)

    @torch.inference_mode()
    def encode_pixels(self, pixels: list[torch.Tensor]) -> np.ndarray:
        """One forward pass over decoded images (from :meth:`decode`). Returns (N, D) unit float32."""
        pre, device = self.model.image_preprocessor, self.model.device
        batch = pre.normalize(torch.stack(pixels).to(device, non_blocking=True))
        out = self.model.encode_image(batch).float().cpu().numpy()
        check_finite(out, "image embeddings")
        return out

    def embed_images(self, files: list[bytes]) -> np.ndarray:
        """Unit embeddings of image files' bytes (blocking; one batch)."""
        return self.encode_pixels([self.decode(data, f"file {i + 1}") for i, data in enumerate(files)])

    # --- texts and prompts --------------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings of texts (tokenised to the model's context length). Returns (N, D)."""
        return embed_texts(self.model, texts)

    def prompt_vectors(self, prompts: str | None = None, classes: str | None = None,
                       mode: str | None = None) -> ClassVectors:
        """The class vectors a request asks for: a served prompt set by name (default: the first), restricted to
        ``classes`` (comma-separated names or aliases of its classes: the softmax then runs over those only, as the
        CLI's does over a labelled dataset's classes); or ``classes`` alone, ensembled with the generic templates
        (encoded once per list and kept: the only case that runs the model, see :meth:`needs_model`)."""
        self.model.require_text("zero-shot answers (/zeroshot)")
        if classes and not prompts:
            key = _adhoc_key(classes, mode)
            with self._adhoc_lock:
                if key in self._adhoc:
                    self._adhoc.move_to_end(key)
                    return self._adhoc[key]
            vectors = class_vectors(self.model, prompt_set_from_classes(list(key[0]), key[1]), cache=False)
            with self._adhoc_lock:
                self._adhoc[key] = vectors
                while len(self._adhoc) > _ADHOC_SETS:
                    self._adhoc.popitem(last=False)
            return vectors
        name = prompts or self.default_set
        if name not in self.prompt_sets:
            raise MedvlkitError(f"prompt set '{name}' is not served; served: {', '.join(self.prompt_sets)} "
                                "(start the server with --prompts to add one)")
        served = self.prompt_sets[name]
        if mode and mode != served.mode:
            raise MedvlkitError(f"prompt set '{name}' is served in {served.mode} mode, not {mode}")
        return served.restrict(_class_list(classes)) if classes else served

    def needs_model(self, classes: str | None = None, mode: str | None = None, prompts: str | None = None) -> bool:
        """Whether :meth:`prompt_vectors` would encode texts (a class list not seen yet), i.e. must run on the
        model's thread; a served prompt set is a dictionary lookup."""
        if not classes or prompts:
            return False
        with self._adhoc_lock:
            return _adhoc_key(classes, mode) not in self._adhoc

    # --- answers ------------------------------------------------------------------------------------------------
    def read(self, vectors: np.ndarray, prompts: ClassVectors, names: list[str]) -> list[dict]:
        """Gate verdict and class probabilities for each row of (N, D) image embeddings."""
        p_medical = medical_probability(self.model, vectors, vectors=self.gate)
        ans = answer(vectors, prompts, self.model.logit_scale)
        probs, classes = ans.probs, ans.classnames
        domain = check_domain(self.model, vectors, prompts.prompts, self.domain)
        out = []
        for i, (name, p_med, row) in enumerate(zip(names, p_medical, probs)):
            verdict = None if self.gate_threshold is None else bool(p_med >= self.gate_threshold)
            out.append({"file": name,
                        "gate": {"p_medical": float(p_med), "threshold": self.gate_threshold, "medical": verdict},
                        "domain": None if domain is None else domain.row(i),
                        "probabilities": {c: float(p) for c, p in zip(classes, row)},
                        "prediction": classes[int(row.argmax())] if prompts.mode == "softmax" else None,
                        "softmax_over": ans.softmax_over})
        return out

    def heatmap(self, pixels: torch.Tensor, prompts: ClassVectors, class_name: str) -> dict:
        """Where the model sees ``class_name`` in one decoded image (uint8 (3, S, S) from :meth:`decode`): the
        :mod:`medvlkit.tasks.explain` map (log-probability target for softmax sets) as a PNG overlay of the model's
        view,
        base64. Runs the model with gradients: call it on the model's thread.

        Raises:
            MedvlkitError: no heatmap method for this model (an ONNX export, a tower without one).
        """
        import base64

        from medvlkit.tasks.explain import heatmaps, method_for, overlay, targets_from_vectors

        method = method_for(self.model)
        targets = targets_from_vectors(prompts, self.model.logit_scale, "log_prob")
        c = targets.classnames.index(class_name)
        maps, _ = heatmaps(self.model, self.model.image_preprocessor.normalize(pixels[None]).to(self.model.device),
                           targets, method, classes=[c])
        buf = io.BytesIO()
        overlay(pixels.numpy(), maps[0, 0]).save(buf, format="PNG")
        return {"class": class_name, "method": method, "target": targets.target,
                "png_base64": base64.b64encode(buf.getvalue()).decode()}

    def describe_prompts(self, prompts: ClassVectors) -> dict:
        """The prompt set a response used: its name, mode and each class's prompt texts."""
        ps = prompts.prompts
        over = list(ps.classnames) if prompts.mode == "softmax" else POS_NEG_OVER
        return {"name": ps.name, "mode": prompts.mode, "classes": ps.classnames, "softmax_over": over,
                "domain": ps.domain, "texts": ps.class_texts(prompts.mode)}

    def search(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """The ``k`` nearest indexed images per query row: id (for ``/image/{id}``), score, label, caption."""
        if self.index is None:
            raise MedvlkitError("no search index is loaded: start the server with --index DIR (built by "
                                "`medvlkit index`)")
        return [[{"id": j, "score": s} | self.index.details.get(self.index.files[j], {}) for j, s in row]
                for row in self.index.search_ids(vectors, k)]

    def thumbnail(self, image_id: int) -> bytes:
        """A JPEG thumbnail (at most 256 px a side) of indexed image ``image_id``.

        Raises:
            KeyError: no index, or no such id.
        """
        if self.index is None or not 0 <= image_id < len(self.index.files):
            raise KeyError(image_id)
        return _thumbnail(self.index.files[image_id])

    def info(self) -> dict:
        """The model, its preprocessing, the prompt sets and the index, for ``/info``."""
        import platform

        import medvlkit

        m = self.model
        index = None if self.index is None else {k: self.index.meta.get(k) for k in ("n", "kind", "dataset")} | {
            "size": len(self.index.files)}
        return {"model": m.name, "fingerprint": m.fingerprint(), "scope": m.scope, "device": str(m.device),
                "dtype": str(m.dtype), "engine": m.engine,
                "logit_scale": float(m.logit_scale) if m.has_text else None, "text_tower": m.has_text,
                "preprocess": m.preprocess_cfg.to_dict(),
                "prompt_sets": {n: {"mode": v.mode, "classes": v.prompts.classnames}
                                for n, v in self.prompt_sets.items()},
                "default_prompt_set": self.default_set,
                "gate": {"threshold": self.gate_threshold,
                         "source": "given" if self.gate_threshold != m.validated_gate_threshold else
                         (f"validated for {m.name}" if self.gate_threshold is not None else "none: P(medical) only")},
                "index": index,
                "versions": {"medvlkit": medvlkit.__version__, "torch": torch.__version__,
                             "python": platform.python_version()}}


def _class_list(classes: str) -> list[str]:
    return [c.strip() for c in classes.split(",") if c.strip()]


def _adhoc_key(classes: str, mode: str | None) -> tuple[tuple[str, ...], str]:
    """A request's class list and mode as the key of its kept vectors."""
    return tuple(_class_list(classes)), mode or "softmax"


_THUMBNAILS: OrderedDict[str, bytes] = OrderedDict()
_THUMBNAIL_LOCK = threading.Lock()


def _thumbnail(path: str, keep: int = 512) -> bytes:
    """JPEG thumbnail of an indexed file, the last ``keep`` kept in memory."""
    with _THUMBNAIL_LOCK:
        if path in _THUMBNAILS:
            _THUMBNAILS.move_to_end(path)
            return _THUMBNAILS[path]
    image = read_image(path)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    data = buf.getvalue()
    with _THUMBNAIL_LOCK:
        _THUMBNAILS[path] = data
        while len(_THUMBNAILS) > keep:
            _THUMBNAILS.popitem(last=False)
    return data
