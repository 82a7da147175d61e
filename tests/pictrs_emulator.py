"""An aiohttp app that behaves like pict-rs 0.5 for what verdict-node uses: upload (`POST /image`,
multipart `images[]`), serving originals, and the admin API behind `X-Api-Token`
(`GET /internal/hashes` newest-first pages with slug/timestamp cursors, `POST /internal/purge`,
`GET /internal/aliases`, `GET /internal/identifier`). Shapes follow pict-rs's README "API" section.

Unknown aliases are answered as pict-rs's handlers do: /internal/aliases 200 with no aliases, /internal/purge
400 "No images associated with provided alias", /internal/identifier 404.

pict-rs itself cannot be installed here (no cargo registry), so sweeps are tested against this.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiohttp import web

from scanners.sources.pictrs import parse_rfc3339  # tested on its own in test_sources_pictrs.py

CONTENT_TYPES = {b"\xff\xd8\xff": ("image/jpeg", "jpg"), b"\x89PNG": ("image/png", "png"),
                 b"GIF8": ("image/gif", "gif"), b"RIFF": ("image/webp", "webp")}


def _sniff(data: bytes) -> tuple[str, str]:
    for magic, kind in CONTENT_TYPES.items():
        if data.startswith(magic):
            return kind
    return ("application/octet-stream", "bin")


def rfc3339(ts: float) -> str:
    """pict-rs writes nanosecond RFC 3339 UTC timestamps."""
    whole = int(ts)
    nanos = int(round((ts - whole) * 1e9))
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


@dataclass
class StoredHash:
    hex: str
    data: bytes
    content_type: str
    created_at: float
    aliases: list[str] = field(default_factory=list)


class PictrsState:
    def __init__(self, api_key: str, *, long_hex: bool = False):
        self.api_key = api_key
        # pict-rs 0.5's Hash::to_hex is the sha256 followed by the size (8 bytes) and a format byte; the
        # short form (the sha256 alone) is what the sweep tests key on.
        self.long_hex = long_hex
        self.hashes: dict[str, StoredHash] = {}
        self.alias_to_hash: dict[str, str] = {}
        self.fail_next = 0          # answer this many next requests with 500 (fault injection)
        self.requests: list[str] = []
        self._clock = 1_700_000_000.0

    def add(self, data: bytes, created_at: float | None = None, alias: str | None = None) -> str:
        """Ingest bytes as pict-rs would; returns the new alias (``alias``: the one to give, for tests that
        need it to match another system's records). Same bytes -> same hash, new alias."""
        content_type, ext = _sniff(data)
        hex_ = hashlib.sha256(data).hexdigest()
        if created_at is None:
            self._clock += 1.0
            created_at = self._clock
        stored = self.hashes.setdefault(hex_, StoredHash(hex_, data, content_type, created_at))
        alias = alias or f"{secrets.token_hex(5)}.{ext}"
        stored.aliases.append(alias)
        self.alias_to_hash[alias] = hex_
        return alias

    def ordered(self) -> list[StoredHash]:
        return sorted(self.hashes.values(), key=lambda h: (h.created_at, h.hex), reverse=True)

    def purge(self, alias: str) -> list[str]:
        hex_ = self.alias_to_hash.get(alias)
        if hex_ is None:
            return []
        stored = self.hashes.pop(hex_)
        for a in stored.aliases:
            self.alias_to_hash.pop(a, None)
        return stored.aliases


def _details(h: StoredHash) -> dict:
    return {"width": 1, "height": 1, "frames": None, "content_type": h.content_type,
            "created_at": rfc3339(h.created_at)}


def _hex(state: "PictrsState", h: StoredHash) -> str:
    if not state.long_hex:
        return h.hex
    return h.hex + len(h.data).to_bytes(8, "big").hex() + "01"


def _slug(h: StoredHash) -> str:
    return base64.urlsafe_b64encode(f"{h.created_at!r}|{h.hex}".encode()).decode()


def _unslug(slug: str) -> tuple[float, str]:
    ts, hex_ = base64.urlsafe_b64decode(slug.encode()).decode().split("|")
    return float(ts), hex_


def build_app(state: PictrsState) -> web.Application:
    @web.middleware
    async def faults_and_auth(request: web.Request, handler):
        state.requests.append(f"{request.method} {request.path_qs}")
        if state.fail_next > 0:
            state.fail_next -= 1
            return web.json_response({"msg": "injected failure"}, status=500)
        if request.path.startswith("/internal/") and request.headers.get("X-Api-Token") != state.api_key:
            return web.json_response({"msg": "Invalid API token"}, status=401)
        return await handler(request)

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        files = []
        async for part in reader:
            if part.name != "images[]":
                continue
            data = await part.read()
            alias = state.add(bytes(data))
            files.append({"delete_token": secrets.token_hex(5), "file": alias,
                          "details": _details(state.hashes[state.alias_to_hash[alias]])})
        if not files:
            return web.json_response({"msg": "No files present in upload"}, status=400)
        return web.json_response({"files": files, "msg": "ok"}, status=201)

    async def original(request: web.Request) -> web.Response:
        hex_ = state.alias_to_hash.get(request.match_info["alias"])
        if hex_ is None:
            return web.json_response({"msg": "Requested a file that doesn't exist"}, status=404)
        h = state.hashes[hex_]
        return web.Response(body=h.data, content_type=h.content_type)

    async def hashes(request: web.Request) -> web.Response:
        limit = max(1, min(int(request.query.get("limit", "20")), 1000))
        ordered = state.ordered()
        start = 0
        if "slug" in request.query:
            ts, hex_ = _unslug(request.query["slug"])
            start = next((i for i, h in enumerate(ordered) if (h.created_at, h.hex) <= (ts, hex_)), len(ordered))
        elif "timestamp" in request.query:
            ts = parse_rfc3339(request.query["timestamp"])
            start = next((i for i, h in enumerate(ordered) if h.created_at <= ts + 1e-6), len(ordered))
        page = ordered[start:start + limit]
        body = {"limit": limit, "current": _slug(page[0]) if page else None,
                "next": _slug(ordered[start + limit]) if start + limit < len(ordered) else None,
                "prev": _slug(ordered[max(0, start - limit)]) if start > 0 else None,
                "hashes": [{"hex": _hex(state, h), "aliases": list(h.aliases), "details": _details(h)} for h in page]}
        return web.json_response({"msg": "ok", "page": body})

    async def purge(request: web.Request) -> web.Response:
        aliases = state.purge(request.query.get("alias", ""))
        if not aliases:
            return web.json_response({"msg": "No images associated with provided alias"}, status=400)
        return web.json_response({"msg": "ok", "aliases": aliases})

    async def aliases(request: web.Request) -> web.Response:
        hex_ = state.alias_to_hash.get(request.query.get("alias", ""))
        return web.json_response({"msg": "ok", "aliases": list(state.hashes[hex_].aliases) if hex_ else []})

    async def identifier(request: web.Request) -> web.Response:
        hex_ = state.alias_to_hash.get(request.query.get("alias", ""))
        if hex_ is None:
            return web.json_response({"msg": "No identifiers associated with provided alias"}, status=404)
        return web.json_response({"msg": "ok", "identifier": f"{hex_[:2]}/{hex_[2:4]}/{hex_}"})

    app = web.Application(middlewares=[faults_and_auth], client_max_size=64 * 1024 * 1024)
    app.router.add_post("/image", upload)
    app.router.add_get("/image/original/{alias}", original)
    app.router.add_get("/internal/hashes", hashes)
    app.router.add_post("/internal/purge", purge)
    app.router.add_get("/internal/aliases", aliases)
    app.router.add_get("/internal/identifier", identifier)
    return app
