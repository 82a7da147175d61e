"""URLs with their secrets taken out, for whatever is written down or shown: a sweep source's URL in the
database, a database URL in a log line or an attribution's problems."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Query parameters never written down (they are passed again by option, environment or a *_file setting).
SECRET_PARAMETERS = frozenset({"secret_key", "api_key", "passphrase", "token", "password", "session_token",
                               "sslpassword"})


def public_url(url: str) -> str:
    """The URL without secret query parameters (what sweep runs record, to reopen the source later)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in SECRET_PARAMETERS]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def redacted(url: str) -> str:
    """The URL without a password in its user info nor a secret query parameter (for log lines)."""
    parts = urlsplit(public_url(url))
    if parts.password is None:
        return urlunsplit(parts)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
