"""What the server checks before it spends memory or time on a request, as pure ASGI middleware (nothing here waits
for FastAPI to parse a body) and one asyncio primitive:

- :class:`TokenGate`: the bearer token, from the headers, before a byte of the body is read;
- :class:`BodyLimit`: the body's size (Content-Length first, then the streamed bytes) and the time it may take to
  arrive in all (a slow partial body cannot hold a connection);
- :class:`PixelBudget`: how many pixels are being decoded at once, over all requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from fastapi import HTTPException
from fastapi.responses import JSONResponse

PUBLIC_PATHS = ("/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/static/",)


def error_response(status: int, message: str, **extra) -> JSONResponse:
    """The server's one error shape: ``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status} | extra, status_code=status)


class TokenGate:
    """ASGI middleware: with a ``token``, every request but the page, its static files and the API docs must send
    ``Authorization: Bearer <token>``; a request without it is answered 401 from its headers alone, before any of
    its body is received."""

    def __init__(self, app, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.token is None or _public(scope.get("path", "")):
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token.encode()):
            response = error_response(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413, by its Content-Length before anything is
    read, or (chunked uploads) as soon as the streamed bytes pass the limit; a body not complete within
    ``timeout_s`` of its first read is answered 408. Both are HTTPExceptions raised while FastAPI reads the body,
    which it passes on as such."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 60.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def _message(self) -> str:
        return (f"request body over the upload limit of {self.max_bytes / 2 ** 20:g} MB (start the server with "
                "--max-upload-mb to raise it)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, self._message())(scope, receive, send)
        seen, deadline, complete = 0, None, False
        loop = asyncio.get_running_loop()

        async def limited_receive():
            nonlocal seen, deadline, complete
            if complete:  # the body is in: later reads wait for a disconnect, with no deadline
                return await receive()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class PixelBudget:
    """At most ``capacity`` pixels being decoded at once: ``async with budget.hold(n)`` waits until ``n`` more fit
    (a request larger than the whole budget waits for an empty one)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = int(capacity), 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int):
        self._cond = self._cond or asyncio.Condition()
        n = min(int(pixels), self.capacity)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()
