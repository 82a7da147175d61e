"""HTTP face of a Node: the pict-rs validation endpoint (and its pictrs-safety compatible twin), health
and metrics. Handlers stay thin: authentication and body handling here, every decision in the Pipeline.

More routes (federation: /actor, /inbox, ...) are added by functions in `node.app_setups`, which
`build_app` calls with the application and the node. Running it (`verdict-node serve`) is node.serve.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from node.config import NodeConfig
from node.http_limits import DeadlineAppRunner, Deadlines
from node.metrics import CONTENT_TYPE
from node.runtime import Node
from node.web import Refusal, json_response, refusal_middleware

log = logging.getLogger("verdict_node.server")

IPADDR = "IPADDR"


class Guard:
    """Who may call the validation endpoint: a configured token (constant-time compare) or, for the
    token-less IPADDR form, a caller address inside `pictrs.allowed_ips` (IPv4 and IPv6)."""

    def __init__(self, config: NodeConfig) -> None:
        self.tokens = [t.encode() for t in config.pictrs.tokens]
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.pictrs.allowed_ips]
        self.trust_forwarded_for = config.pictrs.trust_forwarded_for

    def caller_ip(self, request: web.Request) -> str | None:
        """The caller's address: the socket's peer, or behind a trusted proxy the address that proxy appended
        to X-Forwarded-For. That is the LAST value of the LAST X-Forwarded-For line: everything before it,
        whole header lines included, was written by the client and may name any address it likes."""
        if self.trust_forwarded_for:
            forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
            if forwarded:
                return forwarded.split(",")[-1].strip()
        return request.remote

    def check(self, request: web.Request, token: str) -> None:
        """Refusal 401 for an unknown token, 403 for an address not allowed."""
        if token == IPADDR:
            ip = self.caller_ip(request)
            try:
                address = ipaddress.ip_address((ip or "").split("%")[0])
            except ValueError:
                address = None
            if address is not None and getattr(address, "ipv4_mapped", None):
                address = address.ipv4_mapped
            if address is None or not any(address in net for net in self.networks):
                raise Refusal(403, f"address {ip} is not in pictrs.allowed_ips")
            return
        given = token.encode()
        ok = False
        for expected in self.tokens:
            ok |= hmac.compare_digest(given, expected)
        if not ok:
            raise Refusal(401, "unknown token")


NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
GUARD_KEY: web.AppKey[Guard] = web.AppKey("guard", Guard)


def _too_large(max_bytes: int) -> Refusal:
    return Refusal(413, f"body larger than media.max_bytes ({max_bytes})")


# pictrs-safety's form has one part, 'file'; a few more leave room for clients that add a field or two.
MAX_MULTIPART_PARTS = 8


async def _read_image(request: web.Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The image bytes: a raw body (pict-rs) or the multipart field `file` (pictrs-safety's form)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    content_type = request.content_type
    try:
        if content_type == "multipart/form-data":
            return await _read_multipart_file(request, max_bytes)
        data = await request.read()
        if len(data) > max_bytes:  # chunked bodies have no Content-Length to refuse early
            raise _too_large(max_bytes)
        return data, (content_type if request.headers.get("Content-Type") else None)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except (ValueError, AssertionError, HttpProcessingError) as e:  # malformed multipart
        raise Refusal(400, f"malformed body: {e}") from None


async def _read_multipart_file(request: web.Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The field `file` of a multipart body, looked for in its first MAX_MULTIPART_PARTS parts, all of them
    together at most `max_bytes`. Every part costs parsing work on the event loop: a body of 100,000 tiny
    parts took many seconds and stalled every other request meanwhile. A part that is itself multipart is
    refused (its own parts would escape the count)."""
    reader = await request.multipart()
    left = max_bytes
    for _ in range(MAX_MULTIPART_PARTS):
        part = await reader.next()
        if part is None:
            raise Refusal(400, "multipart body without a 'file' field")
        if not isinstance(part, BodyPartReader):
            raise Refusal(400, "multipart body with a nested multipart part: send the image as field 'file'")
        data = bytearray()
        while chunk := await part.read_chunk(1 << 16):
            left -= len(chunk)
            if left < 0:
                raise _too_large(max_bytes)
            if part.name == "file":
                data += chunk
        if part.name == "file":
            return bytes(data), part.headers.get("Content-Type")
    raise Refusal(400, f"multipart body without a 'file' field in its first {MAX_MULTIPART_PARTS} parts")


async def validate(request: web.Request) -> web.Response:
    """POST /pictrs/validate/{token} and /api/v1/scan/{token}: 200 accept, 406 reject."""
    node = request.app[NODE_KEY]
    started = time.perf_counter()
    request.app[GUARD_KEY].check(request, request.match_info["token"])
    data, media_type = await _read_image(request, node.config.media.max_bytes)
    result = await node.pipeline.check(data, source="pictrs", media_type=media_type)
    node.metrics.validate_seconds.observe(time.perf_counter() - started)
    return json_response(result.as_json(), 200 if result.decision == "accept" else 406)


async def healthz(request: web.Request) -> web.Response:
    return json_response(request.app[NODE_KEY].health())


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def build_app(node: Node) -> web.Application:
    """The aiohttp application of one node. Starting it starts the node; cleaning up closes it
    (pending decision rows written, running inferences finished)."""
    app = web.Application(client_max_size=node.config.media.max_bytes + 1024 * 1024,
                          middlewares=[refusal_middleware])
    app[NODE_KEY] = node
    app[GUARD_KEY] = Guard(node.config)
    app.router.add_post("/pictrs/validate/{token}", validate)
    app.router.add_post("/api/v1/scan/{token}", validate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for setup in node.app_setups:
        setup(app, node)

    async def on_startup(app: web.Application) -> None:
        await node.start()

    async def on_cleanup(app: web.Application) -> None:
        await node.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def app_runner(node: Node, **kwargs: Any) -> web.AppRunner:
    """The runner of `build_app(node)`: its connections keep node.yaml's request deadlines (node.http_limits:
    slow clients are cut off instead of holding connections). `kwargs` go to web.AppRunner."""
    return DeadlineAppRunner(build_app(node), deadlines=Deadlines.of(node.config), **kwargs)
