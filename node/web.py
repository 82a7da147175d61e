"""The node's one convention at the HTTP boundary: handlers answer with ``json_response`` and refuse by
raising ``Refusal``; ``refusal_middleware`` turns a Refusal into its JSON answer ``{"error": ...}`` (plus
any fields it carries) and writes the refusal to the log.

Why one type: every refusal then says what happened in one line the admin (or the peer's admin) can read,
and a detail that must not go back to the sender (what a remote server answered, say) has one place to
live: ``detail`` goes to the log only. Feature packages raise it from their handlers instead of building
error responses of their own.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger("verdict_node.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):
    """Refuse a request: an HTTP status and a one-line reason; nothing has been stored. ``detail`` is for
    the log only; ``fields`` are added to the JSON answer; ``headers`` to the response (Retry-After)."""

    def __init__(self, status: int, message: str, *, detail: str | None = None,
                 fields: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})

    def for_log(self) -> str:
        return f"{self} ({self.detail})" if self.detail else str(self)

    def response(self) -> web.Response:
        return json_response({"error": str(self), **self.fields}, self.status, headers=self.headers or None)


def json_response(data: Any, status: int = 200, *, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """Compact JSON (no spaces: these answers go to machines, and pict-rs reads thousands a second)."""
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type=content_type, headers=headers)


@web.middleware
async def refusal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refusal as refusal:
        if refusal.status != 429:  # rate limiting is routine; everything else is worth a line
            log.info("%s %s refused (%d): %s", request.method, request.path, refusal.status, refusal.for_log())
        return refusal.response()
