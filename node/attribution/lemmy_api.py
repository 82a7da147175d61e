"""Lemmy's admin API, for the one kind of action attribution takes, and only when an admin asks: purging a
post, a comment or a person (which removes it and its uploads from the instance for good).

0.19: ``POST /api/v3/admin/purge/{post,comment,person}`` with ``{"post_id"|"comment_id"|"person_id": N,
"reason": "..."}``. 1.0: the same under ``/api/v4``. Both take the admin's login token as
``Authorization: Bearer <jwt>``. What Lemmy answers is said in one line of our own words: its error code
(``not_an_admin``, ``not_logged_in``) is quoted, nothing else of its body.

Deleting one image (all posts keep their URL, which then points at nothing): 1.0 has ``DELETE /api/v4/image``
with ``{"filename": alias}``; 0.19 has ``GET /pictrs/image/delete/{delete_token}/{alias}``, the token being
the one Lemmy stored with the upload (``local_image.pictrs_delete_token``, read from its database).
"""
from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import aiohttp

KINDS = ("post", "comment", "person")
_CODE = re.compile(r"[a-z_]{1,60}\Z")


class LemmyAdminApi:
    def __init__(self, base_url: str, jwt: str, *, version: str = "0.19", timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.jwt = jwt
        self.version = version
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def route(self, kind: str) -> str:
        api = "v4" if self.version == "1.0" else "v3"
        return f"/api/{api}/admin/purge/{kind}"

    async def purge(self, kind: str, target_id: int, reason: str) -> tuple[bool, str]:
        """(done, the line saying what Lemmy answered)."""
        if kind not in KINDS:
            raise ValueError(f"cannot purge a {kind!r}: one of {', '.join(KINDS)}")
        body = {f"{kind}_id": int(target_id), "reason": reason}
        return await self._call("POST", self.route(kind), body, f"purge {kind} {target_id}", kind)

    async def delete_image(self, alias: str, *, delete_token: str | None = None) -> tuple[bool, str]:
        """(done, the line saying what Lemmy answered). 0.19 needs the upload's ``delete_token``."""
        if self.version == "1.0":
            return await self._call("DELETE", "/api/v4/image", {"filename": alias}, f"delete image {alias}", "image")
        if not delete_token:
            return False, (f"lemmy {self.base_url}: not deleted (delete image {alias}): Lemmy 0.19 deletes an image "
                           f"by the token stored with its upload, and its database has no upload of that alias")
        return await self._call("GET", f"/pictrs/image/delete/{quote(delete_token, safe='')}/{quote(alias, safe='')}",
                                None, f"delete image {alias}", "image")

    async def _call(self, method: str, path: str, body: Any, what: str, kind: str) -> tuple[bool, str]:
        headers = {"Authorization": f"Bearer {self.jwt}"}
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as http:
                async with http.request(method, self.base_url + path, json=body, headers=headers) as resp:
                    try:
                        answer: Any = await resp.json(content_type=None)
                    except ValueError:
                        answer = None
                    status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return False, f"lemmy {self.base_url} unreachable, nothing done ({what}): {type(exc).__name__}"
        code = answer.get("error") if isinstance(answer, dict) else None
        code = code if isinstance(code, str) and _CODE.match(code) else None
        if status == 200 and (not isinstance(answer, dict) or answer.get("success", True) is not False):
            return True, f"lemmy {self.base_url} did {what} (Lemmy {self.version})"
        hint = ""
        if status in (401, 403) or code in ("not_logged_in", "incorrect_login", "not_an_admin"):
            hint = ": check attribution.lemmy.api_jwt (an admin's login token, not expired)"
        elif status == 404 or code in ("couldnt_find_post", "couldnt_find_comment", "couldnt_find_person",
                                       "not_found", "not_found_image"):
            hint = f": no such {kind} on that instance"
        return False, (f"lemmy {self.base_url} refused {what}: HTTP {status}"
                       f"{' ' + code if code else ''}{hint}")
