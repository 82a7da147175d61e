"""Federation: nodes share signed verdicts, so an image a trusted peer already classified skips inference.

The node is an ActivityPub actor (``/actor``, WebFinger, NodeInfo) that is locked: only peers listed in
peers.yaml are accepted as followers automatically. Modules, in the order an activity meets them:

  routes        the HTTP routes this package adds to the node's application
  auth          who may do what; HTTP signature checks; what may be fetched to check them
  actors        remote actor documents and which of their keys count (pins)
  public_fetch  fetching a URL a stranger chose: public addresses only
  inbox         POST /inbox, dispatched by activity type, each processed once
  follows       the follow state machine, both directions, and the admin's decisions
  intake        peers' verdicts and retractions: verified, then stored and indexed
  outbox        our change log (pages, the collector) and retracting our verdicts
  delivery      signed HTTP requests and the durable per-inbox delivery queue
  backfill      reading followed peers' logs from our cursor, moved on by their pushes
  lookup        answering and asking about one image
  retractions   the Deletes of issuers whose verdicts we hold without following them
  records       the package's SQL
  identity      the actor document, WebFinger, NodeInfo
  service       the parts wired to one Node, and the serving node's background work
  adding        `peers add`: what a peer announces (keys, model), for its admin to confirm
  commands      `verdict-node peers ...` and `verdict-node verdicts ...`
"""
from __future__ import annotations

import logging

from node.federation.routes import add_routes
from node.federation.service import Federation
from node.runtime import Node

log = logging.getLogger("verdict_node.federation")


def install(node: Node) -> Federation:
    """Add federation to a node: routes, the pipeline's hooks, background work."""
    federation = Federation(node)
    node.features.add(federation)
    node.on_close.append(federation.close)
    node.app_setups.append(lambda app, _node: add_routes(app, federation))
    node.on_own_verdict.append(federation.outbox.on_own_verdict)
    node.on_peers_changed.append(federation.apply_peers)
    node.background.append(federation.run)
    if federation.settings.lookup_peers:
        node.lookup_peers = federation.lookup_client.lookup_peers
    for actor in federation.settings.lookup_peers:
        if actor not in federation.access.peers:
            log.warning("federation.lookup_peers: %s is not in peers.yaml: its answers are used only for "
                        "verdicts of issuers that are", actor)
    return federation
