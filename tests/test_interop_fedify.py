"""Interoperability with Fedify 2.3.6 (npm), an ActivityPub implementation we did not write: a real
`verdict-node serve` on loopback, and Fedify (tests/interop/peer.mjs, run by node) as the peer.

Our own tests check our signatures against our own verifier; only an independent peer shows that the rest of
the fediverse reads what we publish. Proven here: Fedify reads our actor (RSA #main-key, Ed25519 Multikey in
assertionMethod, locked), verifies the requests our node signs (draft-cavage as we send them, and RFC 9421; a tampered
body is refused), we verify its
draft-cavage and RFC 9421 signatures, and its verifyProof accepts the eddsa-jcs-2022 proofs of our verdicts
(by our Ed25519 key, whose controller is the verdict's issuer).

`make test` installs tests/interop/node_modules (npm ci, pinned by package-lock.json)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from node.federation.delivery import ACTIVITY_JSON, SignedClient
from protocol import httpsig, keys
from protocol.errors import SignatureError
from tests.multinode import synthetic_verdict
from tests.node_helpers import make_data_dir, run, serve_process, stop_process

INTEROP = Path(__file__).resolve().parent / "interop"
PEER_SCRIPT = INTEROP / "peer.mjs"
NODE_TIMEOUT = 60


def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js >= 20) is needed for the Fedify interop test: install nodejs and npm")
    if not (INTEROP / "node_modules" / "@fedify" / "fedify").is_dir():
        pytest.fail("Fedify is not installed: run `make test`, or `npm ci --prefix tests/interop`")
    return node


def fedify(*args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run one mode of peer.mjs; its single JSON line."""
    proc = subprocess.run([_node_binary(), str(PEER_SCRIPT), *args], input=stdin, capture_output=True, text=True,
                          timeout=NODE_TIMEOUT, cwd=INTEROP)
    assert proc.returncode == 0, f"peer.mjs {args[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def our_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A real `verdict-node serve` (its keys as made by `init`), and its base URL."""
    config = make_data_dir(tmp_path_factory.mktemp("interop-node"), node={"name": "interop"})
    with serve_process(config) as (_, base):
        yield config, base


@pytest.fixture(scope="module")
def fedify_inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Fedify-backed inbox: 202 when verifyRequest accepts the request, 401 otherwise; its URL."""
    stderr_path = tmp_path_factory.mktemp("fedify") / "stderr.txt"
    with open(stderr_path, "w") as stderr:  # a file, not a pipe nobody reads while it serves
        proc = subprocess.Popen([_node_binary(), str(PEER_SCRIPT), "serve"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=INTEROP)
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"peer.mjs serve did not start: {stderr_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{json.loads(line)['port']}/inbox"
    finally:
        proc.stdin.close()
        stop_process(proc, timeout=10)


def test_fedify_reads_our_actor_document(our_node):
    config, _ = our_node
    actor = fedify("actor", config.actor_id)
    assert actor["found"] and actor["type"] == "Application"
    assert actor["id"] == config.actor_id
    assert actor["manuallyApprovesFollowers"] is True
    rsa_key = keys.load_private_key(config.rsa_key_path)
    assert actor["publicKey"]["id"] == f"{config.actor_id}#main-key"
    assert actor["publicKey"]["owner"] == config.actor_id
    assert actor["publicKey"]["algorithm"] == "RSASSA-PKCS1-v1_5"
    assert keys.key_fingerprint(keys.public_key_from_pem(actor["publicKey"]["pem"])) == keys.key_fingerprint(rsa_key)
    ed25519_key = keys.load_private_key(config.ed25519_key_path)
    assert actor["assertionMethods"] == [{
        "id": f"{config.actor_id}#ed25519-key", "controller": config.actor_id, "algorithm": "Ed25519",
        "multibase": keys.ed25519_multikey(ed25519_key)}]


def test_fedify_verifies_requests_signed_by_our_node(our_node, fedify_inbox):
    config, _ = our_node
    rsa_key = keys.load_private_key(config.rsa_key_path)
    body = json.dumps({"@context": "https://www.w3.org/ns/activitystreams", "type": "Follow",
                       "id": f"{config.actor_id}#follow-1", "actor": config.actor_id,
                       "object": "http://127.0.0.1/actors/fedify"}).encode()

    async def main() -> None:
        client = SignedClient(config.actor_id, rsa_key)
        try:
            posted = await client.post_activity(fedify_inbox, body)
            assert posted.status == 202, posted.body
            assert posted.json()["keyId"] == f"{config.actor_id}#main-key"
            assert posted.json()["owner"] == config.actor_id
            fetched = await client.get_json(fedify_inbox)
            assert fetched["verified"] is True
        finally:
            await client.close()
        # The same signature over a body it does not cover, and our keyId over another key's signature.
        signed = httpsig.sign_request("POST", fedify_inbox, {"Content-Type": ACTIVITY_JSON}, body,
                                      f"{config.actor_id}#main-key", rsa_key)
        forged = httpsig.sign_request("POST", fedify_inbox, {"Content-Type": ACTIVITY_JSON}, body,
                                      f"{config.actor_id}#main-key", keys.generate_rsa())
        async with aiohttp.ClientSession() as session:
            for headers, data in ((signed, body.replace(b"Follow", b"Block!")), (forged, body)):
                async with session.post(fedify_inbox, data=data,
                                        headers={"Content-Type": ACTIVITY_JSON, **headers}) as resp:
                    answer = await resp.json()
                    assert resp.status == 401 and answer["verified"] is False, answer
            async with session.post(fedify_inbox, data=body, headers={"Content-Type": ACTIVITY_JSON, **signed}) as resp:
                assert resp.status == 202, await resp.text()  # the untampered original still passes
            # RFC 9421, which protocol.httpsig also signs (for peers that knock with it first).
            rfc9421 = httpsig.sign_request_rfc9421("POST", fedify_inbox, {"Content-Type": ACTIVITY_JSON}, body,
                                                   f"{config.actor_id}#main-key", rsa_key)
            for data, status in ((body, 202), (body.replace(b"Follow", b"Block!"), 401)):
                async with session.post(fedify_inbox, data=data,
                                        headers={"Content-Type": ACTIVITY_JSON, **rfc9421}) as resp:
                    assert resp.status == status, await resp.text()

    run(main())


@pytest.mark.parametrize("spec", ["draft-cavage-http-signatures-12", "rfc9421"])
def test_we_verify_requests_signed_by_fedify(spec):
    url = "http://127.0.0.1:8080/inbox"
    body = '{"type":"Follow","actor":"http://127.0.0.1:8080/actors/fedify"}'
    signed = fedify("sign", spec, url, body)
    headers = signed["headers"]
    params = httpsig.parse_signature(headers)
    assert params.scheme == ("rfc9421" if spec == "rfc9421" else "cavage")
    assert params.key_id == signed["keyId"]
    public_key = keys.public_key_from_pem(signed["publicKeyPem"])
    httpsig.verify_request("POST", "/inbox", headers, body.encode(), params, public_key, scheme="http")
    with pytest.raises(SignatureError):
        httpsig.verify_request("POST", "/inbox", headers, body.replace("Follow", "Block").encode(), params,
                               public_key, scheme="http")
    with pytest.raises(SignatureError):
        httpsig.verify_request("POST", "/inbox", headers, body.encode(), params, keys.generate_rsa().public_key(),
                               scheme="http")


def test_fedify_verifies_proofs_of_our_verdicts(our_node):
    config, _ = our_node
    _, signed = synthetic_verdict(config.actor_id, keys.load_private_key(config.ed25519_key_path), 7)
    result = fedify("verify-proof", stdin=json.dumps(signed))
    assert result["verified"] is True, result
    assert result["proofs"] == [{"verificationMethod": f"{config.actor_id}#ed25519-key",
                                 "cryptosuite": "eddsa-jcs-2022", "verifiedBy": f"{config.actor_id}#ed25519-key",
                                 "controller": config.actor_id}]  # = attributedTo, as verifyObject requires
    assert signed["attributedTo"] == config.actor_id
    tampered = {**signed, "scores": {**signed["scores"], "csam": 0.99}}
    refused = fedify("verify-proof", stdin=json.dumps(tampered))
    assert refused["verified"] is False and refused["proofs"][0]["verifiedBy"] is None, refused
