"""Read the tensors of a TorchScript archive without executing it.

OpenAI's released CLIP ``.pt`` files (and so CheXzero's and PubMedCLIP's derivatives of them) are TorchScript
archives. ``torch.jit.load`` compiles and runs the archive's code (``code/``, ``__setstate__`` methods...), so a
crafted file runs whatever its author wrote. This module reads only ``data.pkl`` with an unpickler that allows
nothing but tensor rebuilds, ordered dicts and placeholder objects for the archive's own ``__torch__`` classes,
and the raw tensor bytes under ``data/``. Any other global in the pickle is refused.

A file that is small on disk must stay cheap to read: each storage record is read once however often it is
referenced, records must be stored uncompressed (as torch writes them) with exactly their declared size, all bytes
read are bounded by the archive's own size, a tensor may not cover more elements than its storage holds (a stride-0
view would become gigabytes once a converter copies it), and the module tree is walked once per object (a pickle of
shared dicts has exponentially many paths through few objects).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from medvlkit.errors import MedvlkitError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# Pure functions of TorchScript's pickle format that only wrap a list/value: replaced by the identity.
_JIT_PICKLE_IDENTITY = {"build_intlist", "build_floatlist", "build_boollist", "build_doublelist",
                        "build_tensorlist", "build_complexlist"}


class _ScriptObject:
    """Stand-in for an instance of one of the archive's TorchScript classes: it only keeps its state."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __call__(self, *args: object, **kwargs: object) -> _ScriptObject:
        # a pickled ``getattr(cls, name)(...)`` calls what the first placeholder returned: it yields another one
        return _ScriptObject(f"{self.qualname}()")

    # pickles of dict and list subclasses (Lightning's AttributeDict...) fill the object with SETITEMS / APPENDS
    def __setitem__(self, key: object, value: object) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: object) -> None:
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values: list) -> None:
        self.__dict__.setdefault("values", []).extend(values)


def _script_class(qualname: str) -> type:
    """A class whose construction (pickle's NEWOBJ) yields a :class:`_ScriptObject` named ``qualname``."""
    return type("ScriptClass", (), {"__new__": lambda cls, *args, **kwargs: _ScriptObject(qualname)})


def _restore_type_tag(value: object, _tag: object = None) -> object:
    return value


def _identity(value: object) -> object:
    return value


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Allows tensor rebuilds, OrderedDict and ``__torch__`` placeholders; refuses every other global, or, with
    ``inert_objects``, replaces it by an inert placeholder that only keeps its state (its code never runs)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path,
                 inert_objects: bool = False) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.inert_objects = inert_objects
        self.replaced: set[str] = set()
        self.storages: dict[str, torch.storage.TypedStorage] = {}  # each record read once
        self.budget = Path(source).stat().st_size  # bytes of records: never more than the archive holds

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return torch._utils._rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_IDENTITY:
            return _identity
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if self.inert_objects:
            self.replaced.add(f"{module}.{name}")
            return _script_class(f"{module}.{name}")
        raise MedvlkitError(f"'{self.source}' refused: its data.pkl asks for '{module}.{name}', which is not a "
                            "tensor; loading it could run code. Only weights archives are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise MedvlkitError(f"'{self.source}' refused: unexpected persistent id {str(pid)[:80]} in data.pkl")
        _, dtype, key, _location, numel = pid
        key = str(key)
        if key in self.storages:  # referenced again: the same storage, not another read
            return self.storages[key]
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise MedvlkitError(f"'{self.source}' is damaged: tensor record {name} is missing") from None
        expected = int(numel) * torch.empty((), dtype=dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED:
            raise MedvlkitError(f"'{self.source}' refused: tensor record {name} is compressed (torch stores records "
                                "uncompressed; a compressed one can inflate far beyond the file's size)")
        if info.file_size != expected:
            raise MedvlkitError(f"'{self.source}' is damaged: {name} holds {info.file_size} bytes, expected {expected}")
        self.budget -= expected
        if self.budget < 0:
            raise MedvlkitError(f"'{self.source}' refused: its tensor records add up to more bytes than the file has")
        raw = self.archive.read(name)
        untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw else \
            torch.UntypedStorage(0)
        self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self.storages[key]

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *args):
        """``torch._utils._rebuild_tensor_v2``, after checking the view stays inside its storage and covers no more
        elements than it holds (no stride-0 expansion to gigabytes)."""
        check_view(self.source, storage._size(), int(storage_offset), tuple(size), tuple(stride))
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *args)


def check_view(source: Path | str, storage_numel: int, offset: int, size: tuple, stride: tuple) -> None:
    """Refuse a tensor view that reaches outside its storage or has more elements than its storage holds.

    Raises:
        MedvlkitError: naming the file and the view.
    """
    if len(size) != len(stride) or any(not isinstance(v, int) or v < 0 for v in (*size, *stride, offset)):
        raise MedvlkitError(f"'{source}' refused: a tensor with size {size}, stride {stride}, offset {offset}")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage_numel or numel > storage_numel:
        raise MedvlkitError(f"'{source}' refused: a tensor of shape {list(size)} (stride {list(stride)}) covers more "
                            f"than its storage of {storage_numel} elements; weights are never such views")


def check_tensors_own_storage(source: Path | str, tensors: dict) -> None:
    """:func:`check_view` for every tensor of a state dict, whatever reader produced it."""
    for value in tensors.values():
        if isinstance(value, torch.Tensor) and value.numel():
            check_view(source, value.untyped_storage().nbytes() // max(value.element_size(), 1),
                       int(value.storage_offset()), tuple(value.shape), tuple(value.stride()))


def is_torchscript_archive(path: Path) -> bool:
    """True for a zip holding TorchScript's ``constants.pkl`` and ``data.pkl`` records."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any(n.endswith("data.pkl") for n in names)


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name (like ``state_dict()``).

    Nothing in the archive is executed: its code is never compiled and its pickle may only rebuild tensors.

    Raises:
        MedvlkitError: the archive asks for anything else, or is damaged.
    """
    try:
        with zipfile.ZipFile(path) as z:
            data_pkl = next(n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") <= 1)
            prefix = data_pkl[: -len("data.pkl")]
            root = _TensorOnlyUnpickler(z.read(data_pkl), z, prefix, path).load()
    except MedvlkitError:
        raise
    except StopIteration:
        raise MedvlkitError(f"'{path}' is not a TorchScript archive (no data.pkl)") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle or zip raises many types
        raise MedvlkitError(f"'{path}' could not be read as a TorchScript archive ({type(err).__name__}: "
                            f"{str(err)[:120]})") from None
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set(), path)
    return out


def read_checkpoint_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The ``state_dict`` of a training checkpoint saved with ``torch.save`` (PyTorch Lightning's ``.ckpt``), whose
    other entries (hyper-parameters as OmegaConf or argparse objects...) ``weights_only`` loading refuses.

    Nothing in the file runs: every global other than tensor rebuilds becomes an inert placeholder (returned by name,
    for the log), and only the tensors under ``state_dict`` are kept.

    Raises:
        MedvlkitError: not a zip-format ``torch.save`` file, damaged, or without a ``state_dict`` of tensors.
    """
    try:
        with zipfile.ZipFile(path) as z:
            data_pkl = next(n for n in z.namelist() if n.endswith("data.pkl") and n.count("/") <= 1)
            unpickler = _TensorOnlyUnpickler(z.read(data_pkl), z, data_pkl[: -len("data.pkl")], path,
                                             inert_objects=True)
            root = unpickler.load()
    except MedvlkitError:
        raise
    except (zipfile.BadZipFile, StopIteration):
        raise MedvlkitError(f"'{path}' is not a zip-format torch.save checkpoint (files written by torch < 1.6 are "
                            "not read: re-save the state_dict with a current torch)") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle or zip raises many types
        raise MedvlkitError(f"'{path}' could not be read as a checkpoint ({type(err).__name__}: "
                            f"{str(err)[:120]})") from None
    sd = root.get("state_dict") if isinstance(root, dict) else None
    if not isinstance(sd, dict):
        raise MedvlkitError(f"'{path}' has no state_dict entry (top-level keys: "
                            f"{list(root)[:6] if isinstance(root, dict) else type(root).__name__})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, unpickler.replaced


def _collect(obj: object, prefix: str, out: dict[str, torch.Tensor], seen: set[int], source: Path) -> None:
    """Tensors of a module tree by dotted name; every container is visited once (a tree has no shared nodes)."""
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach()
        return
    if not isinstance(obj, (_ScriptObject, dict)):
        return
    if id(obj) in seen:
        raise MedvlkitError(f"'{source}' refused: its module tree reaches one object by two paths ('{prefix[:40]}"
                            "...'); a module tree is a tree")
    seen.add(id(obj))
    if isinstance(obj, _ScriptObject):
        _collect(obj.state, prefix, out, seen, source)
    else:
        for key, value in obj.items():
            if isinstance(key, str):
                _collect(value, f"{prefix}{key}.", out, seen, source)
