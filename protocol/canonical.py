"""RFC 8785 (JCS) canonical JSON: the byte form that eddsa-jcs-2022 proofs hash.

Two parties must derive identical bytes from the same JSON value, whatever key order or number spelling
their serialisers chose; JCS fixes key order (UTF-16 code units), number formatting (ECMAScript) and string
escaping. The ``rfc8785`` library implements it; we wrap it so its errors become ProtocolError and so the
rest of the code has one place to call.
"""
from __future__ import annotations

from typing import Any

import rfc8785

from protocol.errors import ProtocolError


def canonicalize(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value (dict/list/str/int/float/bool/None).

    Integers beyond 2**53 are written as the double a JavaScript peer would read (I-JSON). Raises
    ProtocolError for values JSON cannot carry (NaN, infinities, numbers beyond double range, non-string
    keys, lone surrogates, other Python types)."""
    try:
        return rfc8785.dumps(obj)
    except rfc8785.IntegerDomainError:
        # JSON numbers are IEEE doubles (I-JSON); a JavaScript peer reads 295147905179352830000 as the double
        # 2.9514790517935283e20 and canonicalizes that. Python parsed it as an int: treat it as the double too.
        try:
            return canonicalize(_ints_as_doubles(obj))
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


_MAX_SAFE_INTEGER = 2**53 - 1
