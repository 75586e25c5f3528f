"""``--engine``: a frozen image tower run by ONNX Runtime on the CPU, where it is several times faster than PyTorch.

On the 2-core CPU medvlkit is developed on, lite's EfficientNet-Lite0 tower runs 2.6x faster through ONNX Runtime
than through PyTorch even in PyTorch's best mode (``benchmarks/lite_engines.py``). So a model may hand its frozen
image tower to a :class:`FastTower`:

- the graph is exported from the tower itself (``torch.export``, :func:`~medvlkit.models.onnx_graph.export_graph`)
  the first time, into ``$MEDVLKIT_ENGINES`` (default ``~/.cache/medvlkit/engines``), under a key made of the
  tower's weights (sha256 of every tensor), input size, PyTorch, ONNX Runtime and graph-format versions: another
  tower, or the same under other versions, gets its own graph; the folder is written under a temporary name and
  renamed, so an interrupted or concurrent build leaves nothing half-written;
- the graph is checked against PyTorch on real images that ship inside scikit-image and pydicom before it is used:
  eight when it is built (photos, fundus, histology, CT, MR), four at every load (a photo, histology, CT, MR). A
  feature difference over ``1e-4`` of the features' scale in a cached graph, or a damaged one, gets it rebuilt once;
  in a new graph it is an error (``--engine onnx``) or a fall back to PyTorch with a warning (``--engine auto``);
- the graph serves a call only while the tower is the one it was built from, unchanged, and only where PyTorch's own
  tower would compute the same thing: no gradients wanted, the tower in eval mode, fp32 on the CPU, the exported
  input size, not while a graph is traced for export. Fine-tuning (a step changes a weight in place), LoRA (new
  modules), ``.to(cuda)`` or ``.half()`` send every later call back to PyTorch, by themselves.

:func:`resolve_engine` is the one rule for ``auto``: ONNX Runtime on a CPU in fp32 when the ``onnx`` extra is
installed, PyTorch otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from medvlkit.errors import MedvlkitError, first_line

logger = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
"""``--engine``: ``auto`` (ONNX Runtime where it applies, else PyTorch), ``torch`` or ``onnx``."""
TOLERANCE = 1e-4
"""Largest difference allowed between the graph's and PyTorch's features, relative to the features' largest value."""
GRAPH_VERSION = 1  # bump when what is exported changes: older cached graphs are then never read
_NEEDED = ("onnx", "onnxruntime", "onnxscript")  # the `onnx` extra: the dynamo exporter needs onnxscript


def engines_dir() -> Path:
    """Where built graphs are kept: ``$MEDVLKIT_ENGINES`` or ``~/.cache/medvlkit/engines``."""
    return Path(os.environ.get("MEDVLKIT_ENGINES", Path.home() / ".cache" / "medvlkit" / "engines")).expanduser()


def onnx_runtime_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in _NEEDED)


def check_engine(engine: str) -> None:
    """Refuse an unknown ``--engine`` name in one line."""
    if engine not in ENGINES:
        raise MedvlkitError(f"--engine {engine}: valid options: {', '.join(ENGINES)}")


def resolve_engine(engine: str, device: str | torch.device, dtype: torch.dtype) -> str:
    """``torch`` or ``onnx``: what computes the image tower for ``engine`` on ``device`` in ``dtype``.

    Raises:
        MedvlkitError: an unknown engine; ``onnx`` off the CPU, in another dtype than fp32, or without the extra.
    """
    check_engine(engine)
    cpu_fp32 = torch.device(device).type == "cpu" and dtype == torch.float32
    if engine == "onnx":
        if not cpu_fp32:
            raise MedvlkitError(f"--engine onnx runs fp32 on the CPU (asked: {device}, {str(dtype).split('.')[-1]}); "
                                "use --engine torch (or auto) with --device/--precision")
        if not onnx_runtime_installed():
            raise MedvlkitError("--engine onnx needs ONNX Runtime: pip install 'medvlkit[onnx]' (or --engine torch)")
    if engine == "auto":
        return "onnx" if cpu_fp32 and onnx_runtime_installed() else "torch"
    return engine


def _state(module: torch.nn.Module) -> tuple:
    """What changes when a tower's weights do: each tensor's identity, in-place version, device and dtype."""
    return (module.training,) + tuple((id(t), t._version, t.device, t.dtype)
                                      for t in chain(module.parameters(), module.buffers()))


def weights_key(module: torch.nn.Module, image_size: int) -> str:
    """sha256 of the tower's tensors (names, shapes, dtypes, values), the input size and the versions a graph
    depends on."""
    import onnxruntime

    h = hashlib.sha256(f"v{GRAPH_VERSION}|{image_size}|torch {torch.__version__}|ort {onnxruntime.__version__}"
                       .encode())
    for name, t in module.state_dict().items():
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Forward(torch.nn.Module):
    """The tower's function as a module, for the exporter."""

    def __init__(self, tower: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.tower, self.forward_fn = tower, forward

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(pixels)


BUILD_CHECK = ("astronaut", "camera", "chelsea", "coffee", "retina", "immunohistochemistry", "CT_small.dcm",
               "MR_small.dcm")
"""The images a new graph is checked on: photos, fundus, histology (scikit-image), CT and MR (pydicom)."""
LOAD_CHECK = ("chelsea", "immunohistochemistry", "CT_small.dcm", "MR_small.dcm")
"""The images a cached graph is checked on at every load (the quick ones to read: 0.1 s in all)."""


def check_images(image_size: int, mean, std, names: tuple[str, ...] = BUILD_CHECK) -> torch.Tensor:
    """Real images that ship inside scikit-image (by function name) and pydicom (``.dcm`` test files), normalised for
    the tower: squashed to ``image_size`` with bilinear resampling."""
    import pydicom
    from skimage import data as skdata

    arrays = [getattr(skdata, name)() for name in names if not name.endswith(".dcm")]
    dicom_dir = Path(pydicom.__file__).parent / "data" / "test_files"
    for fname in (n for n in names if n.endswith(".dcm")):
        a = pydicom.dcmread(dicom_dir / fname).pixel_array.astype(np.float32)
        arrays.append(((a - a.min()) / max(float(np.ptp(a)), 1.0) * 255).astype(np.uint8))
    out = []
    for a in arrays:
        x = torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0)
        x = x[..., None].expand(*x.shape, 3) if x.ndim == 2 else x[..., :3]
        x = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=(image_size, image_size),
                                            mode="bilinear", antialias=True, align_corners=False)[0]
        out.append((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out)


class FastTower:
    """A verified ONNX Runtime copy of one frozen image tower, used by :meth:`serves` calls only."""

    part = 16
    """Images per graph run. lite's tower, batch of 64 on the 2-core CPU: whole 184 img/s with 624 MB of activations
    held by ONNX Runtime's arena; parts of 16 176 img/s with 136 MB; parts of 4 152 img/s, 16 MB."""

    def __init__(self, session, tower: torch.nn.Module, image_size: int, folder: Path, max_diff: float) -> None:
        self.session, self.image_size, self.folder, self.max_diff = session, image_size, folder, max_diff
        self._tower_state = _state(tower)

    def matches(self, tower: torch.nn.Module) -> bool:
        """Whether ``tower`` is still exactly the one the graph was built from (same tensors, none changed)."""
        return _state(tower) == self._tower_state

    def serves(self, tower: torch.nn.Module, pixels: torch.Tensor) -> bool:
        """Whether the graph computes what ``tower`` would for ``pixels`` now (see the module docstring)."""
        if type(pixels) is not torch.Tensor or torch.is_grad_enabled() or pixels.requires_grad:
            return False  # a fake tensor (torch.export), or a gradient wanted
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return False
        return (pixels.device.type == "cpu" and pixels.dtype == torch.float32 and pixels.ndim == 4
                and tuple(pixels.shape[1:]) == (3, self.image_size, self.image_size) and self.matches(tower))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().numpy()
        parts = [self.session.run(None, {"pixels": np.ascontiguousarray(x[i:i + self.part])})[0]
                 for i in range(0, len(x), self.part)]
        return torch.from_numpy(np.concatenate(parts))


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _difference(session, tower_fn, images: torch.Tensor) -> float:
    """Largest |graph - PyTorch| over the features of ``images``, relative to the features' largest |value|."""
    with torch.no_grad():
        want = tower_fn(images).numpy()
    got = session.run(None, {"pixels": np.ascontiguousarray(images.numpy())})[0]
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def _build(folder: Path, tower: torch.nn.Module, forward, image_size: int, images: torch.Tensor) -> None:
    """Export the graph into a temporary folder beside ``folder``, verify it, rename it into place."""
    from medvlkit.models.onnx_graph import export_graph

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with torch.no_grad():
            exporter = export_graph(_Forward(tower, forward).eval(), (images[:2],), tmp / "tower.onnx", ["pixels"],
                                    {"pixels": {0: "batch"}}, opset=18, output_name="features")
        diff = _difference(_session(tmp / "tower.onnx"), forward, images)
        if not diff <= TOLERANCE:  # the folder is not kept
            raise MedvlkitError(f"the new ONNX Runtime graph differs from PyTorch by {diff:.2e} (relative to the "
                                f"features) on {len(images)} check images, over {TOLERANCE:g}: use --engine torch")
        (tmp / "built.json").write_text(json.dumps({"exporter": exporter, "image_size": image_size,
                                                    "relative_max_diff": diff, "torch": torch.__version__}) + "\n")
        if folder.exists():  # a damaged graph is replaced
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "built.json").is_file():
                raise  # else another process (a torchrun rank) built it meanwhile: its graph is checked on load
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fast_tower(tower: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], name: str, image_size: int,
               mean, std, required: bool) -> FastTower | None:
    """The verified ONNX Runtime graph of ``forward`` (``tower``'s function, ``(B, 3, S, S) -> features``), built
    once per set of weights (see the module docstring).

    Args:
        tower: the module whose weights ``forward`` uses (eval mode, fp32, CPU).
        name: a readable prefix of the cache folder (``lite-image``).
        required: raise where the graph cannot be built or verified (``--engine onnx``); otherwise warn and return
            None (``auto``: the model keeps PyTorch).

    Raises:
        MedvlkitError: ``required`` and no verified graph.
    """
    folder = engines_dir() / f"{name}-{weights_key(tower, image_size)[:20]}"
    images = check_images(image_size, mean, std, LOAD_CHECK)
    try:
        for attempt in range(2):
            if attempt or not (folder / "built.json").is_file():
                logger.warning("building the ONNX Runtime engine of %s once, ~10 s (cached in %s; --engine torch "
                               "skips it)", name, folder)
                _build(folder, tower, forward, image_size, check_images(image_size, mean, std))
            try:
                session = _session(folder / "tower.onnx")
            except Exception as err:  # noqa: BLE001 - ORT raises its own types for damaged graphs
                logger.warning("the cached graph in %s cannot be loaded (%s): building it again", folder,
                               first_line(err))
                continue
            diff = _difference(session, forward, images)
            if diff <= TOLERANCE:
                return FastTower(session, tower, image_size, folder, diff)
            logger.warning("the graph in %s differs from PyTorch by %.2e (relative): building it again", folder, diff)
        raise MedvlkitError(f"the ONNX Runtime graph of {name} differs from PyTorch by {diff:.2e} (relative to the "
                            f"features), over {TOLERANCE:g}: use --engine torch")
    except (MedvlkitError, OSError) as err:
        why = str(err) if isinstance(err, MedvlkitError) else first_line(err)
        if required:
            raise MedvlkitError(f"--engine onnx: {why}") from None
        logger.warning("ONNX Runtime engine unavailable, PyTorch is used (%s)", why)
        return None
