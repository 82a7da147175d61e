"""Node keys: RSA-2048 for HTTP Signatures (what Mastodon and Lemmy verify) and Ed25519 for object
proofs (FEP-8b32), with the encodings peers publish them in (PEM, FEP-521a Multikey).

Private keys are saved as PKCS#8 PEM with mode 0600, created with that mode so the file is never
readable by others, not even between create and chmod.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from protocol.errors import ProtocolError

PrivateKey = Union[rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ed25519.Ed25519PublicKey]

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B58_PAIRS = {a + b: i * 58 + j for a, i in _B58_INDEX.items() for b, j in _B58_INDEX.items()}
# multicodec varint prefixes (https://github.com/multiformats/multicodec): ed25519-pub 0xed, ed25519-priv 0x1300
_ED25519_PUB_PREFIX = b"\xed\x01"
_ED25519_PRIV_PREFIX = b"\x80\x26"


def generate_rsa() -> rsa.RSAPrivateKey:
    """RSA-2048, e=65537: the size Mastodon and Lemmy generate and expect."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def save_private_key(key: PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM with mode 0600.

    The bytes go to a temporary file in the same directory opened with O_CREAT|O_EXCL and mode 0600, then
    replace ``path`` atomically: a crash never leaves a half-written key and the key is never world-readable,
    whatever the umask."""
    target = Path(path)
    data = private_key_pem(key)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits; make the mode exact anyway
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load a PEM private key (RSA or Ed25519). Raises ProtocolError if it is neither or unreadable."""
    data = Path(path).read_bytes()
    return private_key_from_pem(data)


def private_key_from_pem(data: bytes | str) -> PrivateKey:
    if isinstance(data, str):
        data = data.encode()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ProtocolError(f"unsupported private key type {type(key).__name__}")
    return key


def rsa_public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY"), the form actors publish in ``publicKeyPem``."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_from_pem(pem: str | bytes, min_rsa_bits: int = 2048) -> PublicKey:
    """Parse a peer's ``publicKeyPem`` (SPKI, or PKCS#1 "BEGIN RSA PUBLIC KEY" which some servers emit).

    RSA keys under ``min_rsa_bits`` are refused: they can be factored, so a signature by one proves little.
    (Only test vectors, such as draft-cavage's 1024-bit key, need a lower bound.)"""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProtocolError(f"not a PEM public key: {exc}", "publicKeyPem") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < min_rsa_bits:
            raise ProtocolError(f"RSA key of {key.key_size} bits is too small", "publicKeyPem")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ProtocolError(f"unsupported public key type {type(key).__name__}", "publicKeyPem")


# -- base58btc / multibase --------------------------------------------------------------------------------

def base58btc_encode(data: bytes) -> str:
    """Bitcoin base58: leading zero bytes become '1's, the rest is the big-endian number in base 58."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def base58btc_decode(text: str) -> bytes:
    """Inverse of base58btc_encode. Two characters per step (a 3,364-entry table): signatures are decoded
    on every verdict verification."""
    if len(text) > 4096:
        raise ProtocolError("base58 string too long")
    number = 0
    start = len(text) % 2
    try:
        if start:
            number = _B58_INDEX[text[0]]
        pairs = _B58_PAIRS
        for i in range(start, len(text), 2):
            number = number * 3364 + pairs[text[i:i + 2]]
    except KeyError:
        bad = next((c for c in text if c not in _B58_INDEX), "?")
        raise ProtocolError(f"invalid base58btc character {bad!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def multibase_encode(data: bytes) -> str:
    """Multibase base58btc: 'z' + base58btc."""
    return "z" + base58btc_encode(data)


def multibase_decode(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("z"):
        raise ProtocolError("multibase value must be base58btc ('z' prefix)")
    return base58btc_decode(text[1:])


# -- Multikey (FEP-521a) ----------------------------------------------------------------------------------

def ed25519_multikey(public_key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey) -> str:
    """``publicKeyMultibase`` of an Ed25519 key: 'z' + base58btc(0xed 0x01 || 32 raw bytes) -> "z6Mk..."."""
    if isinstance(public_key, ed25519.Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return multibase_encode(_ED25519_PUB_PREFIX + raw)


def ed25519_from_multikey(value: str) -> ed25519.Ed25519PublicKey:
    """Inverse of ed25519_multikey. Raises ProtocolError for another key type or a wrong length."""
    data = multibase_decode(value)
    if not data.startswith(_ED25519_PUB_PREFIX):
        raise ProtocolError("not an ed25519-pub Multikey (multicodec prefix 0xed01 expected)",
                            "publicKeyMultibase")
    raw = data[len(_ED25519_PUB_PREFIX):]
    if len(raw) != 32:
        raise ProtocolError(f"Ed25519 public key must be 32 bytes, got {len(raw)}", "publicKeyMultibase")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def ed25519_private_from_multikey(value: str) -> ed25519.Ed25519PrivateKey:
    """Decode an ed25519-priv multibase secret (0x8026 prefix) — the form test vectors publish."""
    data = multibase_decode(value)
    if not data.startswith(_ED25519_PRIV_PREFIX) or len(data) != 34:
        raise ProtocolError("not an ed25519-priv multibase secret key")
    return ed25519.Ed25519PrivateKey.from_private_bytes(data[2:])


def key_fingerprint(key: PrivateKey | PublicKey | str | bytes) -> str:
    """Stable pin of a key: "sha256:" + hex SHA-256 of the SubjectPublicKeyInfo DER of its public half.

    Accepts a private key, a public key or a PEM (public or private), and gives the same string for all
    forms of one key, so an admin can pin a peer's key from its actor document or from a key file."""
    if isinstance(key, (str, bytes)):
        text = key.encode() if isinstance(key, str) else key
        key = private_key_from_pem(text) if b"PRIVATE KEY" in text else public_key_from_pem(text)
    if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        key = key.public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()
