"""The one error type of the wire layer, so callers can refuse bad input with a single except clause."""


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
