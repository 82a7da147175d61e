"""Actor documents, activity builders and the strict inbox parser."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import activities as A
from protocol import keys
from protocol.errors import ProtocolError
from protocol.verdict import (
    Fingerprint, ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp, verify_verdict,
)

ME = "https://a.example/actor"
PEER = "https://b.example/actor"
RSA = keys.generate_rsa()
ED = keys.generate_ed25519()


def _verdict(issuer=ME, **changes):
    fields = dict(id=new_verdict_id(issuer), issuer=issuer,
                  fingerprint=Fingerprint("ab" * 32, "cd" * 32, "0123456789abcdef", "pil-rgb-v1"),
                  scores={"csam": 0.02, "nsfw": 0.9}, label="nsfw", model=ModelInfo("ViT-L-14", "openai", "r1"),
                  published=utc_timestamp())
    fields.update(changes)
    return Verdict(**fields)


def _signed(issuer=ME, key=ED, **changes):
    return sign_verdict(_verdict(issuer, **changes), key, A.ed25519_key_id(issuer))


# -- actor -------------------------------------------------------------------------------------------------

def test_actor_document_has_what_fedify_and_mastodon_need():
    doc = A.actor_document(ME, RSA, ED)
    assert doc["type"] == "Application" and doc["manuallyApprovesFollowers"] is True
    for ctx in ("https://www.w3.org/ns/activitystreams", "https://w3id.org/security/v1",
                "https://w3id.org/security/multikey/v1", "https://www.w3.org/ns/did/v1"):
        assert ctx in doc["@context"]
    assert {"manuallyApprovesFollowers": "as:manuallyApprovesFollowers"} in doc["@context"]
    assert doc["publicKey"] == {"id": ME + "#main-key", "owner": ME, "publicKeyPem": keys.rsa_public_pem(RSA)}
    assert doc["assertionMethod"] == [{"id": ME + "#ed25519-key", "type": "Multikey", "controller": ME,
                                       "publicKeyMultibase": keys.ed25519_multikey(ED)}]
    assert doc["endpoints"]["sharedInbox"] == doc["inbox"] == "https://a.example/inbox"
    assert {"preferredUsername", "outbox", "followers"} <= doc.keys()


def test_parse_actor_round_trip_and_key_lookup():
    actor = A.parse_actor(json.loads(json.dumps(A.actor_document(ME, RSA, ED))))
    assert actor.id == ME and actor.inbox == "https://a.example/inbox" and actor.manually_approves_followers
    assert keys.key_fingerprint(actor.http_key(ME + "#main-key")) == keys.key_fingerprint(RSA)
    assert keys.key_fingerprint(actor.proof_key(ME + "#ed25519-key")) == keys.key_fingerprint(ED)
    with pytest.raises(ProtocolError):
        actor.proof_key(ME + "#main-key")
    with pytest.raises(ProtocolError):
        actor.http_key(ME + "#other")


def test_parse_fedify_style_actor_skips_rsa_multikey_and_foreign_keys():
    doc = A.actor_document(ME, RSA, ED)
    other_ed = keys.generate_ed25519()
    doc["assertionMethod"] = [
        # Fedify lists its RSA key as a Multikey first (multicodec rsa-pub 0x1205)
        {"id": ME + "#multikey-1", "type": "Multikey", "controller": ME,
         "publicKeyMultibase": "z" + keys.base58btc_encode(b"\x85\x24" + b"\x30" * 270)},
        {"id": ME + "#multikey-2", "type": "Multikey", "controller": ME,
         "publicKeyMultibase": keys.ed25519_multikey(ED)},
        {"id": "https://evil.example/actor#k", "type": "Multikey", "controller": "https://evil.example/actor",
         "publicKeyMultibase": keys.ed25519_multikey(other_ed)},
        {"id": ME + "#k3", "type": "Multikey", "controller": "https://evil.example/actor",
         "publicKeyMultibase": keys.ed25519_multikey(other_ed)},
        ME + "#a-reference",
    ]
    actor = A.parse_actor(doc)
    assert list(actor.ed25519_keys) == [ME + "#multikey-2"]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("inbox"), "inbox"),
    (lambda d: d.update(inbox="https://evil.example/inbox"), "inbox"),
    (lambda d: d.update(id="not a url"), "id"),
    # User info in an id would become an Authorization header on a URL the sender chose.
    (lambda d: d.update(id="https://user:pw@a.example/actor"), "id"),
    (lambda d: d.update(inbox="https://user@a.example/inbox"), "inbox"),
    (lambda d: d.update(id="https://a.example:99999/actor"), "id"),
    (lambda d: d["publicKey"].update(owner="https://evil.example/actor"), "publicKey.owner"),
    (lambda d: d["publicKey"].update(id="https://evil.example/actor#main-key"), "publicKey.owner"),
    (lambda d: d["publicKey"].update(publicKeyPem="garbage"), "publicKeyPem"),
])
def test_parse_actor_refusals(mutate, field):
    doc = A.actor_document(ME, RSA, ED)
    mutate(doc)
    with pytest.raises(ProtocolError) as info:
        A.parse_actor(doc)
    assert info.value.field == field


def test_parse_key_document_forms():
    assert A.parse_key_document(A.actor_document(ME, RSA, ED), ME + "#main-key")[0] == ME
    standalone = {"id": ME + "/main-key", "owner": ME, "publicKeyPem": keys.rsa_public_pem(RSA)}
    owner, key = A.parse_key_document(standalone, ME + "/main-key")
    assert owner == ME and keys.key_fingerprint(key) == keys.key_fingerprint(RSA)
    with pytest.raises(ProtocolError):
        A.parse_key_document(standalone, ME + "/other-key")


# -- builders + parser round trips -------------------------------------------------------------------------

def test_follow_accept_reject_undo_round_trip():
    follow = A.follow(PEER, ME)
    parsed = A.parse_activity(json.dumps(follow).encode())
    assert (parsed.type, parsed.actor, parsed.object_id) == ("Follow", PEER, ME)
    for build, kind in ((A.accept, "Accept"), (A.reject, "Reject")):
        reply = A.parse_activity(build(ME, follow))
        assert reply.type == kind and reply.inner.type == "Follow" and reply.object_id == follow["id"]
        assert reply.to == (PEER,)
    undo = A.parse_activity(A.undo(PEER, follow))
    assert undo.type == "Undo" and undo.inner.id == follow["id"]
    # only the followed actor may accept; only the follower may undo
    with pytest.raises(ProtocolError, match="followed actor"):
        A.accept("https://c.example/actor", follow)
    with pytest.raises(ProtocolError, match="own activity"):
        A.undo(ME, follow)


def test_create_carries_up_to_100_signed_verdicts_that_verify():
    verdicts = [_signed() for _ in range(100)]
    activity = A.create(ME, verdicts, [PEER])
    body = json.dumps(activity).encode()
    assert len(body) < A.MAX_ACTIVITY_BYTES
    parsed = A.parse_activity(body)
    assert parsed.type == "Create" and len(parsed.verdicts) == 100
    actor = A.parse_actor(A.actor_document(ME, RSA, ED))
    ids = {verify_verdict(doc, actor.proof_key).id for doc in parsed.verdicts}
    assert ids == {v["id"] for v in verdicts}
    with pytest.raises(ProtocolError, match="more than 100"):
        A.create(ME, verdicts + [_signed()], [PEER])
    with pytest.raises(ProtocolError, match="no verdict"):
        A.create(ME, [], [PEER])


def test_create_and_update_only_carry_own_verdicts():
    foreign = _signed(issuer=PEER)
    with pytest.raises(ProtocolError, match="own verdicts") as info:
        A.create(ME, [_signed(), foreign], [PEER])
    assert info.value.field == "object[1].attributedTo"
    relayed = A.parse_activity(A.announce(ME, [foreign], [PEER]))
    assert relayed.type == "Announce" and relayed.verdicts[0]["attributedTo"] == PEER


def test_update_requires_supersedes_and_delete_is_a_tombstone():
    old = _verdict()
    new = _signed(supersedes=old.id, label="safe", scores={"csam": 0.01, "nsfw": 0.1})
    parsed = A.parse_activity(A.update(ME, new, [PEER]))
    assert parsed.type == "Update" and parsed.verdicts[0]["supersedes"] == old.id
    with pytest.raises(ProtocolError, match="supersedes"):
        A.update(ME, _signed(), [PEER])
    deleted = A.parse_activity(A.delete(ME, old.id, "false positive on human review", [PEER]))
    assert (deleted.type, deleted.object_id, deleted.reason) == ("Delete", old.id,
                                                                 "false positive on human review")
    with pytest.raises(ProtocolError, match="actor's origin"):
        A.delete(ME, "https://b.example/verdicts/1", "x", [PEER])


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe", "UTF-8"),
    (b"{not json", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"a": NaN}', "NaN"),
    (b'{"type": "Follow", "type": "Like"}', "duplicate"),
    (b"[" * 100 + b"]" * 100, "nested"),
    (b"[" * 100000 + b"]" * 100000, "nested|larger"),
    (b" " * (A.MAX_ACTIVITY_BYTES + 1), "larger"),
    (json.dumps({"@context": A.AS_CONTEXT, "id": ME + "/1", "type": "Like", "actor": ME,
                 "object": PEER}).encode(), "unsupported activity type"),
    (json.dumps({"@context": A.AS_CONTEXT, "id": "https://evil.example/1", "type": "Follow", "actor": ME,
                 "object": PEER}).encode(), "actor's origin"),
    (json.dumps({"id": ME + "/1", "type": "Follow", "actor": ME, "object": PEER}).encode(), "@context"),
    (json.dumps({"@context": A.AS_CONTEXT, "id": ME + "/1", "type": "Follow", "actor": ME}).encode(),
     "object: is missing"),
])
def test_parser_refusals(body, reason):
    with pytest.raises(ProtocolError, match=reason):
        A.parse_activity(body)


def test_create_with_a_bad_verdict_names_the_field():
    activity = A.create(ME, [_signed(), _signed()], [PEER])
    bad = copy.deepcopy(activity)
    bad["object"][1]["scores"]["csam"] = 7
    with pytest.raises(ProtocolError) as info:
        A.parse_activity(bad)
    assert info.value.field == "object[1].scores.csam"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
activity_keys = st.sampled_from(["@context", "id", "type", "actor", "object", "to"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, activity_keys, st.sampled_from(["follow", "create", "delete", "accept"]))
def test_property_parser_raises_only_protocol_error(value, key, template):
    for candidate in (value, json.dumps(value).encode()):
        try:
            A.parse_activity(candidate)
        except ProtocolError:
            pass
    follow = A.follow(PEER, ME)
    base = {"follow": follow, "create": CREATE_TEMPLATE, "delete": DELETE_TEMPLATE,
            "accept": A.accept(ME, follow)}[template]
    doc = copy.deepcopy(base)
    doc[key] = value
    try:
        A.parse_activity(json.dumps(doc).encode())
    except ProtocolError:
        pass
    if isinstance(doc["object"], (dict, list)) and doc["object"]:  # plant the value one level deeper
        inner = doc["object"] if isinstance(doc["object"], dict) else doc["object"][0]
        if isinstance(inner, dict):
            inner[key] = value
            try:
                A.parse_activity(doc)
            except ProtocolError:
                pass


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_property_parser_on_random_bytes(data):
    try:
        A.parse_activity(data)
    except ProtocolError:
        pass


CREATE_TEMPLATE = A.create(ME, [_signed()], [PEER])
DELETE_TEMPLATE = A.delete(ME, new_verdict_id(ME), "mistake", [PEER])
