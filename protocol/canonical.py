"""RFC 8785 (JCS) canonical JSON: the byte form that eddsa-jcs-2022 proofs hash.

Two parties must derive identical bytes from the same JSON value, whatever key order or number spelling
their serialisers chose; JCS fixes key order (UTF-16 code units), number formatting (ECMAScript) and string
escaping.

Verifying a verdict canonicalizes two documents, and the pure-Python ``rfc8785`` library spent most of a
verification doing so. So the common case goes through the C ``json`` encoder, which produces exactly the
JCS bytes when three conditions hold (checked on the way): every float that is not an integer lies in
[1e-4, 1e16) where Python's repr and ECMAScript's Number.toString agree (integral floats are written as
integers, as ECMAScript does); every integer is within +-2**53; no object key contains a character beyond
U+D7FF, so code-point order equals UTF-16 order. Anything else falls back to ``rfc8785``. The string
escaping of ``json.dumps(ensure_ascii=False)`` is JCS's: only '"', '\\' and control characters, with
lowercase \\u00xx.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import rfc8785

from protocol.errors import ProtocolError

_MAX_SAFE_INTEGER = 2**53 - 1
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"),
                           check_circular=False).encode


_SAFE_KEYS: set[str] = set()
_context_cache: tuple[Any, bytes] | None = None  # (private copy of a @context value, its canonical bytes)
_INF = float("inf")
# A placeholder no JSON string of a peer is expected to contain (checked anyway when it is put back).
_MARKER = "\ue000JCS\ue001"
_QUOTED_MARKER = '"' + _MARKER


class _NeedsReference(Exception):
    """The fast path cannot guarantee JCS bytes for this value."""


def canonicalize(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value (dict/list/str/int/float/bool/None).

    Integers beyond 2**53 are written as the double a JavaScript peer would read (I-JSON). Raises
    ProtocolError for values JSON cannot carry (NaN, infinities, numbers beyond double range, non-string
    keys, lone surrogates, other Python types)."""
    if type(obj) is dict and "@context" in obj and len(obj) > 1:
        spliced = _with_known_context(obj)
        if spliced is not None:
            return spliced
    try:
        special = _check_fast_path(obj)
        if special:
            return _encode_with_number_texts(obj)
    except _NeedsReference:
        return _reference(obj)
    except RecursionError as exc:
        raise ProtocolError("cannot canonicalize: nested too deeply") from exc
    try:
        return _encode(obj).encode("utf-8")
    except (TypeError, ValueError, UnicodeError, RecursionError) as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc


def _with_known_context(obj: dict[str, Any]) -> bytes | None:
    """Canonical bytes of a JSON-LD document whose ``@context`` equals the last one seen, reusing that
    context's canonical bytes. A verdict and its proof options carry the same large context, and so does
    every verdict of a peer: this halves the work of a verification.

    Sound because "@context" is then the first member in JCS order (checked: no other key sorts before
    it) and the cached context holds only strings, lists and objects, whose Python equality is exact
    (unlike 1 == 1.0 == True). Returns None when the shortcut does not apply."""
    global _context_cache
    context = obj["@context"]
    if min(key for key in obj if key != "@context") <= "@context":
        return None
    cached = _context_cache
    if cached is None or cached[0] != context:
        if not _only_strings_lists_objects(context):
            return None
        cached = (copy.deepcopy(context), canonicalize(context))
        _context_cache = cached
    rest = canonicalize({key: value for key, value in obj.items() if key != "@context"})
    return b'{"@context":' + cached[1] + b"," + rest[1:]


def _only_strings_lists_objects(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not all(type(key) is str for key in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is not str:
            return False
    return True


def _check_fast_path(obj: Any) -> bool:
    """Check the fast-path conditions without copying (iteratively: hostile nesting cannot exhaust the
    stack). Raises _NeedsReference when the C encoder cannot give JCS bytes; returns True when some float
    must be written differently from Python's repr (see _ecmascript_number)."""
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    special = False
    while stack:
        value = pop()
        kind = type(value)
        if kind is str:
            continue
        if kind is dict:
            for key in value:
                if key not in _SAFE_KEYS:
                    if type(key) is not str or (key and max(key) >= "\ud800"):
                        raise _NeedsReference
                    if len(_SAFE_KEYS) < 4096:  # keys repeat across documents: remember the checked ones
                        _SAFE_KEYS.add(key)
            extend(value.values())
        elif kind is list or kind is tuple:
            extend(value)
        elif kind is float:
            if not 1e-4 <= abs(value) < 1e16 or value.is_integer():  # also true for NaN and infinities
                if value != value or value in (_INF, -_INF):
                    raise ProtocolError("cannot canonicalize: NaN and infinities are not JSON")
                special = True
        elif kind is int:
            if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
                raise _NeedsReference
        elif kind is not bool and value is not None:
            raise _NeedsReference  # subclasses and other types: the reference implementation decides
    return special


def _ecmascript_number(value: float) -> str:
    """ECMAScript Number::toString of a finite double (what RFC 8785 prescribes), built from Python's
    shortest round-trip digits, which are the digits ECMAScript chooses too."""
    if value == 0:
        return "0"
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    # value = 0.<digits> x 10**point
    point = len(int_part) + (int(exponent) if exponent else 0) - (len(int_part + frac_part) - len(
        (int_part + frac_part).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        body = digits + "0" * (point - k)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * (-point) + digits
    else:
        e = point - 1
        body = (digits[0] + ("." + digits[1:] if k > 1 else "")) + ("e+" if e > 0 else "e-") + str(abs(e))
    return "-" + body if value < 0 else body


def _encode_with_number_texts(obj: Any) -> bytes:
    """Encode with the C encoder after replacing each float whose repr is not its ECMAScript form by a
    placeholder string, then put the ECMAScript text in place of the quoted placeholder."""
    texts: list[str] = []

    def swap(value: Any) -> Any:
        kind = type(value)
        if kind is float:
            if not 1e-4 <= abs(value) < 1e16 or value.is_integer():
                texts.append(_ecmascript_number(value))
                return f"{_MARKER}{len(texts) - 1}{_MARKER}"
            return value
        if kind is dict:
            return {k: swap(v) for k, v in value.items()}
        if kind is list or kind is tuple:
            return [swap(v) for v in value]
        return value

    try:
        encoded = _encode(swap(obj))
    except (TypeError, ValueError, UnicodeError) as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc
    parts = encoded.split(_QUOTED_MARKER)
    # parts alternate: text, index, text, index, ...; any other layout means a string of the document
    # itself contained the marker: let the reference implementation handle that document.
    if len(parts) != 2 * len(texts) + 1:
        return _reference(obj)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(part)
        else:
            start, _, rest = part.partition(_MARKER)
            if not start.isdigit() or int(start) != i // 2 or rest:
                return _reference(obj)
            out.append(texts[i // 2])
    return "".join(out).encode("utf-8")


def _reference(obj: Any) -> bytes:
    try:
        return rfc8785.dumps(obj)
    except rfc8785.IntegerDomainError:
        # JSON numbers are IEEE doubles (I-JSON); a JavaScript peer reads 295147905179352830000 as the double
        # 2.9514790517935283e20 and canonicalizes that. Python parsed it as an int: treat it as the double too.
        try:
            return _reference(_ints_as_doubles(obj))
        except OverflowError as exc:
            raise ProtocolError(f"cannot canonicalize: number out of range: {exc}") from exc
    except rfc8785.CanonicalizationError as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc
    except (TypeError, ValueError, UnicodeError, RecursionError) as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc


def _ints_as_doubles(obj: Any) -> Any:
    """Copy of ``obj`` with integers beyond +-(2**53 - 1) replaced by the nearest double."""
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return float(obj) if abs(obj) > _MAX_SAFE_INTEGER else obj
    if isinstance(obj, dict):
        return {k: _ints_as_doubles(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_ints_as_doubles(v) for v in obj]
    return obj
