"""HTTP Signatures as the fediverse speaks them: draft-cavage-12 (sign and verify) and RFC 9421 (verify,
and sign for tests and for peers that knock with it first).

We sign the way Mastodon does (``rsa-sha256`` over ``(request-target) host date digest``,
``keyId=<actor>#main-key``, ``Digest: SHA-256=...``), because every fediverse server verifies that. We verify
with Mastodon's acceptance rules (a Date within about an hour, a matching Digest, the signed headers
present), so a request our node accepts would also be accepted by Mastodon, and we take the covered headers
from the signature itself, because Fedify and Lemmy sign more headers than Mastodon.

The module is pure: ``parse_signature`` reads the headers, the caller fetches the key for
``params.key_id`` (network, cache, pin), then ``verify_request`` checks everything. ``now`` is injectable.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from protocol.errors import SignatureError, SignatureMismatch

__all__ = [
    "SignatureError", "SignatureParams", "sign_request", "sign_request_rfc9421", "parse_signature",
    "verify_request", "digest_header", "content_digest_header", "key_owner",
]

# Mastodon: a request is good for about an hour of clock skew; its signatures expire 5 minutes after
# creation unless they say otherwise, plus that hour of margin.
CLOCK_SKEW = 3600
DEFAULT_EXPIRY = 300
MAX_HEADER_LEN = 8192

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SignatureParams:
    """One parsed signature. ``components`` are the covered headers (cavage, lowercased, in order) or
    component identifiers (RFC 9421, e.g. "@method", "content-digest"). ``signature_params`` is the
    serialized RFC 9421 ``@signature-params`` value (None for cavage)."""

    scheme: Literal["cavage", "rfc9421"]
    key_id: str
    algorithm: str | None
    components: tuple[str, ...]
    signature: bytes
    created: int | None = None
    expires: int | None = None
    label: str | None = None
    signature_params: str | None = None


def key_owner(key_id: str) -> str:
    """The actor a key id names by convention (``<actor>#main-key`` -> ``<actor>``)."""
    return key_id.split("#", 1)[0]


# -- digests ----------------------------------------------------------------------------------------------

def digest_header(body: bytes) -> str:
    """``Digest`` value (RFC 3230) as Mastodon sends it."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def content_digest_header(body: bytes) -> str:
    """``Content-Digest`` value (RFC 9530), sha-256."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _check_digest(value: str | None, body: bytes) -> None:
    if value is None:
        raise SignatureError("Digest header is missing", "digest")
    found = None
    for part in value.split(","):
        algo, sep, encoded = part.strip().partition("=")
        if sep and algo.strip().lower() == "sha-256":
            found = encoded.strip()
    if found is None:
        raise SignatureError("only SHA-256 digests are accepted", "digest")
    if not _b64_equals(found, hashlib.sha256(body).digest()):
        raise SignatureError("Digest does not match the body", "digest")


def _check_content_digest(value: str | None, body: bytes) -> None:
    if value is None:
        raise SignatureError("Content-Digest header is missing", "content-digest")
    try:
        members = _parse_sf_dictionary(value)
    except SignatureError as exc:
        raise SignatureError(f"malformed: {exc}", "content-digest") from exc
    item = members.get("sha-256")
    if item is None:
        raise SignatureError("only sha-256 digests are accepted", "content-digest")
    if not isinstance(item[0], bytes) or item[0] != hashlib.sha256(body).digest():
        raise SignatureError("Content-Digest does not match the body", "content-digest")


def _b64_equals(encoded: str, expected: bytes) -> bool:
    try:
        return base64.b64decode(encoded, validate=True) == expected
    except (binascii.Error, ValueError):
        return False


# -- signing ------------------------------------------------------------------------------------------------

def _host_of(url: str) -> tuple[str, str, str]:
    """(scheme, host header value, path?query) of an absolute URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SignatureError(f"not an absolute http(s) URL: {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.scheme, host, target


def _sign_bytes(private_key: PrivateKey, data: bytes) -> bytes:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise SignatureError(f"unsupported signing key {type(private_key).__name__}")


def sign_request(method: str, url: str, headers: Mapping[str, str], body: bytes | None, key_id: str,
                 private_key: PrivateKey, now: float | None = None) -> dict[str, str]:
    """draft-cavage signature the way Mastodon sends it; returns the headers to add (Date, Host, Digest when
    there is a body, Signature). A ``Date`` already in ``headers`` is kept and signed.

    RSA keys sign ``rsa-sha256`` (what every server accepts); Ed25519 keys sign ``hs2019``."""
    _, host, target = _host_of(url)
    existing = _lower_headers(headers)
    added: dict[str, str] = {}
    date = existing.get("date")
    if date is None:
        date = email.utils.formatdate(now if now is not None else time.time(), usegmt=True)
        added["Date"] = date
    added["Host"] = existing.get("host", host)
    lines = [f"(request-target): {method.lower()} {target}", f"host: {added['Host']}", f"date: {date}"]
    covered = ["(request-target)", "host", "date"]
    if body is not None:
        added["Digest"] = digest_header(body)
        lines.append(f"digest: {added['Digest']}")
        covered.append("digest")
    algorithm = "rsa-sha256" if isinstance(private_key, rsa.RSAPrivateKey) else "hs2019"
    signature = base64.b64encode(_sign_bytes(private_key, "\n".join(lines).encode("utf-8"))).decode("ascii")
    added["Signature"] = (f'keyId="{key_id}",algorithm="{algorithm}",headers="{" ".join(covered)}",'
                          f'signature="{signature}"')
    return added


def sign_request_rfc9421(method: str, url: str, headers: Mapping[str, str], body: bytes | None, key_id: str,
                         private_key: PrivateKey, created: int | None = None, label: str = "sig1",
                         ) -> dict[str, str]:
    """RFC 9421 signature covering @method, @target-uri, @authority (and content-digest with a body), the
    set Mastodon and Fedify use. Returns the headers to add (Content-Digest, Signature-Input, Signature)."""
    scheme, host, target = _host_of(url)
    added: dict[str, str] = {}
    components = ["@method", "@target-uri", "@authority"]
    all_headers = dict(_lower_headers(headers))
    all_headers.setdefault("host", host)
    if body is not None:
        added["Content-Digest"] = content_digest_header(body)
        all_headers["content-digest"] = added["Content-Digest"]
        components.append("content-digest")
    alg = "rsa-v1_5-sha256" if isinstance(private_key, rsa.RSAPrivateKey) else "ed25519"
    created = int(time.time()) if created is None else created
    params = [("created", created), ("keyid", key_id), ("alg", alg)]
    serialized = _serialize_signature_params(components, params)
    base = _rfc9421_base(method, scheme, target, all_headers, components, serialized)
    signature = _sign_bytes(private_key, base)
    added["Signature-Input"] = f"{label}={serialized}"
    added["Signature"] = f"{label}=:{base64.b64encode(signature).decode('ascii')}:"
    return added


# -- parsing ------------------------------------------------------------------------------------------------

def _lower_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Case-insensitive view; repeated fields (multidicts) are joined with ", " as HTTP defines."""
    items = headers.items() if hasattr(headers, "items") else headers
    merged: dict[str, str] = {}
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise SignatureError("header names and values must be strings")
        key = name.lower()
        value = value.strip()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


_CAVAGE_PARAM = re.compile(r'\s*([A-Za-z]+)\s*=\s*(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|([0-9]+))\s*(?:,|\Z)')


def _parse_cavage(value: str) -> SignatureParams:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(value):
        match = _CAVAGE_PARAM.match(value, pos)
        if not match or match.end() == pos:
            raise SignatureError(f"malformed Signature header near {value[pos:pos + 20]!r}", "signature")
        name = match.group(1)
        if name in fields:
            raise SignatureError(f"parameter {name} given twice", "signature")
        raw = match.group(2)
        if raw is not None and "\\" in raw:
            raw = re.sub(r"\\(.)", r"\1", raw)
        fields[name] = raw if raw is not None else match.group(3)
        pos = match.end()
    key_id = fields.get("keyId")
    if not key_id:
        raise SignatureError("keyId is missing", "signature")
    encoded = fields.get("signature")
    if not encoded:
        raise SignatureError("signature is missing", "signature")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not base64", "signature") from None
    headers = tuple(h for h in fields.get("headers", "date").lower().split(" ") if h)
    if not headers:
        raise SignatureError("headers parameter is empty", "signature")

    def _int(name: str) -> int | None:
        raw = fields.get(name)
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 12:
            raise SignatureError(f"{name} must be a Unix time", "signature")
        return int(raw)

    algorithm = fields.get("algorithm")
    return SignatureParams("cavage", key_id, algorithm.lower() if algorithm else None, headers, signature,
                           created=_int("created"), expires=_int("expires"))


def parse_signature(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> SignatureParams:
    """Read the request's signature without verifying it, so the caller can resolve ``key_id``.

    RFC 9421 is chosen when ``Signature-Input`` is present (as Mastodon does); otherwise draft-cavage from
    ``Signature`` or ``Authorization: Signature ...``. Raises SignatureError if there is none or it is
    malformed."""
    lowered = _lower_headers(headers)
    for name in ("signature", "signature-input", "authorization"):
        if len(lowered.get(name, "")) > MAX_HEADER_LEN:
            raise SignatureError(f"{name} header is too long", name)
    if "signature-input" in lowered:
        return _parse_rfc9421(lowered.get("signature-input", ""), lowered.get("signature"))
    if "signature" in lowered:
        return _parse_cavage(lowered["signature"])
    auth = lowered.get("authorization", "")
    if auth[:10].lower() == "signature ":
        return _parse_cavage(auth[10:])
    raise SignatureError("request is not signed", "signature")


# -- RFC 8941 structured fields (the subset signatures use) -------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER = re.compile(r"-?[0-9]{1,15}")


class _Token(str):
    """An sf-token (distinct from an sf-string only for re-serialization)."""


def _parse_sf_dictionary(text: str) -> dict[str, tuple[Any, list[tuple[str, Any]]]]:
    """Parse an RFC 8941 dictionary: member -> (value, params); value is an item or a list (inner list)."""
    parser = _SF(text)
    result: dict[str, tuple[Any, list[tuple[str, Any]]]] = {}
    parser.skip_sp()
    while not parser.done():
        key = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            if parser.peek() == "(":
                value = parser.inner_list()
            else:
                value = parser.bare_item()
        else:
            value = True
        result[key] = (value, parser.params())
        parser.skip_ows()
        if parser.done():
            break
        parser.expect(",")
        parser.skip_ows()
        if parser.done():
            raise SignatureError("trailing comma in structured field")
    return result


class _SF:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise SignatureError(f"expected {char!r} at {self.pos} in structured field")
        self.pos += 1

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.pos += 1

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if not match:
            raise SignatureError(f"expected a key at {self.pos} in structured field")
        self.pos = match.end()
        return match.group(0)

    def bare_item(self) -> Any:
        char = self.peek()
        if char == '"':
            self.pos += 1
            out = []
            while True:
                if self.done():
                    raise SignatureError("unterminated string in structured field")
                char = self.text[self.pos]
                self.pos += 1
                if char == "\\":
                    nxt = self.peek()
                    if nxt not in ('"', "\\"):
                        raise SignatureError("bad escape in structured field string")
                    out.append(nxt)
                    self.pos += 1
                elif char == '"':
                    return "".join(out)
                elif not " " <= char <= "~":
                    raise SignatureError("non-ASCII character in structured field string")
                else:
                    out.append(char)
        if char == ":":
            end = self.text.find(":", self.pos + 1)
            if end < 0:
                raise SignatureError("unterminated byte sequence in structured field")
            raw = self.text[self.pos + 1:end]
            self.pos = end + 1
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise SignatureError("byte sequence is not base64") from None
        if char == "?":
            flag = self.text[self.pos + 1:self.pos + 2]
            if flag not in ("0", "1"):
                raise SignatureError("bad boolean in structured field")
            self.pos += 2
            return flag == "1"
        if char == "-" or char.isdigit():
            match = _INTEGER.match(self.text, self.pos)
            if not match or self.text[match.end():match.end() + 1] == ".":
                raise SignatureError("only integers are supported in signature parameters")
            self.pos = match.end()
            return int(match.group(0))
        match = _TOKEN.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            return _Token(match.group(0))
        raise SignatureError(f"unexpected {char!r} in structured field")

    def params(self) -> list[tuple[str, Any]]:
        params: list[tuple[str, Any]] = []
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            name = self.key()
            value: Any = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            if any(existing == name for existing, _ in params):
                raise SignatureError(f"parameter {name} given twice")
            params.append((name, value))
        return params

    def inner_list(self) -> list[tuple[Any, list[tuple[str, Any]]]]:
        self.expect("(")
        items: list[tuple[Any, list[tuple[str, Any]]]] = []
        while True:
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return items
            if self.done():
                raise SignatureError("unterminated inner list")
            item = self.bare_item()
            items.append((item, self.params()))
            if self.peek() not in (" ", ")"):
                raise SignatureError("inner list items must be separated by spaces")


def _serialize_bare(value: Any) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, _Token):
        return str(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise SignatureError(f"cannot serialize {type(value).__name__}")


def _serialize_params(params: list[tuple[str, Any]]) -> str:
    return "".join(f";{name}" if value is True else f";{name}={_serialize_bare(value)}" for name, value in params)


def _serialize_signature_params(components: list[str], params: list[tuple[str, Any]]) -> str:
    return "(" + " ".join(_serialize_bare(c) for c in components) + ")" + _serialize_params(params)


def _parse_rfc9421(signature_input: str, signature: str | None) -> SignatureParams:
    if signature is None:
        raise SignatureError("Signature-Input without Signature", "signature")
    inputs = _parse_sf_dictionary(signature_input)
    values = _parse_sf_dictionary(signature)
    label = next((name for name in inputs if name in values), None)
    if label is None:
        raise SignatureError("no signature label appears in both Signature-Input and Signature", "signature")
    covered, params = inputs[label]
    if not isinstance(covered, list):
        raise SignatureError("signature input must be an inner list", "signature-input")
    components = []
    for item, item_params in covered:
        if not isinstance(item, str) or isinstance(item, _Token):
            raise SignatureError("component identifiers must be strings", "signature-input")
        if item_params:
            raise SignatureError(f"component parameters are not supported ({item})", "signature-input")
        if item != item.lower() or item in components:
            raise SignatureError(f"invalid or repeated component {item!r}", "signature-input")
        components.append(item)
    raw_signature = values[label][0]
    if not isinstance(raw_signature, bytes):
        raise SignatureError("Signature must be a byte sequence", "signature")
    named = dict(params)
    key_id = named.get("keyid")
    if not isinstance(key_id, str) or not key_id:
        raise SignatureError("keyid is missing", "signature-input")
    alg = named.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise SignatureError("alg must be a string", "signature-input")
    for name in ("created", "expires"):
        if name in named and (isinstance(named[name], bool) or not isinstance(named[name], int)):
            raise SignatureError(f"{name} must be an integer", "signature-input")
    return SignatureParams(
        "rfc9421", key_id, alg, tuple(components), raw_signature, created=named.get("created"),
        expires=named.get("expires"), label=label,
        signature_params=_serialize_signature_params(components, params),
    )


# -- verification -------------------------------------------------------------------------------------------

def _verify_bytes(public_key: PublicKey, algorithm: str | None, signature: bytes, data: bytes) -> None:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            raise SignatureError(f"unsupported key type {type(public_key).__name__}", "signature")
    except InvalidSignature:
        raise SignatureMismatch("signature does not verify", "signature") from None


def _check_algorithm(scheme: str, algorithm: str | None, public_key: PublicKey) -> None:
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    is_ed = isinstance(public_key, ed25519.Ed25519PublicKey)
    if not (is_rsa or is_ed):
        raise SignatureError(f"unsupported key type {type(public_key).__name__}", "signature")
    if scheme == "cavage":
        allowed = {None: True, "hs2019": True, "rsa-sha256": is_rsa, "ed25519": is_ed}
    else:
        allowed = {None: True, "rsa-v1_5-sha256": is_rsa, "ed25519": is_ed}
    if algorithm not in allowed:
        raise SignatureError(f"unsupported algorithm {algorithm!r}", "signature")
    if not allowed[algorithm]:
        raise SignatureError(f"algorithm {algorithm!r} does not match the key type", "signature")


def _check_time(params: SignatureParams, date: str | None, now: float, signed_date: bool) -> None:
    if params.created is not None and params.created > now + CLOCK_SKEW:
        raise SignatureError("signature created in the future", "signature")
    if params.expires is not None and now > params.expires + CLOCK_SKEW:
        raise SignatureError("signature expired", "signature")
    if params.created is not None and params.expires is None and now > params.created + DEFAULT_EXPIRY + CLOCK_SKEW:
        raise SignatureError("signature expired", "signature")
    if signed_date:
        try:
            moment = email.utils.parsedate_to_datetime(date or "").timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            raise SignatureError("Date header is not an HTTP date", "date") from None
        if moment > now + CLOCK_SKEW:
            raise SignatureError("Date is too far in the future", "date")
        if now > moment + DEFAULT_EXPIRY + CLOCK_SKEW:
            raise SignatureError("Date is too old", "date")


def _cavage_string(params: SignatureParams, method: str, target: str, lowered: Mapping[str, str]) -> bytes:
    lines = []
    for name in params.components:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        elif name in ("(created)", "(expires)"):
            value = params.created if name == "(created)" else params.expires
            if value is None:
                raise SignatureError(f"{name} is signed but the parameter is missing", "signature")
            lines.append(f"{name}: {value}")
        else:
            if name not in lowered:
                raise SignatureError(f"signed header {name!r} is missing", "signature")
            lines.append(f"{name}: {lowered[name]}")
    return "\n".join(lines).encode("utf-8")


def _verify_cavage(method: str, target: str, lowered: dict[str, str], body: bytes | None,
                   params: SignatureParams, public_key: PublicKey, now: float, strict: bool) -> None:
    covered = set(params.components)
    _check_algorithm("cavage", params.algorithm, public_key)
    if strict:
        if not covered & {"date", "(created)"}:
            raise SignatureError("signature must cover date or (created)", "signature")
        if not covered & {"digest", "(request-target)"}:
            raise SignatureError("signature must cover digest or (request-target)", "signature")
        if method.upper() in ("GET", "HEAD") and "host" not in covered:
            raise SignatureError("a GET signature must cover host", "signature")
        if method.upper() == "POST" and "digest" not in covered:
            raise SignatureError("a POST signature must cover digest", "signature")
    if "digest" in covered or (strict and body):
        _check_digest(lowered.get("digest"), body or b"")
    _check_time(params, lowered.get("date"), now, signed_date="date" in covered)
    data = _cavage_string(params, method, target, lowered)
    try:
        _verify_bytes(public_key, params.algorithm, params.signature, data)
    except SignatureError:
        # Mastodon's compatibility shim: some signers put the path without the query in (request-target).
        if "?" not in target or "(request-target)" not in covered:
            raise
        _verify_bytes(public_key, params.algorithm, params.signature,
                      _cavage_string(params, method, target.split("?", 1)[0], lowered))


def _rfc9421_base(method: str, scheme: str, target: str, lowered: Mapping[str, str], components: Iterable[str],
                  signature_params: str) -> bytes:
    path, _, query = target.partition("?")
    authority = lowered.get("host", "").lower()
    lines = []
    for name in components:
        if name == "@method":
            value = method.upper()
        elif name == "@target-uri":
            value = f"{scheme}://{authority}{target}"
        elif name == "@authority":
            value = authority
        elif name == "@scheme":
            value = scheme
        elif name == "@path":
            value = path or "/"
        elif name == "@query":
            value = "?" + query
        elif name == "@request-target":
            value = target
        elif name.startswith("@"):
            raise SignatureError(f"unsupported derived component {name!r}", "signature-input")
        else:
            if name not in lowered:
                raise SignatureError(f"covered header {name!r} is missing", "signature-input")
            value = lowered[name]
        if "\n" in value or "\r" in value:
            raise SignatureError(f"component {name!r} contains a line break", "signature-input")
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("utf-8")


def _verify_rfc9421(method: str, target: str, lowered: dict[str, str], body: bytes | None,
                    params: SignatureParams, public_key: PublicKey, now: float, strict: bool,
                    scheme: str) -> None:
    covered = set(params.components)
    _check_algorithm("rfc9421", params.algorithm, public_key)
    if params.created is None and strict:
        raise SignatureError("created is required", "signature-input")
    if strict:
        if "@method" not in covered:
            raise SignatureError("signature must cover @method", "signature-input")
        has_query = "?" in target and target.split("?", 1)[1] != ""
        whole_target = "@target-uri" in covered or "@request-target" in covered or (
            "@path" in covered and (not has_query or "@query" in covered))
        if not whole_target:
            raise SignatureError("signature must cover @target-uri (or @path and @query)", "signature-input")
        if method.upper() in ("GET", "HEAD") and not covered & {"@target-uri", "@authority", "host"}:
            raise SignatureError("a GET signature must cover the authority", "signature-input")
        if method.upper() == "POST" and "content-digest" not in covered:
            raise SignatureError("a POST signature must cover content-digest", "signature-input")
    if "content-digest" in covered or (strict and body):
        _check_content_digest(lowered.get("content-digest"), body or b"")
    _check_time(params, lowered.get("date"), now, signed_date=False)
    data = _rfc9421_base(method, scheme, target, lowered, params.components, params.signature_params or "")
    _verify_bytes(public_key, params.algorithm, params.signature, data)


def verify_request(method: str, path_and_query: str, headers: Mapping[str, str] | Iterable[tuple[str, str]],
                   body: bytes | None, params: SignatureParams, public_key: PublicKey, now: float | None = None,
                   *, strict: bool = True, scheme: str = "https") -> None:
    """Verify a parsed signature against the request with the key the caller resolved for
    ``params.key_id``. Returns None or raises SignatureError saying why.

    ``strict`` applies Mastodon's acceptance rules (what must be covered, digests that must match the body);
    ``strict=False`` only checks the signature itself and its time window (for published test vectors that
    cover less). ``scheme`` rebuilds RFC 9421 ``@target-uri`` (the node usually sits behind a TLS proxy)."""
    if not isinstance(public_key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise SignatureError("unsupported public key type", "signature")
    if not path_and_query.startswith("/"):
        raise SignatureError("path must start with '/'")
    lowered = _lower_headers(headers)
    now = time.time() if now is None else now
    if params.scheme == "cavage":
        _verify_cavage(method, path_and_query, lowered, body, params, public_key, now, strict)
    elif params.scheme == "rfc9421":
        _verify_rfc9421(method, path_and_query, lowered, body, params, public_key, now, strict, scheme)
    else:
        raise SignatureError(f"unknown signature scheme {params.scheme!r}")
