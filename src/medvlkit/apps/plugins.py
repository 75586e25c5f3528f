"""Extensions outside the package: backbones (``register_source``), dataset formats (``register_adapter``) and
prompt sets live in ordinary Python files that register themselves when imported.

medvlkit imports, before any command runs:
- every module named by an installed distribution's ``medvlkit.apps.plugins`` entry point;
- every entry of ``$MEDVLKIT_PLUGINS`` (``os.pathsep``-separated): a ``.py`` file path or an importable module name.

Plugins are code the user chose to run, named explicitly; nothing is imported from data or weight folders.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from medvlkit.errors import MedvlkitError, first_line

_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Import the plugins (once per process); returns what was imported.

    Raises:
        MedvlkitError: a named plugin file is missing or fails to import (the error names it).
    """
    from importlib.metadata import entry_points

    names = [ep.value for ep in entry_points(group="medvlkit.plugins")]  # the public group name, whatever the module
    names += [p for p in os.environ.get("MEDVLKIT_PLUGINS", "").split(os.pathsep) if p.strip()]
    done = []
    for name in names:
        if name in _LOADED:
            continue
        try:
            if name.endswith(".py"):
                path = Path(name).expanduser()
                if not path.is_file():
                    raise MedvlkitError(f"MEDVLKIT_PLUGINS: no such file {path}")
                spec = importlib.util.spec_from_file_location(f"medvlkit_plugin_{path.stem}", path)
                if spec is None or spec.loader is None:
                    raise MedvlkitError(f"MEDVLKIT_PLUGINS: {path} cannot be imported as a Python module")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except MedvlkitError:
            raise
        except Exception as err:  # noqa: BLE001 - a plugin may raise anything while importing
            raise MedvlkitError(f"plugin {name} failed to import ({first_line(err)})") from None
        _LOADED.add(name)
        done.append(name)
    return done
