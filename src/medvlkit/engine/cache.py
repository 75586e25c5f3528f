"""On-disk embedding cache keyed by (model fingerprint, item id, file size, mtime).

Each call that computes new embeddings appends shard files (written atomically), so an interrupted
run keeps every shard it finished and a re-run only encodes what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import uuid
from pathlib import Path

import numpy as np

from medvlkit.data.items import item_stamp
from medvlkit.errors import MedvlkitError
from medvlkit.files import default_cache_dir

logger = logging.getLogger(__name__)
_SHARD_NAME = re.compile(r"shard-[0-9a-f]{32}\.npz")


def file_fingerprint(path: str) -> str:
    """``item|size|mtime_ns`` of an item's file (before any ``::member`` or ``@@view``), ``item|sop-uid`` of a
    DICOMweb instance (:func:`medvlkit.data.items.item_stamp`)."""
    return f"{path}|{item_stamp(path)}"


def item_key(item_id: str) -> str:
    """Cache key of one dataset item (an absolute path, or ``path::member``): hash of id, size, mtime."""
    return hashlib.sha1(file_fingerprint(item_id).encode()).hexdigest()


def _write_atomic(folder: Path, name: str, write) -> None:
    """``write(file)`` into ``folder/name`` through a hidden temporary file and a rename: a crash never leaves a
    half-written file under the final name (and ``.*.tmp`` never matches a reader's pattern)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedvlkitError(f"cannot write the embedding cache in {folder.parent.parent} ({err.strerror}); pass "
                            "--cache-dir to a writable folder, or --no-cache") from None
    tmp = folder / f".{name}-{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, folder / name)


class EmbeddingCache:
    """Embeddings of one model, stored as ``<root>/<fingerprint>/shard-*.npz``.

    Args:
        root: cache directory (``default_cache_dir()`` when None).
        fingerprint: the model's fingerprint (``model.fingerprint()``).
    """

    def __init__(self, fingerprint: str, root: str | Path | None = None, dim: int | None = None) -> None:
        self.dir = Path(root or default_cache_dir()) / "embeddings" / fingerprint
        self.dim = dim or None  # the model's embedding width, when known: shards of another width are damaged
        self._store: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._store is None:
            self._store = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                if not _SHARD_NAME.fullmatch(shard.name):
                    continue  # not ours (temporary files are named .shard-*.npz.tmp and never match)
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        keys, vectors = z["keys"].tolist(), z["vectors"]
                    if vectors.ndim != 2 or len(keys) != len(vectors):
                        raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
                    if self.dim is not None and vectors.shape[1] != self.dim:
                        raise ValueError(f"vectors of width {vectors.shape[1]}, the model's are {self.dim}")
                    if not np.isfinite(vectors).all():
                        raise ValueError("NaN or infinite vectors")
                    self._store.update(zip(keys, vectors))
                except Exception as err:  # noqa: BLE001 - a damaged zip raises many types
                    bad = shard.with_name(shard.name + ".corrupt")
                    logger.warning("cache shard %s is unreadable (%s: %s); moved aside to %s, its vectors will be "
                                   "computed again", shard, type(err).__name__, err, bad.name)
                    with contextlib.suppress(OSError):
                        os.replace(shard, bad)
        return self._store

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        store = self._load()
        return {k: store[k] for k in keys if k in store}

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Store (N, D) vectors for N keys in a new shard (atomic rename)."""
        if not keys:
            return
        _write_atomic(self.dir, f"shard-{uuid.uuid4().hex}.npz",
                      lambda f: np.savez(f, keys=np.asarray(keys), vectors=np.asarray(vectors, dtype=np.float32)))
        self._load().update(zip(keys, np.asarray(vectors, dtype=np.float32)))


class TextEmbeddingCache:
    """Text embeddings of one model, one ``.npy`` per list of texts: ``<root>/texts/<fingerprint>/<key>.npy``.

    The key hashes the texts in order and the batch size (MedCLIP-style pooling makes a text's vector depend on
    its batch). Only for weights that do not change while the cache is used (never during fine-tuning)."""

    def __init__(self, fingerprint: str, root: str | Path | None = None) -> None:
        self.dir = Path(root or default_cache_dir()) / "texts" / fingerprint

    @staticmethod
    def key(texts: list[str], batch_size: int) -> str:
        h = hashlib.sha256(f"batch={batch_size}".encode())
        for t in texts:
            h.update(b"\x00" + t.encode("utf-8"))
        return h.hexdigest()[:32]

    def get(self, texts: list[str], batch_size: int, dim: int | None = None) -> np.ndarray | None:
        """The cached (len(texts), D) vectors, or None (also for an unreadable file, or one of another shape than
        (len(texts), ``dim``) or with non-finite values: computed again and written over)."""
        path = self.dir / f"{self.key(texts, batch_size)}.npy"
        if not path.is_file():
            return None
        try:
            out = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            logger.warning("text cache file %s is unreadable (%s); computing again", path, err)
            return None
        if out.ndim != 2 or len(out) != len(texts) or (dim and out.shape[1] != dim) or not np.isfinite(out).all():
            logger.warning("text cache file %s holds vectors of shape %s (or non-finite ones); computing again",
                           path, out.shape)
            return None
        return out

    def put(self, texts: list[str], batch_size: int, vectors: np.ndarray) -> None:
        """Store vectors atomically (a crash leaves no half-written file under the final name)."""
        _write_atomic(self.dir, f"{self.key(texts, batch_size)}.npy", lambda f: np.save(f, vectors, allow_pickle=False))

