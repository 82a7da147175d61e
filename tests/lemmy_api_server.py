"""A stand-in for Lemmy's admin API (a real aiohttp server on loopback) that checks each purge call's shape as
Lemmy 0.19 (/api/v3) and 1.0 (/api/v4) define it, records the calls, and answers as Lemmy does: 200
{"success": true}; a missing or wrong token 401 {"error": "not_logged_in"}; a non-admin's token 400
{"error": "not_an_admin"}; an unknown id 404 {"error": "couldnt_find_<kind>"}. Image deletion: 1.0's
`DELETE /api/v4/image` {"filename": alias}, 0.19's `GET /pictrs/image/delete/{token}/{alias}` (the token
must be the upload's)."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

from tests.node_helpers import free_port

ADMIN_JWT = "eyJhbGciOiJIUzI1NiJ9.admin.sig"
USER_JWT = "eyJhbGciOiJIUzI1NiJ9.user.sig"


@dataclass
class LemmyApi:
    version: str
    url: str = ""
    calls: list[dict] = field(default_factory=list)
    known: dict[str, set[int]] = field(default_factory=lambda: {"post": {101, 102}, "comment": {201}, "person": {1}})
    images: dict[str, str] = field(default_factory=dict)  # alias -> delete token


def build_app(api: LemmyApi) -> web.Application:
    prefix = "/api/v4" if api.version == "1.0" else "/api/v3"

    async def purge(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        auth = request.headers.get("Authorization", "")
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid_body"}, status=400)
        api.calls.append({"path": request.path, "kind": kind, "body": body, "authorization": auth,
                          "content_type": request.content_type})
        if auth not in (f"Bearer {ADMIN_JWT}", f"Bearer {USER_JWT}"):
            return web.json_response({"error": "not_logged_in"}, status=401)
        if auth == f"Bearer {USER_JWT}":
            return web.json_response({"error": "not_an_admin"}, status=400)
        if kind not in api.known or set(body) != {f"{kind}_id", "reason"} or not isinstance(body[f"{kind}_id"], int):
            return web.json_response({"error": "invalid_body"}, status=400)
        if body[f"{kind}_id"] not in api.known[kind]:
            return web.json_response({"error": f"couldnt_find_{kind}"}, status=404)
        return web.json_response({"success": True})

    def refused(auth: str) -> web.Response | None:
        if auth not in (f"Bearer {ADMIN_JWT}", f"Bearer {USER_JWT}"):
            return web.json_response({"error": "not_logged_in"}, status=401)
        return None

    async def delete_image_v4(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = await request.json()
        api.calls.append({"path": request.path, "method": request.method, "body": body, "authorization": auth})
        if (answer := refused(auth)) is not None:
            return answer
        if set(body) != {"filename"} or body["filename"] not in api.images:
            return web.json_response({"error": "not_found"}, status=404)
        api.images.pop(body["filename"])
        return web.json_response({"success": True})

    async def delete_image_v3(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token, alias = request.match_info["token"], request.match_info["alias"]
        api.calls.append({"path": request.path, "method": request.method, "authorization": auth})
        if (answer := refused(auth)) is not None:
            return answer
        if api.images.get(alias) != token:
            return web.json_response({"error": "not_found"}, status=404)
        api.images.pop(alias)
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_post(prefix + "/admin/purge/{kind}", purge)
    if api.version == "1.0":
        app.router.add_delete("/api/v4/image", delete_image_v4)
    else:
        app.router.add_get("/pictrs/image/delete/{token}/{alias}", delete_image_v3)
    return app


@contextlib.asynccontextmanager
async def lemmy_api(version: str) -> AsyncIterator[LemmyApi]:
    api = LemmyApi(version)
    runner = web.AppRunner(build_app(api))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api.url = f"http://127.0.0.1:{port}"
    try:
        yield api
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)
