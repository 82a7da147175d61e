"""Who this node is to others: its actor document (RSA ``publicKey`` for HTTP signatures, the Ed25519
Multikey under ``assertionMethod`` for verdict proofs, locked), WebFinger and NodeInfo."""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from node.federation.delivery import ACTIVITY_JSON
from node.runtime import Node
from node.web import json_response
from protocol import activities

SOFTWARE = "verdict-node"
JRD_JSON = "application/jrd+json"
NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"


@dataclass(frozen=True)
class NodeUrls:
    """This node's public URLs, all under ``node.url``."""

    base: str

    @property
    def actor(self) -> str:
        return f"{self.base}/actor"

    @property
    def inbox(self) -> str:
        return f"{self.base}/inbox"

    @property
    def outbox(self) -> str:
        return f"{self.base}/outbox"

    @property
    def lookup(self) -> str:
        return f"{self.base}/lookup"

    @property
    def followers(self) -> str:
        return f"{self.base}/followers"


class Identity:
    def __init__(self, node: Node, urls: NodeUrls) -> None:
        self.node = node
        self.urls = urls

    @property
    def username(self) -> str:
        return re.sub(r"[^a-z0-9_.-]+", "-", self.node.config.node.name.lower()).strip("-") or "node"

    def actor_document(self) -> dict[str, Any]:
        doc = activities.actor_document(self.urls.actor, self.node.rsa_key, self.node.ed25519_key,
                                        preferred_username=self.username, name=self.node.config.node.name,
                                        inbox=self.urls.inbox, outbox=self.urls.outbox)
        # Where approved peers ask about one fingerprint (federation.actors reads it back).
        doc["endpoints"]["verdictLookup"] = self.urls.lookup
        return doc

    async def handle_actor(self, request: web.Request) -> web.Response:
        return json_response(self.actor_document(), content_type=ACTIVITY_JSON)

    async def handle_webfinger(self, request: web.Request) -> web.Response:
        resource = request.query.get("resource", "")
        host = urlsplit(self.urls.base).netloc
        if resource not in (f"acct:{self.username}@{host}", self.urls.actor):
            return json_response({"error": f"no such resource here (try acct:{self.username}@{host})"}, 404)
        return json_response({
            "subject": f"acct:{self.username}@{host}",
            "aliases": [self.urls.actor],
            "links": [{"rel": "self", "type": ACTIVITY_JSON, "href": self.urls.actor}],
        }, content_type=JRD_JSON)

    async def handle_nodeinfo_index(self, request: web.Request) -> web.Response:
        return json_response({"links": [{"rel": NODEINFO_SCHEMA, "href": f"{self.urls.base}/nodeinfo/2.1"}]})

    async def handle_nodeinfo(self, request: web.Request) -> web.Response:
        try:
            software_version = version("verdict-node")
        except PackageNotFoundError:
            software_version = "0.0.0"
        model = self.node.model
        return json_response({
            "version": "2.1",
            "software": {"name": SOFTWARE, "version": software_version},
            "protocols": ["activitypub"],
            "services": {"inbound": [], "outbound": []},
            "openRegistrations": False,
            "usage": {"users": {"total": 1}},
            "metadata": {"actor": self.urls.actor, "inbox": self.urls.inbox, "outbox": self.urls.outbox,
                         "lookup": self.urls.lookup, "manuallyApprovesFollowers": True,
                         # What a peer's admin lists under known_models (NAME@RULES) to use our scores.
                         "model": f"{model.name}@{model.rules}" if model else None},
        }, content_type=f'application/json; profile="{NODEINFO_SCHEMA}#"')
