"""Prompt sets: class names, synonyms, templates, and positive/negative pairs for multi-label zero-shot.

A prompt set is a JSON file (see ``data/prompts/*.json``)::

    {"name": "pneumonia", "mode": "softmax", "templates": ["a chest x-ray showing {}."],
     "classes": {"pneumonia": {"aliases": ["PNEUMONIA"], "prompts": ["pneumonia", "lung infection"]},
                 "normal":    {"aliases": ["NORMAL"],    "prompts": ["no pneumonia", "clear lungs"]}}}

For ``pos_neg`` sets each class has ``positive`` and ``negative`` phrase lists instead of ``prompts``.
Every phrase is put into every template: the class embedding is the mean of those prompt embeddings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medvlkit.errors import MedvlkitError

MODES = ("softmax", "pos_neg")


@dataclass
class ClassPrompts:
    """The phrases of one class. ``positive`` doubles as the softmax phrases."""

    name: str
    positive: list[str]
    negative: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


@dataclass
class PromptSet:
    """Templates x class phrases. ``mode`` is the default zero-shot mode for this set."""

    name: str
    classes: list[ClassPrompts]
    templates: list[str] = field(default_factory=lambda: ["{}"])
    mode: str = "softmax"
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MedvlkitError(f"prompt set '{self.name}': mode '{self.mode}' is not one of {', '.join(MODES)}")
        if not self.classes:
            raise MedvlkitError(f"prompt set '{self.name}' has no classes")
        bad = [t for t in self.templates if not _one_slot(t)]
        if bad:
            raise MedvlkitError(f"prompt set '{self.name}': every template must be a string with exactly one '{{}}' "
                                f"where the phrase goes (write a literal brace as '{{{{' or '}}}}'): {bad}")
        empty = [c.name for c in self.classes if not c.positive or not all(isinstance(p, str) for p in c.positive)]
        if empty:
            raise MedvlkitError(f"prompt set '{self.name}': class(es) {empty} need a non-empty list of phrases")

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    def texts(self, phrases: list[str]) -> list[str]:
        """Every phrase in every template."""
        return [t.format(p) for p in phrases for t in self.templates]

    def select(self, dataset_classnames: list[str]) -> PromptSet:
        """The classes matching a dataset's class names, in the dataset's order (by name or alias).

        Raises:
            MedvlkitError: a dataset class has no prompts, naming it and the classes the set has.
        """
        index = {}
        for c in self.classes:
            for alias in [c.name, *c.aliases]:
                index.setdefault(_norm(alias), c)
        chosen, missing = [], []
        for name in dataset_classnames:
            c = index.get(_norm(name))
            (chosen.append(ClassPrompts(name, c.positive, c.negative, c.aliases)) if c else missing.append(name))
        if missing:
            raise MedvlkitError(f"prompt set '{self.name}' has no prompts for dataset class(es) {missing}; it has "
                                f"{self.classnames}. Pass --classes, or a prompt file with those classes")
        return PromptSet(self.name, chosen, self.templates, self.mode, self.description)


def _one_slot(template: object) -> bool:
    """A template holds exactly one unnamed ``{}`` field and formats cleanly."""
    import string

    if not isinstance(template, str):
        return False
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        template.format("x")
    except (ValueError, IndexError, KeyError):
        return False
    return fields == [""]


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def list_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with medvlkit."""
    folder = resources.files("medvlkit.data") / "prompts"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_prompt_set(name_or_file: str) -> PromptSet:
    """A shipped prompt set by name, or a JSON file in the same format."""
    path = Path(name_or_file).expanduser()
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise MedvlkitError(f"--prompts {name_or_file}: no such file")
        text = path.read_text()
    elif name_or_file in list_prompt_sets():
        text = (resources.files("medvlkit.data") / "prompts" / f"{name_or_file}.json").read_text()
    else:
        raise MedvlkitError(f"--prompts {name_or_file}: unknown prompt set; valid options: "
                            f"{', '.join(list_prompt_sets())}, or a .json file")
    try:
        return prompt_set_from_dict(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise MedvlkitError(f"--prompts {name_or_file}: not a valid prompt set ({type(err).__name__}: {err})") from None


def prompt_set_from_dict(raw: dict) -> PromptSet:
    """Build a PromptSet from its JSON form."""
    classes = []
    for name, spec in raw["classes"].items():
        spec = {"prompts": spec} if isinstance(spec, list) else spec
        positive = spec.get("positive") or spec.get("prompts") or [name]
        classes.append(ClassPrompts(name, list(positive), list(spec.get("negative", [])),
                                    list(spec.get("aliases", []))))
    return PromptSet(raw.get("name", "custom"), classes, list(raw.get("templates", ["{}"])),
                     raw.get("mode", "softmax"), raw.get("description", ""))


def prompt_set_from_classes(classnames: list[str], mode: str = "softmax",
                            templates: list[str] | None = None) -> PromptSet:
    """Prompts from bare class names (``--classes``).

    For ``pos_neg`` the negative of "X" is "no X"; a class that is itself a negation ("No Finding",
    "normal") gets "abnormal findings" as its negative instead of CheXzero's "no No Finding".
    """
    classes = []
    for name in classnames:
        phrase = name.replace("_", " ").strip()
        is_negation = bool(re.match(r"^(no|normal)\b", phrase, flags=re.I))
        negative = ["abnormal findings"] if is_negation else [f"no {phrase.lower()}"]
        classes.append(ClassPrompts(name, [phrase.lower()], negative if mode == "pos_neg" else []))
    return PromptSet("classes", classes, templates or ["{}"], mode)


def resolve_prompt_set(prompts: str | None = None, classes: str | None = None, mode: str | None = None) -> PromptSet:
    """``--prompts NAME|FILE`` or ``--classes 'a,b,c'`` (exactly one) as a prompt set; ``mode`` for ``--classes``.

    Raises:
        MedvlkitError: both or neither given; an unknown prompt set.
    """
    if (prompts is None) == (classes is None):
        raise MedvlkitError("pass exactly one of --prompts NAME|FILE or --classes 'a,b,c'")
    if prompts:
        return load_prompt_set(prompts)
    return prompt_set_from_classes([c.strip() for c in classes.split(",") if c.strip()], mode or "softmax")
