"""The options every task shares, as two objects built once (by the CLI from its shared flags, or by a Python
caller) and passed to the library:

- :class:`RunOptions`: how a model runs over images: device, the weights' dtype, batch size, loader workers, the
  embedding cache, what to do with unreadable files, progress bars, a tokenizer folder.
- :class:`DataOptions`: how a dataset is read: the adapter and its options (CSV path and label columns, CheXpert's
  uncertain labels, the folder image paths are relative to).

Mixed-precision *training* is a different thing (autocast during the forward pass, weights kept in fp32): it is
``FinetuneConfig.amp`` / ``--amp``, never ``precision``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvlkit.errors import MedvlkitError

if TYPE_CHECKING:
    import numpy as np

    from medvlkit.data.dataset import ImageDataset
    from medvlkit.models.base import ModelBase


ON_ERROR = ("fail", "skip")
"""What to do with an unreadable image: stop naming it, or skip it and list it in result.json."""


@dataclass(frozen=True)
class RunOptions:
    """How a model runs over data.

    Attributes:
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (a GPU when one is visible).
        precision: the weights' dtype for inference: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: images per forward pass; ``workers``: image loading processes (0: this process).
        cache: read and write the embedding cache (in ``cache_dir``, default ``$MEDVLKIT_CACHE`` or
            ``~/.cache/medvlkit``).
        on_error: ``fail`` on the first unreadable image, or ``skip`` it and list it in ``result.json``.
        progress: show progress bars.
        tokenizer: a tokenizer folder, for the sources whose weights come without one (``openai-ckpt:``...).
        fast_decode: decode large JPEGs at a reduced scale (at least twice the model's input size) before resizing.
        engine: what computes the image tower: ``auto``, ``torch`` or ``onnx``
            (:mod:`medvlkit.models.fast_tower`; ``auto`` is ONNX Runtime for ``lite`` on a CPU in fp32).
    """

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    workers: int = 2
    cache: bool = True
    cache_dir: str | None = None
    on_error: str = "fail"
    progress: bool = True
    tokenizer: str | None = None
    fast_decode: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        from medvlkit.models.fast_tower import check_engine
        from medvlkit.models.registry import torch_dtype

        torch_dtype(self.precision)  # checked now, before any data is read
        check_engine(self.engine)
        if self.on_error not in ON_ERROR:
            raise MedvlkitError(f"--on-error {self.on_error}: valid options: {', '.join(ON_ERROR)}")
        if self.batch_size < 1:
            raise MedvlkitError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers < 0:
            raise MedvlkitError(f"--workers {self.workers}: must be 0 or more")

    def load_model(self, spec: str) -> ModelBase:
        """The model ``spec`` names, on this device, in this dtype (with ``tokenizer`` when set)."""
        from medvlkit.models import create_model

        kwargs = {"tokenizer": self.tokenizer} if self.tokenizer else {}
        return create_model(spec, device=self.device, precision=self.precision, engine=self.engine, **kwargs)

    def embed_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`medvlkit.engine.features.embed_images` (and of every task that embeds)."""
        return dict(batch_size=self.batch_size, num_workers=self.workers, cache=self.cache,
                    cache_dir=None if self.cache_dir is None else str(self.cache_dir), on_error=self.on_error,
                    progress=self.progress, fast_decode=self.fast_decode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NOT_ADAPTER = ("format", "exclude", "allow_seen", "training_manifest")
"""DataOptions fields that are not passed to the dataset adapter."""


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read.

    Attributes:
        format: the adapter (``medvlkit datasets`` lists them) or ``auto`` to detect it.
        path_column: the CSV/JSONL column holding image paths; ``label_columns``: comma-separated label columns.
        uncertain: CheXpert-style ``-1`` labels: ``ignore`` (unknown, left out of that class's metrics; the default),
            ``zeros`` or ``ones``; CSV data only.
        image_root: the folder CSV/JSONL image paths are relative to.
        group_column: the CSV column naming each image's patient (default: ``Patient ID``, ``patient_id``,
            ``subject_id`` when present), so held-out validation keeps a patient's images on one side.
        exclude: an audit folder (``medvlkit audit --out DIR``) whose exclusion list is left out of every split read
            (the train / val side of cross-split duplicates and patients; never test images).
        allow_seen: keep validation and test images the model was trained on (:mod:`medvlkit.engine.seen`; by
            default they are set aside, and result.json says how many either way).
        training_manifest: a file listing the model's training images (``pixel-sha1`` or a CSV of image ids), used
            instead of the one the model declares.
        labels: for ``dicomweb:`` data, a CSV of labels keyed by ``SOPInstanceUID``, ``SeriesInstanceUID`` or
            ``StudyInstanceUID`` (:func:`medvlkit.data.dicomweb.load_dicomweb`).
    """

    format: str = "auto"
    path_column: str | None = None
    label_columns: str | None = None
    uncertain: str | None = None
    image_root: str | None = None
    group_column: str | None = None
    exclude: str | None = None
    allow_seen: bool = False
    training_manifest: str | None = None
    labels: str | None = None

    def adapter_options(self) -> dict[str, Any]:
        """The adapter options a user set (the adapters' own defaults for the rest)."""
        return {k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(self).items() if k not in NOT_ADAPTER and v is not None}

    def options(self) -> dict[str, Any]:
        """Every option set but the format, as a config records them (``FinetuneConfig.dataset_options``)."""
        return self.adapter_options() | {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
                                         if k in NOT_ADAPTER and k != "format" and v}

    def load(self, path: str | Path, split: str | None = None, format: str | None = None) -> ImageDataset:
        """The dataset at ``path`` (its ``split``), read with these options (``format`` overrides the adapter), without
        the files of the ``exclude`` audit."""
        from medvlkit.data import load_dataset
        from medvlkit.data.exclusions import apply_exclusions, read_exclusions

        ds = load_dataset(path, split=split, format=format or self.format, **self.adapter_options())
        return apply_exclusions(ds, read_exclusions(self.exclude)) if self.exclude else ds

    def held_out(self, dataset: ImageDataset, model: ModelBase, role: str = "test", num_workers: int = 0,
                 progress: bool = True, cache_dir: str | None = None, **_other_embed_options: Any) -> ImageDataset:
        """``dataset`` without the images ``model`` trained on, unless ``allow_seen`` (:func:`medvlkit.engine.seen.
        set_aside_seen`; ``role``: ``test`` for scored data, ``val`` for data that chooses). Takes a task's embedding
        options (:meth:`RunOptions.embed_kwargs`) for its workers, progress bar and cache folder."""
        from medvlkit.engine.seen import set_aside_seen

        return set_aside_seen(dataset, model, role, self.allow_seen, self.training_manifest, num_workers, progress,
                              None if cache_dir is None else Path(cache_dir))

    def holdout_unseen(self, dataset: ImageDataset, model: ModelBase, items: list[str], train_idx: np.ndarray,
                       val_idx: np.ndarray, num_workers: int = 0, progress: bool = True, cache_dir: str | None = None,
                       **_other_embed_options: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """A validation part held out of ``dataset`` (``items[val_idx]``) whose images ``model`` trained on go back
        to training, unless ``allow_seen`` (:func:`medvlkit.engine.seen.holdout_without_seen`). Returns (train_idx,
        val_idx, record)."""
        from medvlkit.engine.seen import holdout_without_seen

        return holdout_without_seen(dataset, model, items, train_idx, val_idx, self.allow_seen,
                                    self.training_manifest, num_workers, progress,
                                    None if cache_dir is None else Path(cache_dir))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
