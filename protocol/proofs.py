"""FEP-8b32 object integrity proofs with the eddsa-jcs-2022 cryptosuite (W3C Data Integrity EdDSA).

A verdict carries its issuer's Ed25519 signature inside the object itself, so it stays verifiable when a
peer relays, caches or audits it; HTTP signatures only authenticate one hop.

    hash_data  = SHA256(JCS(proof options, i.e. the proof without proofValue))
                 || SHA256(JCS(document without proof))
    proofValue = "z" + base58btc(Ed25519.sign(hash_data))

Interop choices (checked against Fedify in tests/test_interop_fedify.py): ``created`` is written YYYY-MM-DDTHH:MM:SSZ because Fedify
rebuilds it before hashing and rejects "+00:00"; the proof repeats the document's ``@context`` because
Fedify rebuilds the proof options with it and the W3C vectors do the same; on verification ``signature``
(an RsaSignature2017 that Fedify adds after the proof) is removed along with ``proof``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from protocol.canonical import canonicalize
from protocol.errors import ProofError, ProtocolError
from protocol.keys import base58btc_decode, multibase_encode

__all__ = ["ProofError", "sign", "verify", "format_created", "PROOF_TYPE", "CRYPTOSUITE"]

PROOF_TYPE = "DataIntegrityProof"
CRYPTOSUITE = "eddsa-jcs-2022"
PROOF_PURPOSE = "assertionMethod"
# Fields stripped before hashing the document: the proof itself, and a Linked Data signature added after it.
_UNSIGNED_FIELDS = ("proof", "signature")
_XSD_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")


def format_created(moment: _dt.datetime | None = None) -> str:
    """UTC time as YYYY-MM-DDTHH:MM:SSZ (second precision, 'Z'): the one spelling every peer parses back
    to the same string."""
    moment = moment or _dt.datetime.now(_dt.timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash_data(unsecured: dict[str, Any], proof_options: dict[str, Any]) -> bytes:
    return (hashlib.sha256(canonicalize(proof_options)).digest()
            + hashlib.sha256(canonicalize(unsecured)).digest())


def sign(document: dict[str, Any], private_key: ed25519.Ed25519PrivateKey, verification_method: str,
         created: str | None = None) -> dict[str, Any]:
    """Return a shallow copy of ``document`` with an eddsa-jcs-2022 ``proof`` (any previous ``proof`` or
    ``signature`` is dropped: they would not be covered)."""
    if not isinstance(document, dict):
        raise ProofError("document must be a JSON object")
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise ProofError("eddsa-jcs-2022 needs an Ed25519 private key")
    if not isinstance(verification_method, str) or not verification_method:
        raise ProofError("verification method must be a non-empty string", "verificationMethod")
    created = created if created is not None else format_created()
    if not _XSD_DATETIME.match(created):
        raise ProofError(f"not an XSD dateTime: {created!r}", "created")
    unsecured = {k: v for k, v in document.items() if k not in _UNSIGNED_FIELDS}
    options: dict[str, Any] = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "verificationMethod": verification_method,
        "proofPurpose": PROOF_PURPOSE,
        "created": created,
    }
    if "@context" in unsecured:
        options["@context"] = unsecured["@context"]
    signature = private_key.sign(_hash_data(unsecured, options))
    signed = dict(unsecured)
    signed["proof"] = {**options, "proofValue": multibase_encode(signature)}
    return signed


def _context_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _checked_proof(document: dict[str, Any]) -> dict[str, Any]:
    proof = document.get("proof")
    if proof is None:
        raise ProofError("document has no proof", "proof")
    if isinstance(proof, list):
        # A proof set: we issue single proofs; accept a set of exactly one so relays that normalise to
        # arrays still verify, and refuse larger sets rather than guessing which one counts.
        if len(proof) != 1:
            raise ProofError(f"proof sets of {len(proof)} proofs are not supported", "proof")
        proof = proof[0]
    if not isinstance(proof, dict):
        raise ProofError("proof must be an object", "proof")
    if proof.get("type") != PROOF_TYPE:
        raise ProofError(f"type must be {PROOF_TYPE!r}, got {proof.get('type')!r}", "proof.type")
    if proof.get("cryptosuite") != CRYPTOSUITE:
        raise ProofError(f"cryptosuite must be {CRYPTOSUITE!r}, got {proof.get('cryptosuite')!r}",
                         "proof.cryptosuite")
    if proof.get("proofPurpose") != PROOF_PURPOSE:
        raise ProofError(f"proofPurpose must be {PROOF_PURPOSE!r}", "proof.proofPurpose")
    method = proof.get("verificationMethod")
    if not isinstance(method, str) or not method:
        raise ProofError("verificationMethod must be a non-empty string", "proof.verificationMethod")
    created = proof.get("created")
    if created is not None and (not isinstance(created, str) or not _XSD_DATETIME.match(created)):
        raise ProofError(f"not an XSD dateTime: {created!r}", "proof.created")
    value = proof.get("proofValue")
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 200:
        raise ProofError("proofValue must be a base58btc multibase string", "proof.proofValue")
    if "@context" in proof:
        # The proof's context must be a prefix of the document's, so that signing with it changed no term.
        proof_ctx = _context_list(proof["@context"])
        doc_ctx = _context_list(document.get("@context"))
        if doc_ctx[: len(proof_ctx)] != proof_ctx:
            raise ProofError("proof @context does not match the document's @context", "proof.@context")
    return proof


def verify(document: dict[str, Any], resolve_key: Callable[[str], ed25519.Ed25519PublicKey]) -> None:
    """Verify the eddsa-jcs-2022 proof of ``document``; return None or raise ProofError saying why.

    ``resolve_key(verificationMethod)`` maps the proof's key id to the Ed25519 public key the caller trusts
    for it (a pinned key, or one fetched from the controller's actor document). Errors it raises as
    ProtocolError pass through unchanged."""
    if not isinstance(document, dict):
        raise ProofError("document must be a JSON object")
    proof = _checked_proof(document)
    try:
        signature = base58btc_decode(proof["proofValue"][1:])
    except ProtocolError as exc:
        raise ProofError(str(exc), "proof.proofValue") from exc
    if len(signature) != 64:
        raise ProofError(f"Ed25519 signature must be 64 bytes, got {len(signature)}", "proof.proofValue")
    public_key = resolve_key(proof["verificationMethod"])
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise ProofError("verification method does not resolve to an Ed25519 key", "proof.verificationMethod")
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    unsecured = {k: v for k, v in document.items() if k not in _UNSIGNED_FIELDS}
    try:
        hash_data = _hash_data(unsecured, options)
    except ProtocolError as exc:
        raise ProofError(f"document cannot be canonicalized: {exc}") from exc
    try:
        public_key.verify(signature, hash_data)
    except InvalidSignature:
        raise ProofError("signature does not match the document and proof options", "proof.proofValue") from None
