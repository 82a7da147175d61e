"""``verdict_node``: a SignalExchangeAPI over a verdict-node's ``/exchange/v1/signals`` feed.

Each entry of the feed is one of the node's own block verdicts (or its retraction), keyed by the verdict's
id: an ``add`` becomes a record with its PDQ and MD5, a ``delete`` removes that record, so a retracted verdict
stops matching after the next fetch (and two verdicts that share a hash do not delete each other's). The
checkpoint is the feed's cursor: every fetch continues where the previous one stopped.

The node is a remote party like any other: pages and entries are checked before use, a cursor that does not
move forward stops the fetch, and a refused token says so instead of looking like an empty feed.

Annotations stay real types here (no ``from __future__ import annotations``): the threatexchange CLI builds its
options from the config dataclass's field types.
"""
import logging
import os
import pathlib
import typing as t
from dataclasses import dataclass, field

import requests
from threatexchange.exchanges import auth
from threatexchange.exchanges import fetch_state as state
from threatexchange.exchanges.collab_config import CollaborationConfigWithDefaults
from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPI
from threatexchange.signal_type.signal_base import SignalType

log = logging.getLogger("verdict_tx")

FEED_PATH = "/exchange/v1/signals"
PAGE_SIZE = 1000
TIMEOUT_SECONDS = 30
# Feed signal kind -> python-threatexchange signal type names, preferred first.
SIGNAL_TYPES = {"pdq": ("pdq",), "md5": ("photo_md5", "video_md5")}


@dataclass
class _RequiredFields:
    url: str = field(metadata={"help": "the node's base URL, e.g. https://node.example"})


@dataclass
class VerdictNodeCollabConfig(CollaborationConfigWithDefaults, _RequiredFields):
    """One node to fetch from."""

    token_file: t.Optional[str] = field(
        default=None, metadata={"help": "a file holding this node's exchange token (default: "
                                        "VERDICT_NODE_EXCHANGE_TOKEN or ~/.verdict_node_exchange_token)",
                                "metavar": "FILE"})


@dataclass
class VerdictNodeCheckpoint(state.FetchCheckpointBase):
    """Where the next fetch starts in the node's feed; the cursor never expires."""

    cursor: int = 0
    latest_ts: int = 0   # the newest entry seen (unix time), never moving back

    def is_stale(self) -> bool:
        return False

    def get_progress_timestamp(self) -> t.Optional[int]:
        return self.latest_ts or None


@dataclass
class VerdictNodeSignalMetadata(state.FetchedSignalMetadata):
    """One block verdict of the node: what it was labelled, when, and its hashes by feed kind."""

    verdict_id: str
    label: str
    published: str
    signals: t.Dict[str, str] = field(default_factory=dict)

    def get_as_opinions(self) -> t.Sequence[state.SignalOpinion]:
        return [state.SignalOpinion(False, state.SignalOpinionCategory.POSITIVE_CLASS, {self.label})]


@dataclass
class VerdictNodeCredentials(auth.CredentialHelper):
    """The reader's bearer token (`verdict-node exchange-tokens add NAME` prints it)."""

    ENV_VARIABLE: t.ClassVar[str] = "VERDICT_NODE_EXCHANGE_TOKEN"
    FILE_NAME: t.ClassVar[str] = "~/.verdict_node_exchange_token"

    token: str

    @classmethod
    def _from_str(cls, s: str) -> "VerdictNodeCredentials":
        return cls(s.strip())

    def _are_valid(self) -> bool:
        return bool(self.token) and self.token.isprintable() and len(self.token) <= 200


_Delta = state.FetchDelta[str, VerdictNodeSignalMetadata, VerdictNodeCheckpoint]


class VerdictNodeSignalExchangeAPI(
    auth.SignalExchangeWithAuth[VerdictNodeCollabConfig, VerdictNodeCredentials],
    SignalExchangeAPI[VerdictNodeCollabConfig, VerdictNodeCheckpoint, VerdictNodeSignalMetadata, str,
                      VerdictNodeSignalMetadata],
):
    """Fetch a verdict-node's block verdicts (read-only: opinions are not sent back)."""

    def __init__(self, collab: VerdictNodeCollabConfig, token: str, session: t.Optional[requests.Session] = None) -> None:
        self.collab = collab
        self._token = token
        self._session = session or requests.Session()

    @classmethod
    def get_name(cls) -> str:
        return "verdict_node"

    @staticmethod
    def get_config_cls() -> t.Type[VerdictNodeCollabConfig]:
        return VerdictNodeCollabConfig

    @staticmethod
    def get_checkpoint_cls() -> t.Type[VerdictNodeCheckpoint]:
        return VerdictNodeCheckpoint

    @staticmethod
    def get_record_cls() -> t.Type[VerdictNodeSignalMetadata]:
        return VerdictNodeSignalMetadata

    @staticmethod
    def get_credential_cls() -> t.Type[VerdictNodeCredentials]:
        return VerdictNodeCredentials

    @classmethod
    def for_collab(cls, collab: VerdictNodeCollabConfig,
                   credentials: t.Optional[VerdictNodeCredentials] = None) -> "VerdictNodeSignalExchangeAPI":
        if credentials is None and collab.token_file:
            path = pathlib.Path(os.path.expanduser(collab.token_file))
            credentials = VerdictNodeCredentials._from_str(path.read_text(encoding="utf-8"))
            if not credentials._are_valid():
                raise auth.SignalExchangeAPIInvalidAuthException(cls, f"no usable token in {path}")
        credentials = credentials or VerdictNodeCredentials.get(cls)
        return cls(collab, credentials.token)

    # -- fetching -----------------------------------------------------------------------------------

    def fetch_iter(self, supported_signal_types: t.Sequence[t.Type[SignalType]],
                   checkpoint: t.Optional[VerdictNodeCheckpoint]) -> t.Iterator[_Delta]:
        cursor = checkpoint.cursor if checkpoint else 0
        latest = checkpoint.latest_ts if checkpoint else 0
        while True:
            page = self._get_page(cursor)
            updates: t.Dict[str, t.Optional[VerdictNodeSignalMetadata]] = {}
            for entry in page["entries"]:
                parsed = _parse_entry(entry)
                if parsed is None:
                    log.warning("%s: skipped a malformed feed entry", self.collab.url)
                    continue
                key, record, logged_at = parsed
                updates[key] = record
                latest = max(latest, logged_at)
            next_cursor = page["cursor"]
            if next_cursor < cursor or (page["more"] and next_cursor == cursor):
                raise RuntimeError(f"{self.collab.url}: the feed's cursor did not move forward ({cursor} -> "
                                   f"{next_cursor})")
            cursor = next_cursor
            yield _Delta(updates, VerdictNodeCheckpoint(cursor, latest))
            if not page["more"]:
                return

    def _get_page(self, since: int) -> t.Dict[str, t.Any]:
        url = f"{self.collab.url.rstrip('/')}{FEED_PATH}"
        response = self._session.get(url, params={"since": since, "limit": PAGE_SIZE}, timeout=TIMEOUT_SECONDS,
                                     headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"})
        if response.status_code == 401:
            raise auth.SignalExchangeAPIInvalidAuthException(
                type(self), f"{url} refused the token (401): it is wrong or was revoked")
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
        try:
            page = response.json()
        except ValueError:
            raise RuntimeError(f"{url} did not answer JSON") from None
        if not (isinstance(page, dict) and isinstance(page.get("entries"), list) and _is_int(page.get("cursor"))
                and isinstance(page.get("more"), bool)):
            raise RuntimeError(f"{url} did not answer a feed page")
        return page

    @classmethod
    def naive_convert_to_signal_type(
        cls, signal_types: t.Sequence[t.Type[SignalType]], collab: VerdictNodeCollabConfig,
        fetched: t.Mapping[str, t.Optional[VerdictNodeSignalMetadata]],
    ) -> t.Dict[t.Type[SignalType], t.Dict[str, VerdictNodeSignalMetadata]]:
        by_name = {st.get_name(): st for st in signal_types}
        chosen = {kind: next((by_name[n] for n in names if n in by_name), None) for kind, names in SIGNAL_TYPES.items()}
        out: t.Dict[t.Type[SignalType], t.Dict[str, VerdictNodeSignalMetadata]] = {}
        for record in fetched.values():
            if record is None:
                continue
            for kind, value in record.signals.items():
                signal_type = chosen.get(kind)
                if signal_type is None:
                    continue
                try:
                    value = signal_type.validate_signal_str(value)
                except ValueError:
                    continue
                out.setdefault(signal_type, {})[value] = record
        return out


def _is_int(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(entry: t.Any) -> t.Optional[t.Tuple[str, t.Optional[VerdictNodeSignalMetadata], int]]:
    """(key, record or None for a deletion, logged unix time), or None for an entry that is not well-formed."""
    if not isinstance(entry, dict):
        return None
    verdict_id, change = entry.get("id"), entry.get("change")
    logged_at = entry.get("logged_at", 0)
    if not isinstance(verdict_id, str) or not verdict_id or len(verdict_id) > 2048 or not _is_int(logged_at):
        return None
    if change == "delete":
        return verdict_id, None, logged_at
    signals, label, published = entry.get("signals"), entry.get("label"), entry.get("published", "")
    if change != "add" or not isinstance(signals, dict) or not isinstance(label, str) or \
            not isinstance(published, str):
        return None
    kept = {kind: value for kind, value in signals.items()
            if kind in SIGNAL_TYPES and isinstance(value, str) and len(value) <= 128}
    return verdict_id, VerdictNodeSignalMetadata(verdict_id, label[:64], published[:40], kept), logged_at
