"""``--config FILE.json`` on any verb: its options from a JSON object, such as the ``config.json`` that ``finetune``
and ``pretrain`` write into their run folder, so a run is repeated (or varied) without retyping it:

    medvlkit finetune --config runs/cxr-lora/config.json --out runs/cxr-lora-seed1 --seed 1

Keys are the verb's option names with underscores (``batch_size``, ``val_split``...; ``out_dir`` and ``format``
as the run configs store them; ``dataset_options`` and other nested objects are read as their keys); ``null`` means
"the default". The flags given on the command line win over the file's.
"""

from __future__ import annotations

import json
from pathlib import Path

from medvlkit.errors import MedvlkitError

_ALIASES = {"out_dir": "out", "format": "fmt"}  # names in the configs runs write -> the verbs' parameter names
_INVERTED = {"cache": "no_cache", "progress": "quiet"}  # booleans stored the other way round
_NESTED = ("dataset_options", "run", "data")  # objects whose keys are options too


def expand_config(argv: list[str], group) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the flags the file names, placed right after the verb so that
    flags given on the command line (later) win.

    Raises:
        MedvlkitError: no file after ``--config``, not a JSON object, or a key the verb has no option for.
    """
    if "--config" not in argv:
        return argv
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise MedvlkitError("--config needs a JSON file, e.g. --config runs/x/config.json")
    path, rest = Path(argv[at + 1]), argv[:at] + argv[at + 2:]
    verb_at = next((i for i, a in enumerate(rest) if not a.startswith("-")), None)
    command = group.commands.get(rest[verb_at]) if verb_at is not None else None
    if verb_at is None or command is None:
        raise MedvlkitError("--config goes after a verb, e.g. medvlkit finetune --config FILE.json")
    flags = _flags(_read(path), command, path, rest[verb_at])
    return rest[:verb_at + 1] + flags + rest[verb_at + 1:]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedvlkitError(f"--config {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvlkitError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise MedvlkitError(f"--config {path}: must hold a JSON object of option names and values")
    flat = {k: v for k, v in data.items() if not (k in _NESTED and isinstance(v, dict))}
    for key in _NESTED:
        if isinstance(data.get(key), dict):
            flat |= data[key]
    return flat


def _flags(values: dict, command, path: Path, verb: str) -> list[str]:
    params = {p.name: p for p in command.params if p.param_type_name == "option"}
    out, unknown = [], []
    for key, value in values.items():
        name = _ALIASES.get(key, key)
        inverted = name in _INVERTED
        param = params.get(_INVERTED.get(name, name))
        if param is None:
            unknown.append(key)
            continue
        if value is None:
            continue
        flag = max((o for o in param.opts if o.startswith("--")), key=len)
        if param.is_flag:
            out += [flag] if bool(value) != inverted else []
        elif isinstance(value, (list, tuple)):
            out += [a for v in value for a in (flag, str(v))] if param.multiple else [flag, ",".join(map(str, value))]
        else:
            out += [flag, str(value)]
    if unknown:
        raise MedvlkitError(f"--config {path}: `medvlkit {verb}` has no option for {', '.join(sorted(unknown))}")
    return out
