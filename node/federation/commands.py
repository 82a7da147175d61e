"""`verdict-node peers ...` and `verdict-node verdicts ...`: the admin's federation commands.

They act on the data directory (the database, peers.yaml), not on a running server: a running server sends
what they queued within ``federation.poll_seconds``, reads the new states on its next request, and puts a
peers.yaml that `peers add` wrote in force within a second.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from node.config import NodeConfig, load_peers
from node.datadir import resolve_config
from node.federation.adding import AddError, Announced, chosen_pin, fetch_announced, new_entry
from node.federation.delivery import SignedClient
from node.federation.follows import PeerCommandError, approve, forget_key, reject, remove
from node.federation.outbox import retract
from node.federation.records import FederationRecords
from node.peers_file import add_entry
from node.store import Store
from protocol import keys


def listing(store: Store, config: NodeConfig) -> list[dict[str, Any]]:
    """One row per peer we know of: peers.yaml entries and anyone who asked to follow."""
    configured = {p.actor: p for p in load_peers(config.peers_path)}
    rows = FederationRecords(store).peer_listing()
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


def _print_listing(peers: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(peers, indent=2))
        return
    if not peers:
        print("no peers: list them in peers.yaml (see peers.example.yaml)")
    for p in peers:
        trust = p["trust"] or "not in peers.yaml (its verdicts are not used)"
        print(f"{p['actor']}\n  trust: {trust}\n  follows us: {p['they_follow_us']}   "
              f"we follow: {p['we_follow_them']}   queued deliveries: {p['queued_deliveries']}"
              + (f"\n  last delivery error: {p['last_error']}" if p["last_error"] else ""))


def _show_key(config: NodeConfig) -> None:
    ed = keys.load_private_key(config.ed25519_key_path)
    rsa_key = keys.load_private_key(config.rsa_key_path)
    print(f"actor: {config.actor_id}")
    print(f"key_fingerprint: {keys.key_fingerprint(ed)}   # Ed25519 (verdict proofs): pin this in peers.yaml")
    print(f"rsa_fingerprint: {keys.key_fingerprint(rsa_key)}   # RSA (HTTP signatures)")


def _fetch(config: NodeConfig, actor: str) -> Announced:
    client = SignedClient(config.actor_id, keys.load_private_key(config.rsa_key_path),
                          total_timeout=config.federation.request_timeout_seconds)

    async def fetch() -> Announced:
        try:
            return await fetch_announced(client, actor)
        finally:
            await client.close()

    return asyncio.run(fetch())


def _add(config: NodeConfig, args: argparse.Namespace) -> int:
    """`peers add`: show what the peer announces, pin its key once the admin confirmed, append to peers.yaml."""
    actor = args.actor.rstrip("/")
    try:
        announced: Announced | None = _fetch(config, actor)
    except AddError as exc:
        if args.key_fingerprint is None:
            print(f"error: {exc}; nothing written (with --key-fingerprint it is added unread)", file=sys.stderr)
            return 1
        print(f"warning: {exc}; pinning the fingerprint given (checked at the first contact)", file=sys.stderr)
        announced = None
    if announced is not None:
        print("\n".join(announced.lines()))
    try:
        pin = chosen_pin(announced, args.key_fingerprint)
        if args.key_fingerprint is None:
            if not sys.stdin.isatty():
                raise AddError(f"nothing written: check {pin} with the peer's admin, then run again with "
                               f"--key-fingerprint {pin}")
            if input("Pin this key and add the peer? [y/N] ").strip().lower() not in ("y", "yes"):
                raise AddError("nothing written")
        entry = new_entry(actor, pin, args.trust, share=args.share, follow=args.follow)
    except AddError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    add_entry(config.peers_path, entry)  # a ConfigError (the file in place is broken) exits with 2
    print(f"added {actor} to {config.peers_path} (trust: {args.trust}, follow: {str(args.follow).lower()}, "
          f"share: {str(args.share).lower()}); a running `verdict-node serve` puts it in force within a second "
          f"(or at `kill -HUP`)")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    if args.peers_command == "show-key":
        _show_key(config)
        return 0
    if args.peers_command == "add":
        return _add(config, args)
    store = Store(config.database_path)
    try:
        if args.peers_command == "list":
            _print_listing(listing(store, config), args.json)
            return 0
        operation = {"approve": approve, "reject": reject, "remove": remove, "forget-key": forget_key}
        print(operation[args.peers_command](store, config.actor_id, args.actor.rstrip("/")))
        return 0
    except PeerCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _print_verdicts(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        scores = " ".join(f"{k}={v:.3f}" for k, v in sorted(r["scores"].items()))
        line = f"{r['verdict_id']}  {r['label']:<5} {scores}  {'own' if r['own'] else r['issuer']}"
        if r["retracted_at"]:
            line += f"  RETRACTED: {r['retract_reason']}"
        print(line)


def cmd_verdicts(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    store = Store(config.database_path)
    try:
        if args.verdicts_command == "list":
            own = {"own": True, "peers": False, "all": None}[args.which]
            rows = list(FederationRecords(store).list_verdicts(issuer=args.issuer, own=own, retracted=args.retracted,
                                                               limit=args.limit))
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_verdicts(rows)
            return 0
        try:
            print(retract(store, config, keys.load_private_key(config.ed25519_key_path), args.verdict_id, args.reason))
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        store.close()
