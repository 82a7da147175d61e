"""The one error type of the wire layer, so callers can refuse bad input with a single except clause,
and the two small helpers every strict parser uses to say which field was wrong and what it held."""
from __future__ import annotations

from typing import Any


class ProtocolError(ValueError):
    """Input that does not follow the protocol. ``field`` names the offending field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


class ProofError(ProtocolError):
    """An object integrity proof (FEP-8b32) is missing, malformed or does not verify."""


class SignatureError(ProtocolError):
    """An HTTP signature is missing, malformed, outside its time window or does not verify."""


class SignatureMismatch(SignatureError):
    """A well-formed HTTP signature that does not verify with the key it was checked against: the one
    failure that fetching the signer's key again may cure (it may have rotated it)."""


def short_repr(value: Any) -> str:
    """A value as it may appear in an error message: bounded, so hostile input cannot bloat logs."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a ProtocolError naming ``where``."""
    if not isinstance(value, dict):
        raise ProtocolError(f"must be a JSON object, got {type(value).__name__}", where)
    return value
