"""Model repositories on the Hugging Face hub: ``org/name[@revision]`` downloaded (or found in the local cache) the
way transformers and open_clip users expect, and recorded so a run says exactly which files it used.

One function, :func:`fetch`, serves every source that takes a hub id (``hf:``, ``open_clip:hf-hub:``,
``biomedclip:``, ``biovil:`` and the presets behind them) and ``medvlkit download``:

- downloads through ``huggingface_hub.snapshot_download`` with its progress bars, into the Hugging Face cache
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), from ``$HF_ENDPOINT`` when set;
  these variables are read at each call, not when a library was imported (huggingface_hub's own offline flag is
  set from them for the duration of a fetch);
- pins a revision (``org/name@<branch, tag or commit>``) and records the commit it resolved to and each weight
  file's sha256 (:class:`Snapshot`), which ``result.json`` keeps as ``pretrained_source``;
- offline (``HF_HUB_OFFLINE=1`` or ``--offline``, which sets ``MEDVLKIT_OFFLINE=1``) reads the cache only and says
  in one line how to fetch what is missing;
- fetches no code: Python files and other frameworks' weights are never downloaded (``trust_remote_code`` stays
  off everywhere), and where a repository holds ``*.safetensors`` its pickled ``*.bin`` copies are skipped;
- answers a gated repository (MedSigLIP, CONCH) with one line on accepting its terms and ``HF_TOKEN``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvlkit.errors import MedvlkitError

logger = logging.getLogger(__name__)

# Never fetched: code, other frameworks' weights, exported graphs. (Files that carry code are never executed either.)
IGNORE = ["*.py", "*.pyc", "*.ipynb", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "rust_model*",
          "*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "*.mlmodel", "*.mlpackage/*", "coreml/*", "*.gguf",
          "*.tflite"]
# What a cached snapshot is checked complete without (huggingface_hub compares it with the cached file list): the
# files never fetched, and *.bin, skipped where safetensors exist (which of the two a repository had is not known
# offline; a snapshot without usable weights is refused by the model's loader)
_CACHED = [*IGNORE, "*.bin"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubRef:
    """A hub repository and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, ref: str) -> HubRef | None:
        """``org/name`` or ``org/name@revision`` -> a HubRef; anything else (a path, a file) -> None."""
        repo, _, revision = ref.partition("@")
        if ref.startswith(("/", ".", "~")) or not _HUB_ID.match(repo) or Path(ref).expanduser().exists():
            return None
        return cls(repo, revision or None)

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass
class Snapshot:
    """A repository's files on this machine, at one commit.

    Attributes:
        path: the snapshot folder (hub layout).
        ref: what was asked for.
        commit: the commit the revision resolved to.
        files: weight file name -> sha256.
    """

    path: Path
    ref: HubRef
    commit: str
    files: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What ``result.json`` keeps as ``pretrained_source``."""
        return {"hub": self.ref.repo_id, "revision": self.ref.revision or "main", "commit": self.commit,
                "files": dict(self.files)}


def offline() -> bool:
    """True under ``HF_HUB_OFFLINE`` or ``MEDVLKIT_OFFLINE`` (``--offline``), read now."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "MEDVLKIT_OFFLINE"))


def cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def endpoint() -> str | None:
    """``$HF_ENDPOINT`` (a mirror, or the tests' local hub), read now; None: huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or None


@contextlib.contextmanager
def _offline_as_now() -> Iterator[None]:
    """huggingface_hub reads ``HF_HUB_OFFLINE`` once, when imported; medvlkit's promise is that it is read at each
    call, so the library's flag is set from :func:`offline` for the duration of a fetch."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def fetch(ref: HubRef, what: str = "hf:", fetch_hint: str | None = None) -> Snapshot:
    """The repository's files on this machine: from the cache, or downloaded (unless offline).

    Args:
        ref: the repository and revision.
        what: how the user named it (``hf:``, ``open_clip:hf-hub:``...), for messages.
        fetch_hint: the command that fetches it ahead of time (default ``medvlkit download <what><ref>``).

    Raises:
        MedvlkitError: offline and not cached; gated without accepted terms; no such repository or revision; the
            hub unreachable and nothing cached.
    """
    from huggingface_hub import snapshot_download

    hint = fetch_hint or f"medvlkit download {what}{ref}"
    kwargs: dict[str, Any] = {"revision": ref.revision, "cache_dir": str(cache_dir()), "endpoint": endpoint()}
    with _offline_as_now():
        try:
            names = None if offline() else _remote_files(ref)
            if names is None:  # offline, or the hub cannot be reached: the cache only
                path = Path(snapshot_download(ref.repo_id, local_files_only=True, ignore_patterns=_CACHED, **kwargs))
            else:
                path = Path(snapshot_download(ref.repo_id, ignore_patterns=_ignored(names), **kwargs))
        except Exception as err:  # noqa: BLE001 - mapped to one line each below
            raise MedvlkitError(_explain(err, ref, what, hint)) from None
    return Snapshot(path, ref, path.name, weight_hashes(path))


def _remote_files(ref: HubRef) -> list[str] | None:
    """The repository's file names at the revision (one request, no retries); None when the hub cannot be reached.
    A missing repository or revision, or a gated one, raises the hub's error."""
    from huggingface_hub import HfApi, errors

    try:
        info = HfApi(endpoint=endpoint()).model_info(ref.repo_id, revision=ref.revision)
    except errors.HfHubHTTPError as err:  # missing, gated, private: raised; the hub down (5xx): the cache
        if err.response is not None and err.response.status_code >= 500:
            return None
        raise
    except Exception as err:  # noqa: BLE001 - the HTTP library's connection errors differ between versions
        if _unreachable(err):
            return None
        raise
    return [s.rfilename for s in info.siblings or []]


def _unreachable(err: BaseException) -> bool:
    """A connection refused, a timeout, no route, offline mode: the hub cannot be reached (whichever HTTP library
    huggingface_hub uses)."""
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "OfflineModeIsEnabled"})


def _ignored(names: list[str]) -> list[str]:
    """:data:`IGNORE`, and the pickled ``*.bin`` weights when the repository also holds safetensors."""
    return _CACHED if any(n.endswith(".safetensors") for n in names) else IGNORE


def weight_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each weight file in a snapshot: the cache names a large (LFS) file's blob by its sha256, so only
    small files are hashed here (:func:`medvlkit.models.base.file_sha256`, the hash every weights record uses)."""
    from medvlkit.models.base import file_sha256  # torch: only once a model is being loaded

    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
            blob = p.resolve().name
            out[str(p.relative_to(folder))] = blob if _SHA256.match(blob) else file_sha256(str(p))
    return out


def _explain(err: Exception, ref: HubRef, what: str, hint: str) -> str:
    """One line for a failed fetch: what happened and what to do."""
    from huggingface_hub import errors

    name = f"{what}{ref}"
    if isinstance(err, errors.GatedRepoError):
        return (f"{name} is a gated repository: accept its terms on its hub page ({endpoint() or 'https://huggingface.co'}"
                f"/{ref.repo_id}) with your account, then set HF_TOKEN to a read token of that account and run again")
    if isinstance(err, errors.RevisionNotFoundError):
        return f"{name}: the repository has no revision '{ref.revision}' (a branch, tag or commit)"
    if isinstance(err, errors.RepositoryNotFoundError):
        return (f"{name}: no such repository on the hub (a private one needs HF_TOKEN); check the id, or pass a "
                "local folder")
    if offline() or _unreachable(err) or isinstance(err, errors.LocalEntryNotFoundError):
        why = "offline (HF_HUB_OFFLINE / --offline)" if offline() else "the hub cannot be reached"
        return (f"{name} is not in the Hugging Face cache ({cache_dir()}) and {why}: on a machine with a network "
                f"run `{hint}` (then copy the cache folder here), or pass a local folder")
    return f"{name}: the download failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def cached(ref: HubRef) -> Path | None:
    """The cached snapshot folder of ``ref`` (no network), or None."""
    from huggingface_hub import snapshot_download

    try:
        with _offline_as_now():
            return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(cache_dir()),
                                          local_files_only=True, ignore_patterns=_CACHED))
    except Exception:  # noqa: BLE001 - not cached, whatever the reason
        return None


def resolve_folder(ref: str, what: str) -> tuple[Path, Snapshot | None]:
    """A source's reference as a folder: a local directory as is (no snapshot), a hub id fetched.

    Raises:
        MedvlkitError: neither a directory nor a hub id, or the fetch failed.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return path, None
    hub = HubRef.parse(ref)
    if hub is None:
        raise MedvlkitError(f"{what}{ref}: no such directory, and not a hub id (org/name[@revision])")
    snap = fetch(hub, what)
    return snap.path, snap
