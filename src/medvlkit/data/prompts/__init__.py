"""Prompt sets: class names, synonyms, templates, and positive/negative pairs for multi-label zero-shot.

A prompt set is a JSON file (see ``data/prompts/*.json``)::

    {"name": "pneumonia", "mode": "softmax", "domain": "chest x-ray", "templates": ["a chest x-ray showing {}."],
     "classes": {"pneumonia": {"aliases": ["PNEUMONIA"], "prompts": ["pneumonia", "lung infection"]},
                 "normal":    {"aliases": ["NORMAL"],    "prompts": ["no pneumonia", "clear lungs"]}}}

For ``pos_neg`` sets each class has ``positive`` and ``negative`` phrase lists instead of ``prompts``.
Every phrase is put into every template: the class embedding is the mean of those prompt embeddings.

``domain`` names the kind of image the set describes (a class of the ``modality`` set: ``chest x-ray``, ``CT``,
``MR``, ``ultrasound``, ``fundus photograph``, ``histopathology``; absent for sets that apply to any image). A set
is matched to a dataset's classes by name (case, spaces, underscores and hyphens folded) or by an alias that is a
name: never by a bare number, which says nothing about what a class is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

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
    """Templates x class phrases. ``mode`` is the default zero-shot mode for this set.

    Attributes:
        domain: the kind of image the set describes (e.g. ``chest x-ray``), None for any.
        free_text: the "classes" are free texts to score or locate (``explain --text``): they are never matched
            to a dataset's classes.
    """

    name: str
    classes: list[ClassPrompts]
    templates: list[str] = field(default_factory=lambda: ["{}"])
    mode: str = "softmax"
    description: str = ""
    domain: str | None = None
    free_text: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MedvlkitError(f"prompt set '{self.name}': mode '{self.mode}' is not one of {', '.join(MODES)}")
        if not self.classes:
            raise MedvlkitError(f"prompt set '{self.name}' has no classes")
        bad = [t for t in self.templates if not _one_slot(t)]
        if bad or not self.templates:
            raise MedvlkitError(f"prompt set '{self.name}': every template must be a string with exactly one '{{}}' "
                                f"where the phrase goes (write a literal brace as '{{{{' or '}}}}'): {bad or '[]'}")
        for c in self.classes:
            for what, phrases in (("phrases", c.positive), ("negative phrases", c.negative)):
                if not _phrase_list(phrases, allow_empty=what != "phrases"):
                    raise MedvlkitError(f"prompt set '{self.name}': class '{c.name}' needs a list of non-empty "
                                        f"{what} (a JSON list of strings), got {phrases!r}")
        seen: dict[str, str] = {}
        for c in self.classes:
            key = _norm(c.name)
            if key in seen:
                raise MedvlkitError(f"prompt set '{self.name}': classes '{seen[key]}' and '{c.name}' are the same "
                                    "name; each class must appear once")
            seen[key] = c.name

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    def texts(self, phrases: list[str]) -> list[str]:
        """Every phrase in every template."""
        return [t.format(p) for p in phrases for t in self.templates]

    def class_texts(self, mode: str | None = None) -> dict[str, list[str]]:
        """Each class's prompt texts: its positive texts, then (``pos_neg``) its negative texts."""
        mode = mode or self.mode
        return {c.name: self.texts(c.positive) + (self.texts(c.negative) if mode == "pos_neg" else [])
                for c in self.classes}

    def match(self, names: list[str]) -> list[int]:
        """For each of ``names`` (a dataset's classes, or a subset of this set's), the index of this set's class
        with that name or a (non-numeric) alias.

        Raises:
            MedvlkitError: a name has no class here, or two names fall on one class (its prompts would score both).
        """
        index: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            for alias in [c.name, *c.aliases]:
                if alias == c.name or not is_number(alias):
                    index.setdefault(_norm(alias), i)
        found: list[int] = []
        missing: list[str] = []
        taken: dict[int, str] = {}
        for name in names:
            hit = index.get(_norm(str(name)))
            if hit is None:
                missing.append(name)
            elif hit in taken:
                raise MedvlkitError(f"classes '{taken[hit]}' and '{name}' both match class '{self.classes[hit].name}' "
                                    f"of prompt set '{self.name}'; its prompts cannot tell them apart. Pass a "
                                    "prompt file with a class for each")
            else:
                taken[hit] = name
                found.append(hit)
        if missing:
            hint = (" (class names that are numbers say nothing a prompt can describe: name the classes, e.g. a "
                    "'label_names' array in the .npz or named class folders)" if all(map(is_number, missing)) else "")
            raise MedvlkitError(f"prompt set '{self.name}' has no prompts for class(es) {missing}{hint}; it has "
                                f"{self.classnames}. Pass --classes, or a prompt file with those classes")
        return found

    def select(self, names: list[str]) -> PromptSet:
        """The classes matching ``names`` (see :meth:`match`), renamed to them and in their order."""
        chosen = [self.classes[i] for i in self.match(names)]
        return PromptSet(self.name, [ClassPrompts(n, c.positive, c.negative, c.aliases) for n, c in zip(names, chosen)],
                         self.templates, self.mode, self.description, self.domain, self.free_text)

    def identity(self, mode: str | None = None) -> str:
        """A sha256 of everything that decides this set's class vectors: mode, class names and every prompt text."""
        data = {"mode": mode or self.mode, "texts": self.class_texts(mode)}
        return hashlib.sha256(json.dumps(data, sort_keys=False).encode()).hexdigest()


def is_number(name: str) -> bool:
    """A class name or alias that is only a number ("0", "1", "2.0"): a label index, not a name."""
    return bool(re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", str(name)))


def _phrase_list(phrases: object, allow_empty: bool) -> bool:
    if not isinstance(phrases, list) or (not phrases and not allow_empty):
        return False
    return all(isinstance(p, str) and p.strip() for p in phrases)


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


def same_domain(a: str | None, b: str | None) -> bool:
    """Two domains agree when either is unknown (None) or they name the same kind of image."""
    return a is None or b is None or _norm(a) == _norm(b)


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
    except MedvlkitError as err:
        raise MedvlkitError(f"--prompts {name_or_file}: {err}") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise MedvlkitError(f"--prompts {name_or_file}: not a valid prompt set ({type(err).__name__}: {err})") from None


def _strings(value: object, what: str) -> list[str]:
    """A JSON list of strings, or a one-line error (a lone string would be read letter by letter)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MedvlkitError(f"{what} must be a JSON list of strings, got {value!r}")
    return list(value)


def prompt_set_from_dict(raw: dict[str, Any]) -> PromptSet:
    """Build a PromptSet from its JSON form.

    Raises:
        MedvlkitError: a field of the wrong type (a phrase list given as one string, an empty phrase...).
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise MedvlkitError("a prompt set is a JSON object with a 'classes' object (class name -> phrases)")
    classes = []
    for name, spec in raw["classes"].items():
        spec = {"prompts": spec} if isinstance(spec, list) else spec
        if not isinstance(spec, dict):
            raise MedvlkitError(f"class '{name}': expected a list of phrases or an object with 'prompts' (or "
                                f"'positive'/'negative'), got {spec!r}")
        key = "positive" if "positive" in spec else "prompts" if "prompts" in spec else None
        positive = _strings(spec[key], f"class '{name}' {key}") if key else [name]
        classes.append(ClassPrompts(name, positive, _strings(spec.get("negative", []), f"class '{name}' negative"),
                                    _strings(spec.get("aliases", []), f"class '{name}' aliases")))
    domain = raw.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise MedvlkitError(f"'domain' must be a string (e.g. \"chest x-ray\") or absent, got {domain!r}")
    return PromptSet(str(raw.get("name", "custom")), classes, _strings(raw.get("templates", ["{}"]), "templates"),
                     raw.get("mode", "softmax"), str(raw.get("description", "")), domain)


def prompt_set_from_classes(classnames: list[str], mode: str = "softmax", templates: list[str] | None = None,
                            free_text: bool = False) -> PromptSet:
    """Prompts from bare class names (``--classes``), or free texts (``free_text=True``: ``explain --text``).

    For ``pos_neg`` the negative of "X" is "no X"; a class that is itself a negation ("No Finding",
    "normal") gets "abnormal findings" as its negative instead of CheXzero's "no No Finding".

    Raises:
        MedvlkitError: an empty name, or the same name twice (it would make two identical columns).
    """
    if not classnames or any(not str(c).strip() for c in classnames):
        raise MedvlkitError(f"--classes {','.join(classnames)}: every class needs a non-empty name")
    classes = []
    for name in classnames:
        phrase = name.replace("_", " ").strip()
        is_negation = bool(re.match(r"^(no|normal)\b", phrase, flags=re.I))
        negative = ["abnormal findings"] if is_negation else [f"no {phrase.lower()}"]
        classes.append(ClassPrompts(name, [phrase if free_text else phrase.lower()],
                                    negative if mode == "pos_neg" else []))
    return PromptSet("texts" if free_text else "classes", classes, templates or ["{}"], mode, free_text=free_text)


def resolve_prompt_set(prompts: str | None = None, classes: str | None = None, mode: str | None = None) -> PromptSet:
    """``--prompts NAME|FILE``, ``--classes 'a,b,c'``, or both: the named set restricted to those of its classes
    (the softmax then runs over them only); ``mode`` for ``--classes`` alone.

    Raises:
        MedvlkitError: neither given; an unknown prompt set; a class the set lacks.
    """
    if prompts is None and classes is None:
        raise MedvlkitError("pass --prompts NAME|FILE, --classes 'a,b,c', or both (a set restricted to classes)")
    names = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    if prompts:
        ps = load_prompt_set(prompts)
        return ps.select(names) if names else ps
    return prompt_set_from_classes(names or [], mode or "softmax")
