"""The federation routes of a node's HTTP application, and the refusal counter they share."""
from __future__ import annotations

from aiohttp import web

from node.federation.metrics import FederationMetrics
from node.federation.service import Federation
from node.web import Handler, Refusal


def _counted(handler: Handler, metrics: FederationMetrics) -> Handler:
    """Count a handler's refusals by status (``verdictnode_federation_refused_total``); the core's
    refusal middleware answers them."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            metrics.refused.labels(str(refusal.status)).inc()
            raise

    return wrapped


def add_routes(app: web.Application, federation: Federation) -> None:
    identity, metrics = federation.identity, federation.metrics
    app.router.add_get("/actor", identity.handle_actor)
    app.router.add_get("/.well-known/webfinger", identity.handle_webfinger)
    app.router.add_get("/.well-known/nodeinfo", identity.handle_nodeinfo_index)
    app.router.add_get("/nodeinfo/2.1", identity.handle_nodeinfo)
    app.router.add_post("/inbox", _counted(federation.inbox.handle, metrics))
    app.router.add_get("/outbox", _counted(federation.outbox.handle, metrics))
    app.router.add_get("/lookup", _counted(federation.lookup_server.handle, metrics))
