"""Lemmy's database (0.19 and 1.0): who uploaded a pict-rs alias and which posts and comments use it.

Lemmy keeps one ``local_image`` row per upload: in 0.19 ``(pictrs_alias, local_user_id, published)`` with
``local_user_id`` NULL for a thumbnail it fetched for a federated post; in 1.0 ``(pictrs_alias, person_id,
published_at, thumbnail_for_post_id)``. Timestamps are ``published`` in 0.19 and ``published_at`` in 1.0, a
person's URL ``actor_id`` in 0.19 and ``ap_id`` in 1.0; which columns exist is read once from
information_schema, so neither version is guessed.

Lemmy takes an image's alias as the last path segment of its URL (``https://lemmy.example/pictrs/image/
<alias>``, sometimes with ``?format=...``), so a post uses an alias when its url or thumbnail_url ends in
``/<alias>``. Bodies and comments are searched only on request (a sequential scan on big instances).
"""
from __future__ import annotations

from typing import Any

from node.attribution.database import ReadOnlyDatabase

TABLES = ("local_image", "local_user", "person", "post", "comment")


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else value


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class LemmySchema:
    """The columns this Lemmy has, and what they say about its version."""

    def __init__(self, columns: dict[str, set[str]]) -> None:
        self.columns = columns
        image = columns.get("local_image", set())
        if "person_id" in image:
            self.version = "1.0"
        elif "local_user_id" in image:
            self.version = "0.19"
        else:
            self.version = "unknown"

    def published(self, table: str) -> str:
        return "published_at" if "published_at" in self.columns.get(table, set()) else "published"

    @property
    def person_url(self) -> str:
        return "ap_id" if "ap_id" in self.columns.get("person", set()) else "actor_id"

    def missing(self) -> list[str]:
        return [t for t in TABLES if t not in self.columns]


class LemmyReader:
    def __init__(self, db: ReadOnlyDatabase, version: str = "auto") -> None:
        self.db = db
        self.configured_version = version
        self._schema: LemmySchema | None = None

    async def schema(self) -> LemmySchema:
        if self._schema is None:
            rows = await self.db.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ANY(%s)", (list(TABLES),))
            columns: dict[str, set[str]] = {}
            for row in rows:
                columns.setdefault(row["table_name"], set()).add(row["column_name"])
            schema = LemmySchema(columns)
            if self.configured_version != "auto" and schema.version not in ("unknown", self.configured_version):
                raise LookupError(f"lemmy: attribution.lemmy.version is {self.configured_version} but the tables "
                                  f"are those of Lemmy {schema.version}")
            missing = schema.missing()
            if missing:
                raise LookupError(f"lemmy: the role cannot see table(s) {', '.join(missing)} (see README: the "
                                  f"read-only role's GRANTs)")
            self._schema = schema
        return self._schema

    def _person(self, schema: LemmySchema, alias: str) -> str:
        return (f"{alias}.id AS {alias}_id, {alias}.name AS {alias}_name, {alias}.{schema.person_url} AS {alias}_url,"
                f" {alias}.{schema.published('person')} AS {alias}_created, {alias}.deleted AS {alias}_deleted")

    @staticmethod
    def _person_of(row: dict[str, Any], prefix: str) -> dict[str, Any] | None:
        if row.get(f"{prefix}_id") is None:
            return None
        return {"person_id": row[f"{prefix}_id"], "name": row[f"{prefix}_name"], "actor_url": row[f"{prefix}_url"],
                "created_at": _when(row[f"{prefix}_created"]), "deleted": bool(row[f"{prefix}_deleted"])}

    async def uploads(self, aliases: list[str]) -> list[dict[str, Any]]:
        """One entry per local_image row of these aliases: its uploader, or the post it is a thumbnail for."""
        schema = await self.schema()
        published = schema.published("local_image")
        if schema.version == "1.0":
            sql = (f"SELECT li.pictrs_alias, li.{published} AS uploaded_at, li.thumbnail_for_post_id,"
                   f" {self._person(schema, 'p')} FROM local_image li LEFT JOIN person p ON p.id = li.person_id"
                   " WHERE li.pictrs_alias = ANY(%s) ORDER BY li.pictrs_alias")
        else:
            sql = (f"SELECT li.pictrs_alias, li.{published} AS uploaded_at, NULL::int AS thumbnail_for_post_id,"
                   f" li.local_user_id, {self._person(schema, 'p')} FROM local_image li"
                   " LEFT JOIN local_user lu ON lu.id = li.local_user_id LEFT JOIN person p ON p.id = lu.person_id"
                   " WHERE li.pictrs_alias = ANY(%s) ORDER BY li.pictrs_alias")
        out = []
        for row in await self.db.fetch(sql, (aliases,)):
            uploader = self._person_of(row, "p")
            out.append({"alias": row["pictrs_alias"], "uploaded_at": _when(row["uploaded_at"]), "uploader": uploader,
                        "federated_thumbnail": uploader is None,
                        "thumbnail_for_post_id": row["thumbnail_for_post_id"]})
        return out

    async def posts(self, aliases: list[str], *, search_text: bool = False,
                    post_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Posts whose url or thumbnail_url ends in /<alias> (or that are named by id), and with
        ``search_text`` those whose body mentions an alias."""
        schema = await self.schema()
        match = ("EXISTS (SELECT 1 FROM unnest(%(aliases)s::text[]) a WHERE"
                 " right(split_part(po.url, '?', 1), length(a) + 1) = '/' || a"
                 " OR right(split_part(po.thumbnail_url, '?', 1), length(a) + 1) = '/' || a)")
        clauses = [match, "po.id = ANY(%(ids)s)"]
        if search_text:
            clauses.append("po.body LIKE ANY(%(patterns)s)")
        sql = (f"SELECT po.id, po.name, po.url, po.thumbnail_url, po.body, po.ap_id, po.{schema.published('post')}"
               f" AS published, po.deleted, po.removed, {self._person(schema, 'c')} FROM post po"
               f" LEFT JOIN person c ON c.id = po.creator_id WHERE {' OR '.join(clauses)} ORDER BY po.id")
        params = {"aliases": aliases, "ids": post_ids or [],
                  "patterns": [f"%{_like_escape(a)}%" for a in aliases]}
        out = []
        for row in await self.db.fetch(sql, params):
            via = [f for f in ("url", "thumbnail_url") if any(
                (row[f] or "").split("?", 1)[0].endswith("/" + a) for a in aliases)]
            if search_text and any(a in (row["body"] or "") for a in aliases):
                via.append("body")
            if row["id"] in (post_ids or []) and not via:
                via.append("thumbnail_for_post_id")
            out.append({"post_id": row["id"], "title": row["name"], "url": row["url"],
                        "thumbnail_url": row["thumbnail_url"], "ap_id": row["ap_id"],
                        "published": _when(row["published"]), "deleted": bool(row["deleted"]),
                        "removed": bool(row["removed"]), "creator": self._person_of(row, "c"), "via": via})
        return out

    async def comments(self, aliases: list[str]) -> list[dict[str, Any]]:
        """Comments whose text mentions an alias (only asked for with search_text)."""
        schema = await self.schema()
        sql = (f"SELECT co.id, co.content, co.post_id, co.ap_id, co.{schema.published('comment')} AS published,"
               f" co.deleted, co.removed, {self._person(schema, 'c')} FROM comment co"
               " LEFT JOIN person c ON c.id = co.creator_id WHERE co.content LIKE ANY(%s) ORDER BY co.id")
        rows = await self.db.fetch(sql, ([f"%{_like_escape(a)}%" for a in aliases],))
        return [{"comment_id": r["id"], "post_id": r["post_id"], "ap_id": r["ap_id"],
                 "published": _when(r["published"]), "deleted": bool(r["deleted"]), "removed": bool(r["removed"]),
                 "creator": self._person_of(r, "c"), "excerpt": (r["content"] or "")[:200]} for r in rows]

    async def delete_token(self, alias: str) -> str | None:
        """The token Lemmy 0.19 stored with an upload, which its image deletion route takes."""
        schema = await self.schema()
        if "pictrs_delete_token" not in schema.columns.get("local_image", set()):
            return None
        rows = await self.db.fetch("SELECT pictrs_delete_token FROM local_image WHERE pictrs_alias = %s", (alias,))
        return rows[0]["pictrs_delete_token"] if rows else None

    async def attribute(self, aliases: list[str], *, search_text: bool = False) -> dict[str, Any]:
        schema = await self.schema()
        uploads = await self.uploads(aliases)
        thumbnail_posts = [u["thumbnail_for_post_id"] for u in uploads if u["thumbnail_for_post_id"] is not None]
        posts = await self.posts(aliases, search_text=search_text, post_ids=thumbnail_posts)
        comments = await self.comments(aliases) if search_text else []
        for upload in uploads:
            if upload["federated_thumbnail"]:
                # 1.0 names the post; 0.19 only has the post whose thumbnail_url is this alias.
                post = next((p for p in posts if p["post_id"] == upload["thumbnail_for_post_id"]), None) or next(
                    (p for p in posts if (p["thumbnail_url"] or "").split("?", 1)[0].endswith("/" + upload["alias"])),
                    None)
                upload["remote_post"] = {"post_id": post["post_id"], "ap_id": post["ap_id"],
                                         "title": post["title"]} if post else None
        return {"version": schema.version, "uploads": uploads, "posts": posts, "comments": comments,
                "text_searched": search_text}
