"""Fingerprint and Verdict: what one node says about one image.

A verdict carries scores, not only a label: every receiver applies its own thresholds to them.

Wire form: an ActivityStreams object of type ``Verdict`` whose own terms live under
https://verdict-node.org/ns# (inline context, so no peer has to fetch a context document), signed by its
issuer with an eddsa-jcs-2022 proof so it stays verifiable when relayed. Parsing is strict: a verdict that
is not exactly well-formed is refused with a ProtocolError naming the field, never half-read.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ed25519

from protocol import proofs
from protocol.errors import ProofError, ProtocolError, require_object, short_repr

CATEGORIES: tuple[str, ...] = ("csam", "nsfw", "underage")
LABELS: tuple[str, ...] = ("safe", "nsfw", "csam")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Keys of one image. ``sha256`` is of the bytes; ``pixel_sha256`` of the decoded pixels, so it survives
    metadata stripping (pict-rs runs exiftool) but not a changed pixel; ``phash64`` is 16 hex digits and
    ``pdq256`` 64 hex digits. ``preprocessing`` names the pinned decode+hash recipe that produced them:
    perceptual hashes from different recipes are not comparable. ``md5`` (of the bytes, 32 hex digits) is
    optional: it is the key the industry's hash lists carry, and verdicts signed before it existed have none."""

    sha256: str
    pixel_sha256: str
    phash64: str
    preprocessing: str
    pdq256: str | None = None
    md5: str | None = None

    def to_as2(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "Fingerprint",
            "sha256": self.sha256,
            "pixelSha256": self.pixel_sha256,
            "phash64": self.phash64,
            "preprocessing": self.preprocessing,
        }
        if self.pdq256 is not None:
            doc["pdq256"] = self.pdq256
        if self.md5 is not None:
            doc["md5"] = self.md5
        return doc

    @classmethod
    def from_as2(cls, doc: Any, where: str = "fingerprint") -> "Fingerprint":
        """Strict parse of the AS2 form; raises ProtocolError naming the field."""
        obj = require_object(doc, where)
        _expect_type(obj, "Fingerprint", where, required=False)
        pdq, md5 = obj.get("pdq256"), obj.get("md5")
        return cls(
            sha256=_hex(obj, "sha256", 64, where),
            pixel_sha256=_hex(obj, "pixelSha256", 64, where),
            phash64=_hex(obj, "phash64", 16, where),
            preprocessing=_text(obj, "preprocessing", where, max_len=128),
            pdq256=None if pdq is None else _hex(obj, "pdq256", 64, where),
            md5=None if md5 is None else _hex(obj, "md5", 32, where),
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which classifier produced the scores: scores of an unknown model are not compared blindly."""

    name: str
    version: str
    rules: str


@dataclass(frozen=True)
class Verdict:
    id: str
    issuer: str
    fingerprint: Fingerprint
    scores: Mapping[str, float]
    label: str
    model: ModelInfo
    published: str
    supersedes: str | None = None
    proof: Mapping | None = field(default=None, compare=False)

    def to_as2(self) -> dict[str, Any]:
        """The JSON-LD document (with ``proof`` when this verdict was parsed from a signed one).

        Validates first, so a bad verdict is never signed or sent."""
        doc: dict[str, Any] = {
            "@context": VERDICT_CONTEXT,
            "id": self.id,
            "type": "Verdict",
            "attributedTo": self.issuer,
            "fingerprint": self.fingerprint.to_as2(),
            # numpy scalars become plain floats; anything that is not a real number is left for the
            # strict parser below to refuse (float("0.5") or float(True) would hide a caller's bug)
            "scores": {k: float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v
                       for k, v in self.scores.items()},
            "label": self.label,
            "model": {"type": "ClassifierModel", "name": self.model.name, "version": self.model.version,
                      "rules": self.model.rules},
            "published": self.published,
        }
        if self.supersedes is not None:
            doc["supersedes"] = self.supersedes
        # Round-trip through the strict parser: one definition of "valid", used by both directions.
        Verdict.from_as2(doc)
        if self.proof is not None:
            doc["proof"] = dict(self.proof)
        return doc

    @classmethod
    def from_as2(cls, doc: Any) -> "Verdict":
        """Strict parse of a Verdict document; raises only ProtocolError, naming the field and the reason.

        Unknown extra properties are ignored (JSON-LD extensibility), but every known one must be exactly
        well-formed, and the verdict id must be on the issuer's origin so nobody mints ids in another
        node's namespace."""
        obj = require_object(doc, "verdict")
        _expect_type(obj, "Verdict", "", required=True)
        context = obj.get("@context")
        if context is not None and not isinstance(context, (str, list, dict)):
            raise ProtocolError("must be a string, list or object", "@context")
        verdict_id = _url(obj, "id", "")
        issuer = _url(obj, "attributedTo", "")
        if origin_of(verdict_id) != origin_of(issuer):
            raise ProtocolError("verdict id must be on the issuer's origin", "id")
        supersedes = obj.get("supersedes")
        if supersedes is not None:
            supersedes = _url(obj, "supersedes", "")
            if origin_of(supersedes) != origin_of(issuer):
                raise ProtocolError("may only supersede a verdict of the same issuer", "supersedes")
            if supersedes == verdict_id:
                raise ProtocolError("a verdict cannot supersede itself", "supersedes")
        label = obj.get("label")
        if label not in LABELS:
            raise ProtocolError(f"must be one of {', '.join(LABELS)}, got {short_repr(label)}", "label")
        proof = obj.get("proof")
        if proof is not None and not isinstance(proof, (dict, list)):
            raise ProtocolError("must be an object", "proof")
        return cls(
            id=verdict_id,
            issuer=issuer,
            fingerprint=Fingerprint.from_as2(obj.get("fingerprint"), "fingerprint"),
            scores=_scores(obj.get("scores")),
            label=label,
            model=_model(obj.get("model")),
            published=_timestamp(obj, "published", ""),
            supersedes=supersedes,
            proof=proof,
        )


VERDICT_NAMESPACE = "https://verdict-node.org/ns#"
# Inline term definitions: JSON-LD processors read our terms without fetching anything; ``scores`` is an
# @json literal so its numbers survive expansion unchanged.
VERDICT_TERMS: dict[str, Any] = {
    "vn": VERDICT_NAMESPACE,
    "Verdict": "vn:Verdict",
    "Fingerprint": "vn:Fingerprint",
    "ClassifierModel": "vn:ClassifierModel",
    "fingerprint": "vn:fingerprint",
    "sha256": "vn:sha256",
    "pixelSha256": "vn:pixelSha256",
    "phash64": "vn:phash64",
    "pdq256": "vn:pdq256",
    "md5": "vn:md5",
    "preprocessing": "vn:preprocessing",
    "scores": {"@id": "vn:scores", "@type": "@json"},
    "label": "vn:label",
    "model": "vn:model",
    "version": "vn:version",
    "rules": "vn:rules",
    "supersedes": {"@id": "vn:supersedes", "@type": "@id"},
    "reason": "vn:reason",
}
VERDICT_CONTEXT: list[Any] = [
    "https://www.w3.org/ns/activitystreams",
    "https://w3id.org/security/data-integrity/v2",
    VERDICT_TERMS,
]

MAX_URL_LEN = 2048
_HEX_LOWER = re.compile(r"[0-9a-f]+\Z")
_WHITESPACE = re.compile(r"\s")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")


def utc_timestamp() -> str:
    """Now as YYYY-MM-DDTHH:MM:SSZ, the spelling Fedify and Mastodon both parse back identically."""
    return proofs.format_created()


def new_verdict_id(actor_id: str) -> str:
    """A fresh verdict id on the actor's origin: <origin>/verdicts/<uuid7>. UUIDv7 sorts by creation time,
    so ids double as a FIRES-style append-order cursor."""
    return new_object_id(actor_id, "verdicts")


def new_object_id(actor_id: str, collection: str) -> str:
    """<origin of actor_id>/<collection>/<uuid7>: ids on our own origin (peers refuse others), time-ordered."""
    origin = origin_of(actor_id)
    if origin is None:
        raise ProtocolError("actor id must be an http(s) URL", "actor")
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 \
        | rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{origin}/{collection}/{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def sign_verdict(verdict: Verdict, private_key: ed25519.Ed25519PrivateKey, verification_method: str,
                 created: str | None = None) -> dict[str, Any]:
    """The verdict's AS2 document with an eddsa-jcs-2022 proof by ``verification_method``, which must be a
    key of the issuer (``<issuer>#...``): a node signs only its own verdicts."""
    if not verification_method.startswith(verdict.issuer + "#"):
        raise ProtocolError("must be a key of the verdict's issuer (<issuer>#...)", "verificationMethod")
    doc = verdict.to_as2()
    doc.pop("proof", None)
    return proofs.sign(doc, private_key, verification_method, created=created)


def verify_verdict(doc: Any, resolve_key: Callable[[str], ed25519.Ed25519PublicKey]) -> Verdict:
    """Parse ``doc`` strictly, check that its proof's key belongs to the issuer, and verify the proof.

    The ownership check runs before ``resolve_key`` so a forged verdict costs no key fetch. Raises
    ProtocolError (ProofError for proof failures); returns the Verdict with its ``proof``."""
    return verify_parsed_verdict(Verdict.from_as2(doc), doc, resolve_key)


def verify_parsed_verdict(verdict: Verdict, doc: Any,
                          resolve_key: Callable[[str], ed25519.Ed25519PublicKey]) -> Verdict:
    """verify_verdict for a ``verdict`` already parsed strictly from ``doc`` (protocol.activities parses
    every verdict of an inbox activity once; parsing it again here would double that cost per verdict).
    ``doc`` must be the very document ``verdict`` was parsed from: the proof is checked over ``doc``."""
    proof = verdict.proof
    if isinstance(proof, list) and len(proof) == 1:
        proof = proof[0]
    if not isinstance(proof, dict):
        raise ProofError("verdict is not signed (one proof object expected)", "proof")
    method = proof.get("verificationMethod")
    if not isinstance(method, str) or not method.startswith(verdict.issuer + "#"):
        raise ProofError("verificationMethod is not a key of the issuer (attributedTo)",
                         "proof.verificationMethod")
    proofs.verify(doc, resolve_key)
    return verdict


# -- strict field readers -------------------------------------------------------------------------------

def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _expect_type(obj: dict[str, Any], expected: str, where: str, required: bool) -> None:
    value = obj.get("type")
    if value is None and not required:
        return
    if value != expected:
        raise ProtocolError(f"must be {expected!r}, got {short_repr(value)}", _path(where, "type"))


def _present_string(obj: dict[str, Any], name: str, where: str) -> tuple[str, str]:
    """The field's value, which must be present and a string, and its dotted name for errors."""
    value = obj.get(name)
    field_name = _path(where, name)
    if value is None:
        raise ProtocolError("is missing", field_name)
    if not isinstance(value, str):
        raise ProtocolError(f"must be a string, got {type(value).__name__}", field_name)
    return value, field_name


def _text(obj: dict[str, Any], name: str, where: str, max_len: int) -> str:
    value, field_name = _present_string(obj, name, where)
    if not value or len(value) > max_len:
        raise ProtocolError(f"must be 1 to {max_len} characters, got {len(value)}", field_name)
    if not value.isprintable():
        raise ProtocolError("must not contain control characters", field_name)
    return value


def _hex(obj: dict[str, Any], name: str, digits: int, where: str) -> str:
    value, field_name = _present_string(obj, name, where)
    if len(value) != digits or not _HEX_LOWER.match(value):
        raise ProtocolError(f"must be {digits} lowercase hex digits", field_name)
    return value


def origin_of(url: str) -> str | None:
    """The "scheme://host[:port]" of an http(s) URL, or None: peers may only mint ids on their own origin.

    A URL with user info (``https://user:pw@host/...``) has no origin here: an id is never a credential, and
    an HTTP client would turn the user info into an Authorization header on a URL a sender chose."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _url(obj: dict[str, Any], name: str, where: str) -> str:
    value = _text(obj, name, where, MAX_URL_LEN)
    if origin_of(value) is None or _WHITESPACE.search(value):
        raise ProtocolError("must be an http(s) URL", _path(where, name))
    return value


def _timestamp(obj: dict[str, Any], name: str, where: str) -> str:
    value = _text(obj, name, where, 40)
    if not _TIMESTAMP.match(value):
        raise ProtocolError("must be a UTC timestamp YYYY-MM-DDTHH:MM:SSZ", _path(where, name))
    return value


def _scores(value: Any) -> dict[str, float]:
    obj = require_object(value, "scores")
    if not obj:
        raise ProtocolError("must score at least one category", "scores")
    scores: dict[str, float] = {}
    for key, score in obj.items():
        if key not in CATEGORIES:
            raise ProtocolError(f"unknown category {short_repr(key)} (known: {', '.join(CATEGORIES)})", "scores")
        name = f"scores.{key}"
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ProtocolError(f"must be a number, got {type(score).__name__}", name)
        score = float(score)
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ProtocolError(f"must be a finite number in [0, 1], got {score!r}", name)
        scores[key] = score
    return scores


def _model(value: Any) -> ModelInfo:
    obj = require_object(value, "model")
    _expect_type(obj, "ClassifierModel", "model", required=False)
    return ModelInfo(
        name=_text(obj, "name", "model", 256),
        version=_text(obj, "version", "model", 256),
        rules=_text(obj, "rules", "model", 256),
    )
