"""Deadlines on what an HTTP client sends: a request's headers, and the whole request (headers and body).

aiohttp bounds the size of headers but not the time a client takes to send them. A client that sends its
headers a byte at a time, or trickles its body, holds a connection, a file descriptor and (for the body) a
handler for as long as it likes: hours, far past pict-rs's own 30 s timeout. aiohttp's only timer,
keepalive_timeout, closes connections that are idle *between* requests, and a slow client is never idle.

`DeadlineAppRunner` gives every connection the two missing timers, both counted from the request's first
byte (the connection's start, for its first request):
  - headers: complete within `Deadlines.headers_seconds` (listen.header_timeout_seconds), else the
    connection is closed; there is no request yet to answer;
  - body: complete within `Deadlines.request_seconds` (pictrs.budget_seconds), else the handler's read of it
    fails with 408 Request Timeout (a JSON message naming the setting) and the connection is closed.
The time a handler spends once the body is in (classification, bounded by the pict-rs budget; a worker's
long poll) is not limited here. The timers are one asyncio timer handle per connection, so a thousand slow
clients cost the event loop nothing while they wait.

The pieces plug into aiohttp where it has seams: a runner builds the server (`_make_server`), the server
builds each connection's protocol (`__call__`) and each request object (`request_factory`: the moment a
request's headers are complete and the application takes it). The handler subclass overrides only
RequestHandler's protocol methods (connection_made, data_received, connection_lost, finish_response).

Not covered: a client that sends a whole request and then stays idle is aiohttp's keepalive_timeout's,
and how many connections one address may hold is the reverse proxy's (or the firewall's) to limit.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader

from node.config import NodeConfig

log = logging.getLogger("verdict_node.http")


@dataclass(frozen=True)
class Deadlines:
    """Seconds from a request's first byte by which its headers, and its whole body, must have arrived."""

    headers_seconds: float
    request_seconds: float

    @classmethod
    def of(cls, config: NodeConfig) -> "Deadlines":
        return cls(headers_seconds=min(config.listen.header_timeout_seconds, config.pictrs.budget_seconds),
                   request_seconds=config.pictrs.budget_seconds)


class DeadlineRequestHandler(web.RequestHandler):
    """One client connection, held to `Deadlines` (see the module docstring).

    State, kept apart from aiohttp's own: `_next_request_since` is when the first byte of a request the
    application has not taken yet arrived; `_body` is the body of the request the application holds (or
    held last); `_in_app` tells whether a handler is running. Exactly one timer is armed at a time: the
    header deadline while waiting for a request, or the body deadline while a handler waits for its body."""

    def __init__(self, manager: web.Server, *, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._next_request_since: float | None = None
        self._body: StreamReader | None = None
        self._in_app = False
        self._body_late = False

    # -- aiohttp's protocol events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._next_request_since = asyncio.get_running_loop().time()
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if data and self._next_request_since is None and not self._body_pending():
            self._next_request_since = asyncio.get_running_loop().time()  # a new request starts
            if not self._in_app:  # pipelined behind a running request: timed once that one is answered
                self._arm_header_deadline()
        super().data_received(data)
        if self._in_app and not self._body_pending():
            self._cancel_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._in_app = False
        self._cancel_deadline()
        if self._body_late:
            self.force_close()  # what is left of its body would only trickle in: do not wait for it
        elif self._next_request_since is not None:  # the next request began while this one ran
            self._next_request_since = asyncio.get_running_loop().time()
            self._arm_header_deadline()
        return result

    # -- called by DeadlineServer when the application takes a request ------------------------------

    def request_taken(self, body: StreamReader) -> None:
        """The headers of a request are complete and its handler starts: stop the header deadline, start the
        body deadline unless the body is already in."""
        loop = asyncio.get_running_loop()
        self._cancel_deadline()
        started = self._next_request_since if self._next_request_since is not None else loop.time()
        self._next_request_since = None
        self._in_app = True
        self._body = body
        self._body_late = False
        if self._body_pending():
            self._deadline_timer = loop.call_at(started + self._deadlines.request_seconds, self._body_too_slow)

    # -- the deadlines ----------------------------------------------------------------------------

    def _body_pending(self) -> bool:
        return self._body is not None and not self._body.is_eof()

    def _arm_header_deadline(self) -> None:
        assert self._next_request_since is not None
        self._cancel_deadline()
        self._deadline_timer = asyncio.get_running_loop().call_at(
            self._next_request_since + self._deadlines.headers_seconds, self._headers_too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "an unknown peer"

    def _headers_too_slow(self) -> None:
        self._deadline_timer = None
        if self._in_app:
            return
        log.info("closed the connection from %s: no complete request headers within %g s of the request's "
                 "first byte (listen.header_timeout_seconds)", self._peer(), self._deadlines.headers_seconds)
        self.force_close()

    def _body_too_slow(self) -> None:
        self._deadline_timer = None
        if self._body is None or not self._body_pending():
            return
        self._body_late = True
        message = (f"request body not complete within {self._deadlines.request_seconds:g} s of the request's "
                   f"first byte (pictrs.budget_seconds)")
        log.info("answering 408 to %s and closing its connection: %s", self._peer(), message)
        self._body.set_exception(web.HTTPRequestTimeout(text=json.dumps({"message": message}),
                                                        content_type="application/json"))


class DeadlineServer(web.Server):
    """The application's web.Server, with DeadlineRequestHandler connections that learn when a request is
    handed to the application (through the server's request factory)."""

    def __init__(self, app_server: web.Server, deadlines: Deadlines) -> None:
        # app_server._kwargs: the RequestHandler options the application's server was built with (access log,
        # debug, handler_args); web.Server keeps them only there.
        super().__init__(app_server.request_handler, request_factory=self._take_request,
                         handler_cancellation=app_server.handler_cancellation, **app_server._kwargs)
        self._app_request_factory = app_server.request_factory
        self.deadlines = deadlines

    def __call__(self) -> DeadlineRequestHandler:
        return DeadlineRequestHandler(self, deadlines=self.deadlines, loop=self._loop, **self._kwargs)

    def _take_request(self, message: Any, payload: StreamReader, protocol: web.RequestHandler,
                      writer: Any, task: "asyncio.Task[None]") -> web.BaseRequest:
        if isinstance(protocol, DeadlineRequestHandler):
            protocol.request_taken(payload)
        return self._app_request_factory(message, payload, protocol, writer, task)


class DeadlineAppRunner(web.AppRunner):
    """web.AppRunner whose connections are held to `deadlines`."""

    def __init__(self, app: web.Application, *, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.deadlines = deadlines

    async def _make_server(self) -> web.Server:
        return DeadlineServer(await super()._make_server(), self.deadlines)
