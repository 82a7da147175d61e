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

    Raises ProtocolError for values JSON cannot carry (NaN, infinities, integers beyond IEEE-754 double
    precision, non-string keys, lone surrogates, other Python types)."""
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc
    except (TypeError, ValueError, UnicodeError, RecursionError) as exc:
        raise ProtocolError(f"cannot canonicalize: {exc}") from exc
