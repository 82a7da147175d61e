"""Who we federate with: follow requests, approvals and removals, as the admin sees them.

State lives in the ``peers`` table (``follower_state``: they follow us; ``following_state``: we follow
them), and every answer to a peer (Accept, Reject, Undo) is queued in the outbox/deliveries tables. So
these commands work on the data directory whether or not the server runs: a running server sends what
they queued within ``federation.poll_seconds`` and reads the new states on its next request.

Trust levels themselves (full / block-only / observe) are set in peers.yaml, not here: approving a
follower only lets it receive our verdicts and ask lookups; its own verdicts count only if peers.yaml
lists it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from node.config import ConfigError, NodeConfig, load_peers, resolve_config
from node.delivery import drop_log_deliveries, enqueue
from node.store import Store
from protocol import activities, keys


class PeerCommandError(Exception):
    """A peers command that cannot be done, phrased for the admin."""


def _follow_of(row: dict[str, Any], our_actor: str) -> dict[str, Any]:
    """The peer's Follow as Accept/Reject embed it (Mastodon matches it by id)."""
    return {"id": row["their_follow_id"], "type": "Follow", "actor": row["actor"], "object": our_actor}


def _row(store: Store, actor: str) -> dict[str, Any]:
    rows = list(store.db.query("SELECT * FROM peers WHERE actor = ?", [actor]))
    if not rows:
        raise PeerCommandError(f"{actor} is not known here (no follow request from it, not in peers.yaml)")
    return rows[0]


def approve(store: Store, our_actor: str, actor: str) -> str:
    """Accept a pending (or earlier rejected) follow request: the peer starts receiving our verdicts."""
    row = _row(store, actor)
    if not row.get("their_follow_id") or not row.get("inbox"):
        raise PeerCommandError(f"{actor} has not asked to follow this node")
    if row["follower_state"] == "accepted":
        return f"{actor} already follows this node"
    with store.transaction() as conn:
        conn.execute("UPDATE peers SET follower_state = 'accepted', updated_at = ? WHERE actor = ?",
                     (time.time(), actor))
        enqueue(conn, activities.accept(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
    return f"approved {actor}: an Accept is queued; it receives new verdicts now and backfills the older ones"


def reject(store: Store, our_actor: str, actor: str) -> str:
    """Refuse a follow request (or end an approved follow): a Reject is sent and nothing more goes there."""
    row = _row(store, actor)
    if not row.get("their_follow_id") or not row.get("inbox"):
        raise PeerCommandError(f"{actor} has not asked to follow this node")
    with store.transaction() as conn:
        conn.execute("UPDATE peers SET follower_state = 'rejected', updated_at = ? WHERE actor = ?",
                     (time.time(), actor))
        drop_log_deliveries(conn, row["inbox"])
        enqueue(conn, activities.reject(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
    return f"rejected {actor}"


def remove(store: Store, our_actor: str, actor: str) -> str:
    """End both directions: Reject its follow (Mastodon's way to remove a follower) and Undo ours."""
    row = _row(store, actor)
    done = []
    with store.transaction() as conn:
        if row.get("follower_state") not in (None, "none") and row.get("their_follow_id") and row.get("inbox"):
            drop_log_deliveries(conn, row["inbox"])
            enqueue(conn, activities.reject(our_actor, _follow_of(row, our_actor)), [row["inbox"]], audience=[actor])
            done.append("removed as follower")
        if row.get("following_state") not in (None, "none") and row.get("our_follow_id") and row.get("inbox"):
            ours = {"id": row["our_follow_id"], "type": "Follow", "actor": our_actor, "object": actor, "to": [actor]}
            enqueue(conn, activities.undo(our_actor, ours), [row["inbox"]], audience=[actor])
            done.append("unfollowed")
        conn.execute("UPDATE peers SET follower_state = 'none', following_state = 'none', their_follow_id = NULL, "
                     "our_follow_id = NULL, backfill_cursor = NULL, updated_at = ? WHERE actor = ?",
                     (time.time(), actor))
    return f"{actor}: {', '.join(done) or 'no follow in either direction'}"


def forget_key(store: Store, our_actor: str, actor: str) -> str:
    """End the binding of a pinned peer's RSA key (it rotated the key on purpose): the next actor document
    that carries the pinned Ed25519 key binds its RSA key anew. The Ed25519 pin itself lives in peers.yaml."""
    row = _row(store, actor)
    if not row.get("bound_rsa_fingerprint"):
        return f"{actor}: no RSA key is bound (it binds on the next document that carries the pinned key)"
    with store.transaction() as conn:
        conn.execute("UPDATE peers SET bound_rsa_fingerprint = NULL, bound_under_pin = NULL, bound_at = NULL, "
                     "actor_document = NULL WHERE actor = ?", (actor,))
    return (f"{actor}: forgot RSA key {row['bound_rsa_fingerprint']}; the next actor document that carries the "
            f"pinned Ed25519 key binds its RSA key (a running server does so at that peer's next request)")


def listing(store: Store, config: NodeConfig) -> list[dict[str, Any]]:
    """One row per peer we know of: peers.yaml entries and anyone who asked to follow."""
    configured = {p.actor: p for p in load_peers(config.peers_path)}
    rows = {r["actor"]: r for r in store.db.query(
        "SELECT p.actor, p.inbox, p.follower_state, p.following_state, p.key_fingerprint, p.backfill_cursor, "
        "p.bound_rsa_fingerprint, "
        "(SELECT COUNT(*) FROM deliveries d WHERE d.inbox = p.inbox AND d.delivered_at IS NULL) AS queued, "
        "(SELECT last_error FROM deliveries d WHERE d.inbox = p.inbox AND d.last_error IS NOT NULL "
        " ORDER BY d.id DESC LIMIT 1) AS last_error FROM peers p")}
    out = []
    for actor in sorted(set(configured) | set(rows)):
        row, entry = rows.get(actor, {}), configured.get(actor)
        out.append({
            "actor": actor,
            "in_peers_yaml": entry is not None,
            "trust": entry.trust if entry else None,
            "they_follow_us": row.get("follower_state") or "none",
            "we_follow_them": row.get("following_state") or "none",
            "ed25519_fingerprint": row.get("key_fingerprint"),
            "pinned": bool(entry and entry.key_fingerprint),
            "bound_rsa_fingerprint": row.get("bound_rsa_fingerprint"),
            "queued_deliveries": row.get("queued") or 0,
            "last_error": row.get("last_error"),
        })
    return out


# -- CLI ------------------------------------------------------------------------------------------------

def _open(args: argparse.Namespace) -> tuple[NodeConfig, Store]:
    config = resolve_config(args.config)
    return config, Store(config.database_path)


def cmd_peers(args: argparse.Namespace) -> int:
    try:
        config, store = _open(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        action = args.peers_command
        if action == "list":
            peers = listing(store, config)
            if args.json:
                print(json.dumps(peers, indent=2))
            elif not peers:
                print("no peers: list them in peers.yaml (see peers.example.yaml)")
            for p in ([] if args.json else peers):
                trust = p["trust"] or "not in peers.yaml (its verdicts are not used)"
                print(f"{p['actor']}\n  trust: {trust}\n  follows us: {p['they_follow_us']}   "
                      f"we follow: {p['we_follow_them']}   queued deliveries: {p['queued_deliveries']}"
                      + (f"\n  last delivery error: {p['last_error']}" if p["last_error"] else ""))
            return 0
        if action == "show-key":
            from protocol.keys import load_private_key

            ed = load_private_key(config.ed25519_key_path)
            rsa_key = load_private_key(config.rsa_key_path)
            print(f"actor: {config.actor_id}")
            print(f"key_fingerprint: {keys.key_fingerprint(ed)}   # Ed25519 (verdict proofs): pin this in peers.yaml")
            print(f"rsa_fingerprint: {keys.key_fingerprint(rsa_key)}   # RSA (HTTP signatures)")
            return 0
        operation = {"approve": approve, "reject": reject, "remove": remove, "forget-key": forget_key}[action]
        print(operation(store, config.actor_id, args.actor.rstrip("/")))
        return 0
    except PeerCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
