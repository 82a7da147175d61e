"""The ActivityPub surface of a verdict node: its actor document, the activities it sends, and a strict
parser for what arrives in its inbox.

The actor is an ``Application`` that manually approves followers (only trusted peers receive verdicts). It
publishes the RSA key for HTTP Signatures under ``publicKey`` and the Ed25519 key for verdict proofs as a
Multikey under ``assertionMethod``, with the contexts Fedify needs to read them (the Multikey and security
contexts; tests/test_interop_fedify.py checks that Fedify does). Verdicts travel inside Create (new), Update (superseding), Delete
(retraction, as a Tombstone) and Announce (relay of other issuers' signed verdicts).

``parse_activity`` checks structure only; the caller then verifies HTTP signatures and every verdict's
proof (``protocol.verdict.verify_verdict``) with keys it resolves itself. It raises only ProtocolError.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from protocol import keys
from protocol.errors import ProtocolError, require_object, short_repr
from protocol.verdict import VERDICT_CONTEXT, Verdict, new_object_id, origin_of

AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
PUBLIC = "https://www.w3.org/ns/activitystreams#Public"
ACTOR_CONTEXT: list[Any] = [
    AS_CONTEXT,
    "https://w3id.org/security/v1",
    "https://w3id.org/security/multikey/v1",
    "https://www.w3.org/ns/did/v1",
    {"manuallyApprovesFollowers": "as:manuallyApprovesFollowers"},
]
RSA_KEY_FRAGMENT = "#main-key"        # Lemmy's keyId parser needs a fragment; Mastodon's convention
ED25519_KEY_FRAGMENT = "#ed25519-key"

MAX_ACTIVITY_BYTES = 1_000_000        # Mastodon reads bodies with a 1 MB limit too
MAX_DEPTH = 32
MAX_VERDICTS = 100
MAX_URL_LEN = 2048
MAX_REASON_LEN = 1000
ACTIVITY_TYPES = ("Follow", "Accept", "Reject", "Undo", "Create", "Update", "Delete", "Announce")


def rsa_key_id(actor_id: str) -> str:
    return actor_id + RSA_KEY_FRAGMENT


def ed25519_key_id(actor_id: str) -> str:
    return actor_id + ED25519_KEY_FRAGMENT


# -- actor document ----------------------------------------------------------------------------------------

def actor_document(actor_id: str, rsa_key: rsa.RSAPrivateKey | rsa.RSAPublicKey,
                   ed25519_key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey, *,
                   preferred_username: str = "verdicts", name: str | None = None, summary: str | None = None,
                   inbox: str | None = None, outbox: str | None = None, followers: str | None = None,
                   shared_inbox: str | None = None) -> dict[str, Any]:
    """Our actor (type Application, locked). Collection URLs default to <origin>/inbox, /outbox, /followers."""
    origin = origin_of(actor_id)
    if origin is None:
        raise ProtocolError("actor id must be an http(s) URL", "id")
    inbox = inbox or f"{origin}/inbox"
    doc: dict[str, Any] = {
        "@context": ACTOR_CONTEXT,
        "id": actor_id,
        "type": "Application",
        "preferredUsername": preferred_username,
        "name": name or preferred_username,
        "inbox": inbox,
        "outbox": outbox or f"{origin}/outbox",
        "followers": followers or f"{origin}/followers",
        "endpoints": {"sharedInbox": shared_inbox or inbox},
        "manuallyApprovesFollowers": True,
        "publicKey": {
            "id": rsa_key_id(actor_id),
            "owner": actor_id,
            "publicKeyPem": keys.rsa_public_pem(rsa_key),
        },
        "assertionMethod": [{
            "id": ed25519_key_id(actor_id),
            "type": "Multikey",
            "controller": actor_id,
            "publicKeyMultibase": keys.ed25519_multikey(ed25519_key),
        }],
    }
    if summary:
        doc["summary"] = summary
    return doc


@dataclass(frozen=True)
class RemoteActor:
    """What we need from a peer's actor document: where to deliver and which keys speak for it."""

    id: str
    inbox: str
    shared_inbox: str | None
    preferred_username: str | None
    manually_approves_followers: bool
    rsa_keys: Mapping[str, rsa.RSAPublicKey] = field(default_factory=dict)
    ed25519_keys: Mapping[str, ed25519.Ed25519PublicKey] = field(default_factory=dict)

    def http_key(self, key_id: str) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
        """The key for an HTTP signature's keyId (RSA ``publicKey``, or an Ed25519 assertion key for
        RFC 9421 Ed25519 signers). Raises ProtocolError if this actor publishes no such key."""
        key = self.rsa_keys.get(key_id) or self.ed25519_keys.get(key_id)
        if key is None:
            raise ProtocolError(f"actor {self.id} publishes no key {key_id}", "keyId")
        return key

    def proof_key(self, verification_method: str) -> ed25519.Ed25519PublicKey:
        """The Ed25519 key for a verdict proof's verificationMethod."""
        key = self.ed25519_keys.get(verification_method)
        if key is None:
            raise ProtocolError(f"actor {self.id} publishes no Ed25519 key {verification_method}",
                                "verificationMethod")
        return key


def parse_actor(doc: Any, min_rsa_bits: int = 2048) -> RemoteActor:
    """Strictly read a remote actor document. Keys must belong to the actor (``owner``/``controller`` equal
    to its id, key ids on its document); Multikeys that are not Ed25519 (Fedify also lists its RSA key as a
    Multikey) are skipped."""
    obj = require_object(doc, "actor")
    actor_id = _url(obj.get("id"), "id")
    inbox = _url(obj.get("inbox"), "inbox")
    if origin_of(inbox) != origin_of(actor_id):
        raise ProtocolError("inbox must be on the actor's origin", "inbox")
    shared = None
    endpoints = obj.get("endpoints")
    if isinstance(endpoints, dict) and endpoints.get("sharedInbox") is not None:
        shared = _url(endpoints.get("sharedInbox"), "endpoints.sharedInbox")
        if origin_of(shared) != origin_of(actor_id):
            shared = None  # never deliver to another origin on an actor's word
    username = obj.get("preferredUsername")
    username = username if isinstance(username, str) and len(username) <= 256 else None

    rsa_keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in _as_list(obj.get("publicKey")):
        if not isinstance(entry, dict):
            continue
        key_id = _url(entry.get("id"), "publicKey.id")
        owner = entry.get("owner", actor_id)
        if owner != actor_id or not _same_document(key_id, actor_id):
            raise ProtocolError("key is not owned by this actor", "publicKey.owner")
        pem = entry.get("publicKeyPem")
        if not isinstance(pem, str) or len(pem) > 16384:
            raise ProtocolError("must be a PEM string", "publicKey.publicKeyPem")
        key = keys.public_key_from_pem(pem, min_rsa_bits=min_rsa_bits)
        if isinstance(key, rsa.RSAPublicKey):
            rsa_keys[key_id] = key

    ed_keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for entry in _as_list(obj.get("assertionMethod")):
        if not isinstance(entry, dict) or entry.get("type") != "Multikey":
            continue
        key_id = entry.get("id")
        value = entry.get("publicKeyMultibase")
        if not isinstance(key_id, str) or not isinstance(value, str):
            continue
        if entry.get("controller") != actor_id or not _same_document(key_id, actor_id):
            continue  # a key controlled by someone else says nothing for this actor
        try:
            ed_keys[key_id] = keys.ed25519_from_multikey(value)
        except ProtocolError:
            continue  # an RSA (or other) Multikey
    return RemoteActor(actor_id, inbox, shared, username, obj.get("manuallyApprovesFollowers") is True,
                       rsa_keys, ed_keys)


def parse_key_document(doc: Any, key_id: str, min_rsa_bits: int = 2048) -> tuple[str, rsa.RSAPublicKey]:
    """(owner, key) from what a keyId dereferences to: an actor with ``publicKey`` or a standalone key
    document (GoToSocial style ``{id, owner, publicKeyPem}``). The caller must still check that the owner's
    actor document lists this key."""
    obj = require_object(doc, "key")
    if "publicKeyPem" in obj:
        if obj.get("id") != key_id:
            raise ProtocolError("key document id differs from keyId", "id")
        owner = _url(obj.get("owner"), "owner")
        key = keys.public_key_from_pem(_string(obj.get("publicKeyPem"), "publicKeyPem", 16384), min_rsa_bits)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ProtocolError("not an RSA key", "publicKeyPem")
        return owner, key
    actor = parse_actor(obj, min_rsa_bits)
    key = actor.rsa_keys.get(key_id)
    if key is None:
        raise ProtocolError(f"actor document has no key {key_id}", "publicKey")
    return actor.id, key


# -- builders ----------------------------------------------------------------------------------------------

def _activity(kind: str, actor_id: str, obj: Any, activity_id: str | None, to: Sequence[str] | None,
              context: Any = AS_CONTEXT) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@context": context,
        "id": activity_id or new_object_id(actor_id, "activities"),
        "type": kind,
        "actor": actor_id,
        "object": obj,
    }
    if to:
        doc["to"] = list(to)
    parse_activity(doc)  # never emit what we would refuse
    return doc


def _embedded(activity: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in activity.items() if k != "@context"}


def follow(actor_id: str, target_actor_id: str, activity_id: str | None = None) -> dict[str, Any]:
    return _activity("Follow", actor_id, target_actor_id, activity_id, [target_actor_id])


def accept(actor_id: str, follow_activity: Mapping[str, Any], activity_id: str | None = None) -> dict[str, Any]:
    """Accept a Follow; the Follow is embedded, as Mastodon expects."""
    return _activity("Accept", actor_id, _embedded(follow_activity), activity_id, [follow_activity["actor"]])


def reject(actor_id: str, follow_activity: Mapping[str, Any], activity_id: str | None = None) -> dict[str, Any]:
    return _activity("Reject", actor_id, _embedded(follow_activity), activity_id, [follow_activity["actor"]])


def undo(actor_id: str, activity: Mapping[str, Any], activity_id: str | None = None) -> dict[str, Any]:
    """Undo one of our earlier activities (typically a Follow), embedded."""
    to = activity.get("to")
    return _activity("Undo", actor_id, _embedded(activity), activity_id, to if isinstance(to, list) else None)


def create(actor_id: str, signed_verdicts: Sequence[Mapping[str, Any]], to: Sequence[str],
           activity_id: str | None = None) -> dict[str, Any]:
    """New verdicts of ours (1 to 100 signed verdict documents) for the peers in ``to``."""
    return _activity("Create", actor_id, [dict(v) for v in signed_verdicts], activity_id, to, VERDICT_CONTEXT)


def update(actor_id: str, signed_verdict: Mapping[str, Any], to: Sequence[str],
           activity_id: str | None = None) -> dict[str, Any]:
    """A verdict of ours that supersedes an earlier one (its ``supersedes`` names it)."""
    return _activity("Update", actor_id, dict(signed_verdict), activity_id, to, VERDICT_CONTEXT)


def delete(actor_id: str, verdict_id: str, reason: str, to: Sequence[str],
           activity_id: str | None = None) -> dict[str, Any]:
    """Retract a verdict of ours: its id as a Tombstone with the reason (e.g. "false positive on review")."""
    tombstone = {"id": verdict_id, "type": "Tombstone", "formerType": "Verdict", "reason": reason}
    return _activity("Delete", actor_id, tombstone, activity_id, to, VERDICT_CONTEXT)


def announce(actor_id: str, signed_verdicts: Sequence[Mapping[str, Any]], to: Sequence[str],
             activity_id: str | None = None) -> dict[str, Any]:
    """Relay other issuers' signed verdicts (their proofs keep them verifiable)."""
    return _activity("Announce", actor_id, [dict(v) for v in signed_verdicts], activity_id, to, VERDICT_CONTEXT)


# -- parsing -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activity:
    """A structurally valid incoming activity. ``verdicts`` holds the verdict documents of Create, Update
    and Announce, parsed but with proofs NOT yet verified, and ``parsed_verdicts`` what they parsed to (same
    order), so the receiver verifies them without parsing them again; ``inner`` the embedded activity of
    Accept, Reject and Undo; ``object_id`` the id of the object (followed actor, inner activity, deleted
    verdict)."""

    id: str
    type: str
    actor: str
    object_id: str | None
    inner: "Activity | None" = None
    verdicts: tuple[Mapping[str, Any], ...] = ()
    parsed_verdicts: tuple[Verdict, ...] = field(default=(), repr=False, compare=False)
    reason: str | None = None
    to: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def parse_activity(body: bytes | str | Mapping[str, Any]) -> Activity:
    """Strictly parse an inbox body (bytes as received, or an already decoded dict).

    Limits: MAX_ACTIVITY_BYTES, MAX_DEPTH nesting, MAX_VERDICTS per activity; duplicate JSON keys, NaN and
    Infinity are refused (they make signed bytes ambiguous). Raises only ProtocolError."""
    try:
        doc = _decode(body) if isinstance(body, (bytes, bytearray, str)) else body
        _check_depth(doc)
        return _parse(doc, nested=False)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError, UnicodeError) as exc:
        raise ProtocolError(f"malformed activity: {type(exc).__name__}: {exc}") from exc


def _decode(body: bytes | bytearray | str) -> Any:
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(data) > MAX_ACTIVITY_BYTES:
        raise ProtocolError(f"activity larger than {MAX_ACTIVITY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("activity is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise ProtocolError(f"activity nested deeper than {MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"activity is not JSON: {exc.msg} at {exc.pos}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ProtocolError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"{name} is not JSON")


def _check_depth(doc: Any) -> None:
    """Iterative, so a hostile nesting cannot exhaust the Python stack. Only containers are stacked (a
    value's depth is its container's + 1), which keeps this cheap on the inbox's hot path."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if children and depth >= MAX_DEPTH:
            raise ProtocolError(f"activity nested deeper than {MAX_DEPTH}")
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))


def _parse(doc: Any, nested: bool) -> Activity:
    obj = require_object(doc, "activity")
    kind = obj.get("type")
    if kind not in ACTIVITY_TYPES:
        raise ProtocolError(f"unsupported activity type {short_repr(kind)}", "type")
    context = obj.get("@context")
    if context is None and not nested:
        raise ProtocolError("is missing", "@context")
    if context is not None and not isinstance(context, (str, list, dict)):
        raise ProtocolError("must be a string, list or object", "@context")
    activity_id = _url(obj.get("id"), "id")
    actor = _url(_ref(obj.get("actor")), "actor")
    if origin_of(activity_id) != origin_of(actor):
        raise ProtocolError("activity id must be on the actor's origin", "id")
    # recipients are informational (delivery already happened): any strings, e.g. "as:Public" too
    to = tuple(_string(v, "to", MAX_URL_LEN) for v in _as_list(obj.get("to")))
    if len(to) > 1000:
        raise ProtocolError("too many recipients", "to")
    target = obj.get("object")
    if target is None:
        raise ProtocolError("is missing", "object")
    common = dict(id=activity_id, type=kind, actor=actor, to=to, raw=obj)

    if kind == "Follow":
        return Activity(object_id=_url(_ref(target), "object"), **common)
    if kind in ("Accept", "Reject", "Undo"):
        if isinstance(target, str):
            return Activity(object_id=_url(target, "object"), **common)
        inner = _parse(target, nested=True)
        if kind == "Undo" and inner.actor != actor:
            raise ProtocolError("can only undo one's own activity", "object.actor")
        if kind in ("Accept", "Reject"):
            if inner.type != "Follow":
                raise ProtocolError(f"{kind} must carry a Follow", "object.type")
            if inner.object_id != actor:
                raise ProtocolError(f"only the followed actor may {kind.lower()} a Follow", "object.object")
        return Activity(object_id=inner.id, inner=inner, **common)
    if kind == "Delete":
        if isinstance(target, str):
            object_id, reason = _url(target, "object"), None
        else:
            tomb = require_object(target, "object")
            if tomb.get("type") not in ("Tombstone", "Verdict"):
                raise ProtocolError("must be a Tombstone", "object.type")
            object_id = _url(tomb.get("id"), "object.id")
            reason = tomb.get("reason")
            if reason is not None:
                reason = _string(reason, "object.reason", MAX_REASON_LEN)
        if origin_of(object_id) != origin_of(actor):
            raise ProtocolError("may only delete objects of the actor's origin", "object.id")
        return Activity(object_id=object_id, reason=reason, **common)

    # Create, Update, Announce: verdict documents
    docs = target if isinstance(target, list) else [target]
    if not docs:
        raise ProtocolError("carries no verdict", "object")
    if len(docs) > MAX_VERDICTS:
        raise ProtocolError(f"carries more than {MAX_VERDICTS} verdicts", "object")
    if kind == "Update" and len(docs) != 1:
        raise ProtocolError("Update carries exactly one verdict", "object")
    verdicts, parsed = [], []
    for index, item in enumerate(docs):
        where = "object" if not isinstance(target, list) else f"object[{index}]"
        try:
            verdict = Verdict.from_as2(item)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, f"{where}.{exc.field}" if exc.field else where) from exc
        if kind in ("Create", "Update") and verdict.issuer != actor:
            raise ProtocolError("a Create/Update may only carry the actor's own verdicts", f"{where}.attributedTo")
        if kind == "Update" and verdict.supersedes is None:
            raise ProtocolError("an Update must carry a verdict that supersedes another", f"{where}.supersedes")
        verdicts.append(item)
        parsed.append(verdict)
    object_id = verdicts[0]["id"] if len(verdicts) == 1 else None
    return Activity(object_id=object_id, verdicts=tuple(verdicts), parsed_verdicts=tuple(parsed), **common)


# -- small readers -----------------------------------------------------------------------------------------

def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _ref(value: Any) -> Any:
    """An id given either as a string or as an embedded object with ``id``."""
    return value.get("id") if isinstance(value, dict) else value


def _string(value: Any, where: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"must be a string, got {type(value).__name__}", where)
    if len(value) > max_len:
        raise ProtocolError(f"longer than {max_len} characters", where)
    return value


def _url(value: Any, where: str) -> str:
    if value is None:
        raise ProtocolError("is missing", where)
    text = _string(value, where, MAX_URL_LEN)
    if origin_of(text) is None or any(c.isspace() or ord(c) < 32 for c in text):
        raise ProtocolError(f"must be an http(s) URL, got {short_repr(text)}", where)
    return text


def _same_document(key_id: str, actor_id: str) -> bool:
    """A key id must be the actor's own document (``<actor>#frag``) or a path under it (``<actor>/main-key``)."""
    return key_id.startswith(actor_id + "#") or key_id.startswith(actor_id + "/")
