"""Adding a peer (`verdict-node peers add ACTOR --trust ... [--share] [--follow]`): what the peer announces,
fetched for its admin to confirm, and the peers.yaml entry written.

The admin chose the URL, so the actor document is fetched with the node's ordinary signed client (not the
public-addresses-only client kept for strangers): a peer on a private network is a normal setup. What is
shown is what an admin compares with the other admin's `verdict-node peers show-key`: the Ed25519 key
fingerprint (it becomes the pin in peers.yaml), the RSA fingerprint, and the model the peer's NodeInfo
announces. ``--key-fingerprint`` confirms without a prompt; a fingerprint the document does not carry is
refused and nothing is written. The entry is appended by node.peers_file (other entries kept, atomic); a
running `serve` puts it in force within a second (or at SIGHUP).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from node.config import check_url
from node.federation.actors import ActorError, read_document
from node.federation.delivery import PeerRequestError, SignedClient
from protocol import keys
from protocol.verdict import origin_of


class AddError(Exception):
    """The peer cannot be added as asked; the message is the one line the admin reads."""


@dataclass(frozen=True)
class Announced:
    """What a peer's documents say about it."""

    actor: str
    name: str | None
    ed25519: tuple[str, ...]       # fingerprints of the keys that sign its verdicts
    rsa: tuple[str, ...]           # fingerprints of the keys that sign its requests
    model: str | None              # NAME@RULES from its NodeInfo; None: it classifies nothing itself
    model_known: bool              # False when its NodeInfo could not be read

    def lines(self) -> list[str]:
        model = (self.model or "none (it classifies nothing itself)") if self.model_known else \
            "unknown (its NodeInfo could not be read)"
        return [f"actor: {self.actor}" + (f" ({self.name})" if self.name else ""),
                *[f"key_fingerprint: {fp}   # Ed25519, signs its verdicts: compare with its admin's "
                  f"`verdict-node peers show-key`" for fp in self.ed25519],
                *[f"rsa_fingerprint: {fp}   # RSA, signs its requests" for fp in self.rsa],
                f"model: {model}"]


async def fetch_announced(client: SignedClient, actor: str) -> Announced:
    """The peer's actor document (keys) and NodeInfo (model). AddError when the actor cannot be read."""
    try:
        doc = await client.get_json(actor)
        parsed = read_document(doc, actor, time.time())
    except (PeerRequestError, ActorError, ValueError) as exc:
        raise AddError(f"cannot read the actor document at {actor}: {exc}") from None
    remote = parsed.remote
    name = doc.get("name") if isinstance(doc.get("name"), str) else None
    model, model_known = await _announced_model(client, actor)
    return Announced(actor, name, tuple(keys.key_fingerprint(k) for k in remote.ed25519_keys.values()),
                     tuple(keys.key_fingerprint(k) for k in remote.rsa_keys.values()), model, model_known)


async def _announced_model(client: SignedClient, actor: str) -> tuple[str | None, bool]:
    origin = origin_of(actor)
    try:
        index = await client.get_json(f"{origin}/.well-known/nodeinfo")
        links = [link.get("href") for link in index.get("links", []) if isinstance(link, dict)]
        href = next(h for h in links if isinstance(h, str) and origin_of(h) == origin)
        info = await client.get_json(href)
        model = info.get("metadata", {}).get("model")
        return (model if isinstance(model, str) else None), True
    except (PeerRequestError, StopIteration, AttributeError, TypeError, ValueError):
        return None, False


def chosen_pin(announced: Announced | None, given: str | None) -> str:
    """The fingerprint to pin: the one the admin gave, which the document must carry when it could be read;
    else the document's only Ed25519 key. AddError otherwise."""
    if given is not None:
        if announced is not None and given not in announced.ed25519:
            raise AddError(f"{announced.actor} presents Ed25519 key(s) {', '.join(announced.ed25519) or 'none'}, "
                           f"not {given}: nothing written (check the fingerprint with its admin)")
        return given
    if announced is None or len(announced.ed25519) != 1:
        raise AddError("give --key-fingerprint: the actor document carries "
                       f"{len(announced.ed25519) if announced else 'no readable'} Ed25519 key(s)")
    return announced.ed25519[0]


def new_entry(actor: str, pin: str, trust: str, *, share: bool, follow: bool) -> dict[str, Any]:
    """The peers.yaml entry `peers add` writes: every choice spelled out (peers.yaml's own defaults for
    follow and share are true; the command asks for them explicitly)."""
    problem = check_url(actor)
    if problem or not urlsplit(actor).netloc:
        raise AddError(f"{actor}: {problem or 'not a URL'}")
    return {"actor": actor, "key_fingerprint": pin, "trust": trust, "follow": follow, "share": share}
