"""A small model hub on 127.0.0.1 that speaks the Hugging Face hub's HTTP API as ``huggingface_hub`` uses it
(repository info, the recursive file tree, ``resolve`` with HEAD and GET, the error codes), so medvlkit's
downloads run end to end through the real client against repositories the tests write: no mock of the client or
of a model. Point the code at it with ``HF_ENDPOINT=hub.url``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_FROM = 1024  # files at least this large are served as LFS files (their ETag is their sha256), as on the hub


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: bytes}
    gated: bool = False


class LocalHub:
    """Start with ``LocalHub().start()``; ``add(repo_id, files)`` publishes a commit on ``main``.

    Attributes:
        url: the endpoint (``http://127.0.0.1:PORT``).
        requests: every (method, path) served, in order.
        token: the token a gated repository accepts (``Authorization: Bearer <token>``).
    """

    token = "hf_accepted_terms"

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, files: dict[str, bytes | Path], branch: str = "main", gated: bool = False) -> str:
        """Publish ``files`` as a new commit of ``repo_id`` on ``branch``; returns the commit id."""
        content = {name: (data.read_bytes() if isinstance(data, Path) else data) for name, data in files.items()}
        digest = hashlib.sha1(json.dumps(sorted((n, hashlib.sha1(b).hexdigest()) for n, b in content.items()))
                              .encode() + repo_id.encode() + branch.encode())
        repo = self.repos.setdefault(repo_id, Repo())
        commit = digest.hexdigest()
        repo.commits[commit], repo.branches[branch], repo.gated = content, commit, repo.gated or gated
        return commit

    def start(self) -> LocalHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._serve(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the API -------------------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        try:
            if parts[:2] == ["api", "models"]:
                repo_id, rest = "/".join(parts[2:4]), parts[4:]
                repo, commit = self._open(h, repo_id, rest[1] if len(rest) > 1 else "main")
                if not rest or rest[0] == "revision":
                    return self._json(h, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                          "gated": "manual" if repo.gated else False,
                                          "siblings": [{"rfilename": n} for n in sorted(repo.commits[commit])]}, body)
                if rest[0] == "tree":
                    return self._json(h, [self._entry(n, b) for n, b in sorted(repo.commits[commit].items())], body)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, commit = self._open(h, "/".join(parts[:2]), parts[3])
                name = "/".join(parts[4:])
                if name not in repo.commits[commit]:
                    raise _Error(404, "EntryNotFound", f"{name} not found")
                return self._file(h, commit, repo.commits[commit][name], body)
            raise _Error(404, "RepoNotFound", "not found")
        except _Error as err:
            h.send_response(err.status)
            h.send_header("X-Error-Code", err.code)
            h.send_header("X-Error-Message", err.message)
            h.send_header("Content-Type", "application/json")
            data = json.dumps({"error": err.message}).encode()
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if body:
                h.wfile.write(data)

    def _open(self, h: BaseHTTPRequestHandler, repo_id: str, revision: str) -> tuple[Repo, str]:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _Error(401, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        if repo.gated and h.headers.get("Authorization") != f"Bearer {self.token}":
            raise _Error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it")
        commit = repo.branches.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            raise _Error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    @staticmethod
    def _entry(name: str, data: bytes) -> dict:
        entry = {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
        if len(data) >= LFS_FROM:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _file(h: BaseHTTPRequestHandler, commit: str, data: bytes, body: bool) -> None:
        etag = hashlib.sha256(data).hexdigest() if len(data) >= LFS_FROM else _blob_id(data)
        h.send_response(200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        if len(data) >= LFS_FROM:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if body:
            h.wfile.write(data)


def _blob_id(data: bytes) -> str:
    """git's blob id, as the hub gives for small files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
