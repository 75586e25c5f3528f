"""Reading back the files medvlkit writes (index folders, probes, fine-tuned folders, lite heads, result files...):
the checks each kind's one reader is built from. A damaged or edited file is answered in one line that names the
file and what was expected, never a traceback from a library deep inside.

A kind's reader (``search.load_index``, ``probe.LinearProbe.load``, ``finetune.saved.read_meta`` /
``apply_finetuned``, ``models.lite.load_heads``, ``results.read_result``...) checks the schema with
:func:`read_json_object` and :func:`json_field`, reads tensors with :func:`read_safetensors`, and checks shapes
against the model with :func:`check_shapes`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from medvlkit.errors import MedvlkitError, first_line


def _bad(path: Path | str, kind: str, what: str) -> MedvlkitError:
    return MedvlkitError(f"{path}: not a valid {kind} ({what}); write it again with medvlkit, or pass another")


def read_json_object(path: Path, kind: str) -> dict:
    """A JSON file holding one object.

    Raises:
        MedvlkitError: missing, unreadable, not JSON, or not an object; naming the file and the kind.
    """
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as err:
        raise _bad(path, kind, err.strerror or str(err)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(path, kind, f"not JSON: {first_line(err)}") from None
    if not isinstance(obj, dict):
        raise _bad(path, kind, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def json_field(obj: dict, name: str, kinds: type | tuple[type, ...], path: Path | str, kind: str, *,
          required: bool = True, default=None, check=None, expected: str = ""):
    """``obj[name]`` when it has one of ``kinds`` (bool is never taken for int or float) and passes ``check``.

    Raises:
        MedvlkitError: missing (when ``required``), of another type, or failing ``check``: naming the field and what
            was expected (``expected``, else the types).
    """
    if name not in obj:
        if required:
            raise _bad(path, kind, f"no '{name}' field")
        return default
    value = obj[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds) or (check is not None and not check(value)):
        want = expected or " or ".join(k.__name__ for k in kinds)
        raise _bad(path, kind, f"'{name}' is {json.dumps(value, default=str)[:60]}, expected {want}")
    return value


def positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def read_safetensors(path: Path, kind: str) -> dict:
    """The tensors of a ``.safetensors`` file (torch), as a reader of ``kind`` needs them.

    Raises:
        MedvlkitError: missing, truncated or not a safetensors file; naming it.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise _bad(path.parent, kind, f"{path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise _bad(path, kind, f"unreadable tensors: {first_line(err)}") from None


def check_shapes(found: dict, expected: dict, path: Path | str, kind: str) -> None:
    """Every tensor of ``found`` has the shape ``expected`` gives for its name (names ``expected`` lacks are the
    caller's to judge).

    Raises:
        MedvlkitError: naming the first tensor of another shape, both shapes and the file.
    """
    for name, tensor in found.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name]):
            raise _bad(path, kind, f"tensor '{name}' has shape {list(tensor.shape)}, the model expects "
                                   f"{list(expected[name])}")
