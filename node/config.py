"""node.yaml and peers.yaml: typed, validated, documented from one place.

Each section of node.yaml is one dataclass whose fields are declared with `setting(default, doc, ...)`.
The same declarations drive three things, so they cannot drift apart:
  - validation (`load_config`): a wrong value gives ONE line naming the key, e.g.
    `node.yaml: policy.thresholds.csam: must be a number in [0, 1], got "high"`;
  - the documented template that `verdict-node init` writes (a comment on every key, every default);
  - the defaults used when no node.yaml exists yet.

To add a section (e.g. `federation:`), write a dataclass of `setting(...)` fields and add one field
`federation: FederationSection = section(FederationSection, "what it is")` to `NodeConfig`. The mechanism
(declaring, validating, rendering) is node.settings.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from node.settings import ConfigError, describe, parse_section, render_template, section, setting  # noqa: F401 - ConfigError and describe are used through node.config too
from scanners.media import DEFAULT_LIMITS, Limits

CONFIG_FILE = "node.yaml"


# --------------------------------------------------------------------------------------------------
# Checks shared by several keys
# --------------------------------------------------------------------------------------------------

def check_url(value: str) -> str | None:
    if not (value.startswith("http://") or value.startswith("https://")) or value.endswith("/"):
        return "must be an http(s) URL without a trailing slash"
    return None


def _check_networks(values: list[str]) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{describe(v)} is not an IP address or network (e.g. 127.0.0.1, ::1, 10.0.0.0/8)"
    return None


def _check_model_refs(values: list[str]) -> str | None:
    for v in values:
        name, _, rules = v.rpartition("@")
        if not name or not rules:
            return f"{describe(v)} must be NAME@RULES, e.g. ViT-L-14@horde-safety-nsfwchecker-78f8334"
    return None


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}\Z")


def _check_fingerprint(value: str | None) -> str | None:
    if value is not None and not _FINGERPRINT.match(value):
        return "must be sha256: and 64 lowercase hex digits, as `verdict-node peers show-key` prints it"
    return None


def _check_tokens(values: list[str]) -> str | None:
    for v in values:
        if len(v) < 16 or "/" in v or v == "IPADDR":
            return "every token must be at least 16 characters, without '/', and not IPADDR"
    return None


# --------------------------------------------------------------------------------------------------
# The sections of node.yaml
# --------------------------------------------------------------------------------------------------

@dataclass
class NodeSection:
    url: str = setting("http://127.0.0.1:8080",
                       "Public base URL of this node (no trailing slash). The actor is <url>/actor;\n"
                       "peers fetch keys and deliver verdicts here.", check=check_url)
    name: str = setting("verdict-node", "Display name of the actor.")


@dataclass
class ListenSection:
    host: str = setting("127.0.0.1", "Address to listen on. 127.0.0.1 keeps the node private to this host;\n"
                                     "use 0.0.0.0 (or ::) in a container network or behind a reverse proxy.")
    port: int = setting(8080, "TCP port to listen on.", min=1, max=65535)
    header_timeout_seconds: float = setting(
        10.0, "A request's headers must arrive within this many seconds of its first byte (of the connection's\n"
              "start, for its first request), else the connection is closed; its body must be complete within\n"
              "pictrs.budget_seconds of that first byte, else 408. Slow clients cannot hold connections.",
        min=0.5, max=300)


@dataclass
class PictrsSection:
    tokens: list[str] = setting([], "Secret tokens accepted in /pictrs/validate/<token> and /api/v1/scan/<token>.\n"
                                    "init generates one. Use a token when pict-rs is on another host.",
                                check=_check_tokens)
    allowed_ips: list[str] = setting(["127.0.0.1", "::1"],
                                     "Addresses (or networks) allowed to use the token-less form\n"
                                     "/pictrs/validate/IPADDR and /api/v1/scan/IPADDR (pictrs-safety compatible).",
                                     check=_check_networks)
    trust_forwarded_for: bool = setting(False, "Take the caller's address from X-Forwarded-For, its last value (the one the\n"
                                               "proxy appended). Only behind a reverse proxy you control; otherwise anyone\n"
                                               "can claim 127.0.0.1.")
    budget_seconds: float = setting(25.0, "Every answer is sent within this many seconds; must stay below pict-rs's\n"
                                          "external_validation_timeout (30 s by default).", min=0.5, max=300)
    on_unavailable: Literal["reject", "accept"] = setting(
        "reject", "What to answer for an unknown image when no classifier is available, its queue is full\n"
                  "or the budget runs out: reject (406, the upload fails) or accept (200).")


@dataclass
class MediaSection:
    on_video: Literal["accept", "reject"] = setting("accept", "Videos are not classified (yet): accept or reject them.")
    on_unreadable: Literal["reject", "accept"] = setting(
        "reject", "Bodies that are not a readable image (corrupt, truncated, over the limits): reject or accept.\n"
                  "Either way they are recorded as unreadable, never as CSAM.")
    max_bytes: int = setting(50_000_000, "Largest accepted body in bytes (413 above).", min=1)
    max_pixels: int = setting(64_000_000, "Largest decoded image in pixels (width x height), against decompression bombs.",
                              min=1)
    max_frames: int = setting(8, "Frames sampled from an animated image (scores are the max over them).", min=1, max=256)
    on_trailing_data: Literal["accept", "reject"] = setting(
        "accept", "Data after the image's end marker (a ZIP glued to a JPEG; also phones' motion photos, which append\n"
                  "a video): accept, or reject the upload when more than max_trailing_bytes follow the image. The\n"
                  "flag and its size are in every answer and decision record either way; sweeps are not affected.")
    max_trailing_bytes: int = setting(0, "With on_trailing_data: reject, trailing bytes allowed before the upload is\n"
                                         "rejected (0: any trailing data).", min=0)


MODEL_NONE = "none"


def is_model_none(spec: str) -> bool:
    """``classifier.model: none``: this node classifies nothing itself (peers' verdicts, lookups, workers)."""
    return spec.strip().lower() == MODEL_NONE


@dataclass
class ClassifierSection:
    model: str = setting("ViT-L-14/openai",
                         "Classifier: an open_clip name/pretrained tag (ViT-L-14/openai, the reference),\n"
                         "local-dir:PATH (a saved open_clip model), open_nsfw, or none (answer only from\n"
                         "verdicts already known; unknown images follow pictrs.on_unavailable).")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, mps.")
    cache_dir: str | None = setting(None, "Where model weights are looked up (default: the open_clip / Hugging Face cache).")
    batch_size: int = setting(32, "Most frames per forward pass.", min=1, max=4096)
    max_wait_ms: float = setting(20.0, "How long a batch waits for more frames before it runs.", min=0, max=10_000)
    max_queue: int = setting(256, "Frames waiting beyond this are refused at once (QueueFull -> on_unavailable),\n"
                                  "so a flood cannot push answers past the budget.", min=1)


@dataclass
class ThresholdsSection:
    csam: float | None = setting(0.5, "Block when the csam score is >= this. 0.5 is the reference rule set's boundary;\n"
                                      "lower is stricter. null: never block on this category.", min=0, max=1)
    nsfw: float | None = setting(None, "Block when the nsfw score is >= this (null: nsfw never blocks).", min=0, max=1)
    underage: float | None = setting(None, "Block when the underage score is >= this (null: never).", min=0, max=1)


@dataclass
class PolicySection:
    thresholds: ThresholdsSection = section(ThresholdsSection, "This node's own strictness, applied to every score (own or peers').")
    reuse_safe_perceptual: bool = setting(False, "Reuse a SAFE verdict on a perceptual match too (default: only on an exact\n"
                                                 "key, because perceptual hashes can be forged to look like a safe image).")
    safe_phash_distance: int = setting(2, "With reuse_safe_perceptual: largest pHash distance (of 64) for safe reuse.",
                                       min=0, max=64)
    safe_pdq_distance: int = setting(10, "With reuse_safe_perceptual: largest PDQ distance (of 256) for safe reuse.",
                                     min=0, max=256)
    block_phash_distance: int = setting(8, "Largest pHash distance (of 64) at which a block verdict is reused.", min=0, max=64)
    block_pdq_distance: int = setting(31, "Largest PDQ distance (of 256) at which a block verdict is reused.", min=0, max=256)
    block_match: Literal["both", "either"] = setting(
        "both", "When both sides carry both perceptual hashes, a block verdict is reused on a perceptual match only\n"
                "when both are within their distance (both), or when one is (either). A pHash alone is easy to forge:\n"
                "with either, whoever holds one blocked image can get any photo blocked. With one hash present, it counts.")
    safe_quorum: int = setting(1, "How many independent safe verdicts are needed to reuse 'safe'.", min=1, max=100)
    compare_unknown_models: bool = setting(False, "Compare scores of models not listed in known_models with our thresholds.")
    trust_issuer_models: bool = setting(
        True, "A node without a model of its own (classifier.model none, no workers) compares the scores of its\n"
              "full and block-only peers under the model each issuer signed with (it has none to compare them\n"
              "against). false: only models in known_models (or a peer's known_models) count. A node with a model\n"
              "always uses known_models.")
    known_models: list[str] = setting([], "Other models whose scores are comparable with our thresholds, as NAME@RULES\n"
                                          "(e.g. ViT-L-14@horde-safety-nsfwchecker-78f8334). Our own model always is.",
                                      check=lambda v: _check_model_refs(v))


@dataclass
class WorkersSection:
    enabled: bool = setting(False, "Let remote GPU workers (`verdict-node worker`) classify for this node. Add one with\n"
                                   "`verdict-node workers add NAME`; see README, Remote GPU workers.")
    model: str | None = setting(None, "The classifier spec the workers must run (default: classifier.model). Required when\n"
                                      "classifier.model is none; a worker running another model is refused.")
    lease_timeout_s: float = setting(30.0, "A worker silent this long loses its leased images to the queue (another worker\n"
                                           "takes them).", min=1, max=3600)
    stale_after_s: float = setting(10.0, "With no local classifier and no worker heard from for this long, unknown images\n"
                                         "get pictrs.on_unavailable at once instead of waiting out the budget.", min=0.5, max=3600)
    max_queue: int = setting(256, "Images waiting for workers beyond this are refused at once (-> on_unavailable).", min=1)
    job_ttl_s: float = setting(600.0, "An image not classified within this many seconds is dropped (and counted); until\n"
                                      "then a late result still stores its verdict.", min=1)
    max_attempts: int = setting(3, "An image leased this many times without a result is dropped (a frame that kills\n"
                                   "workers must not kill them all).", min=1, max=100)
    local_after_ms: float = setting(250.0, "With a local classifier too: an image no worker has taken after this long is\n"
                                           "classified locally (workers first, the local model absorbs the overflow).",
                                    min=0, max=600_000)


def _check_actor_urls(values: list[str]) -> str | None:
    for v in values:
        problem = check_url(v)
        if problem:
            return f"{describe(v)}: {problem}"
    return None


@dataclass
class FederationSection:
    lookup_peers: list[str] = setting([], "Actor URLs of peers (listed in peers.yaml) asked about an image this node cannot\n"
                                          "decide itself (no classifier, or a cache miss), within the pict-rs budget.",
                                      check=_check_actor_urls)
    lookup_timeout_seconds: float = setting(3.0, "Longest wait for one peer lookup.", min=0.05, max=60)
    lookup_rate_per_second: float = setting(50.0, "Lookups one peer may make here per second (bursts of twice that).",
                                            min=0.1)
    batch_max: int = setting(100, "Most verdicts sent to a follower in one Create.", min=1, max=100)
    batch_wait_seconds: float = setting(1.0, "Longest a new verdict waits for a batch to fill before it is sent.",
                                        min=0, max=60)
    retry_base_seconds: float = setting(10.0, "First retry delay of a failed delivery; doubles on each failure.",
                                        min=0.01, max=3600)
    retry_max_seconds: float = setting(3600.0, "Longest delay between two retries.", min=0.01, max=86400)
    give_up_after_hours: float = setting(168.0, "Deliveries are retried this long before they are dropped (a follower\n"
                                                "that comes back later still catches up from the outbox).",
                                         min=24, max=24 * 365)
    poll_seconds: float = setting(1.0, "How often the server looks in the database for work queued by CLI commands.",
                                  min=0.05, max=60)
    backfill_interval_seconds: float = setting(300.0, "How often the outboxes of followed peers are read for anything\n"
                                                      "a push missed.", min=1, max=86400)
    request_timeout_seconds: float = setting(30.0, "Timeout of one request to a peer.", min=1, max=300)
    open_follow_requests: bool = setting(False, "Let nodes that are not in peers.yaml ask to follow (they wait for\n"
                                                "`verdict-node peers approve`). Off: a stranger's request is refused before\n"
                                                "anything is fetched. On: its actor document is fetched from public addresses\n"
                                                "only (never loopback, private or link-local ranges).")


@dataclass
class BanksSection:
    pdq_distance: int = setting(31, "Largest PDQ distance (of 256) at which an entry of a hash bank blocks an image (31 is\n"
                                    "the threshold the lists' publishers use). Banks are imported with\n"
                                    "`verdict-node banks import`; a match blocks before inference.", min=0, max=64)
    phash_distance: int = setting(8, "Largest pHash distance (of 64) at which a bank's phash entry blocks an image.",
                                  min=0, max=16)


@dataclass
class EvidenceSection:
    retain_days: float = setting(365, "A confirmed positive's quarantined file is evidence for this many days after the review:\n"
                                      "sweeps' apply and delete refuse to destroy it inside that time unless --force.",
                                 min=0, max=36500)


def _check_database_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"postgres(ql)?://", value):
        return "must be a postgresql:// URL, e.g. postgresql://verdict_node_ro@lemmy-db:5432/lemmy"
    return None


def _check_optional_url(value: str | None) -> str | None:
    return check_url(value) if value is not None else None


@dataclass
class LemmyAttributionSection:
    database_url: str | None = setting(None, "Lemmy's PostgreSQL, read with a read-only role (see README, Attribution and evidence),\n"
                                             "e.g. postgresql://verdict_node_ro@postgres:5432/lemmy. null: Lemmy is not asked.",
                                       check=_check_database_url)
    database_password_file: str | None = setting(None, "A file holding that role's password (instead of one in database_url).")
    version: Literal["auto", "0.19", "1.0"] = setting("auto", "Lemmy's schema: auto (told by its tables), 0.19 or 1.0.")
    api_url: str | None = setting(None, "Lemmy's base URL for the admin actions (`verdict-node attribution purge`), e.g.\n"
                                        "http://lemmy:8536. null: no purge actions.", check=_check_optional_url)
    api_jwt: str | None = setting(None, "An admin's login token (JWT) for those actions; prefer api_jwt_file.")
    api_jwt_file: str | None = setting(None, "A file holding that token.")


@dataclass
class MastodonAttributionSection:
    database_url: str | None = setting(None, "Mastodon's PostgreSQL, read with a read-only role, e.g.\n"
                                             "postgresql://verdict_node_ro@db:5432/mastodon_production. null: not asked.",
                                       check=_check_database_url)
    database_password_file: str | None = setting(None, "A file holding that role's password (instead of one in database_url).")
    public_url: str | None = setting(None, "The instance's public URL (https://mastodon.example), for links to local accounts.",
                                     check=_check_optional_url)


@dataclass
class PictrsAttributionSection:
    api_url: str | None = setting(None, "pict-rs's base URL for its internal API (hash -> aliases), e.g. http://pictrs:8080.\n"
                                        "null: the URL of the last `scan pictrs://...` sweep, if any.",
                                  check=_check_optional_url)
    api_key: str | None = setting(None, "pict-rs's PICTRS__SERVER__API_KEY (default: env VERDICT_PICTRS_API_KEY, as for sweeps).")
    api_key_file: str | None = setting(None, "A file holding that key.")
    max_pages: int = setting(50, "Most pages of /internal/hashes read to find the aliases of one hash (newest first).",
                             min=1, max=100_000)


@dataclass
class AttributionSection:
    lemmy: LemmyAttributionSection = section(LemmyAttributionSection, "Lemmy: uploader, posts and comments of an image.")
    mastodon: MastodonAttributionSection = section(MastodonAttributionSection, "Mastodon: the account and status of a media file.")
    pictrs: PictrsAttributionSection = section(PictrsAttributionSection, "pict-rs: the aliases (URLs) of a file's hash.")
    connect_timeout_seconds: float = setting(5.0, "Longest wait to connect to a database or pict-rs.", min=0.1, max=120)
    query_timeout_seconds: float = setting(10.0, "Longest one query may run (PostgreSQL statement_timeout).", min=0.1, max=600)
    cache_hours: float = setting(24.0, "An attribution is looked up again when viewed after this many hours.", min=0, max=24 * 365)
    follow_positives: bool = setting(True, "While serve runs, attribute every new positive (hook rejection, sweep quarantine,\n"
                                           "peer block) in the background and keep it in the cache.")


def _check_listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, e.g. 127.0.0.1:8081"
    return None


@dataclass
class AdminSection:
    enabled: bool = setting(False, "Serve the review console (a web page for reviewing blocked images, peers and evidence)\n"
                                   "on its own listener. Accounts: `verdict-node admin add NAME`.")
    listen: str = setting("127.0.0.1:8081", "HOST:PORT of the console's listener, apart from the federation listener. Keep it\n"
                                            "on loopback (reach it through an SSH tunnel) or behind an HTTPS proxy with\n"
                                            "its own access control.", check=_check_listen)
    allow_reveal: bool = setting(True, "Offer 'reveal' (an unblurred preview, after a warning, audited). false removes the\n"
                                       "button and the route refuses.")
    session_idle_minutes: float = setting(30, "A session ends after this many minutes without a request.", min=1, max=1440)
    session_max_hours: float = setting(12, "A session ends this many hours after the login, however busy.", min=0.1, max=720)
    login_max_failures: int = setting(5, "Failed logins per account, and per client address, within login_window_seconds\n"
                                         "before further attempts are refused (429) until the window has passed.",
                                      min=1, max=1000)
    login_window_seconds: float = setting(300, "The window of login_max_failures.", min=10, max=86400)
    preview_side: int = setting(160, "Longest side of a preview, in pixels.", min=32, max=1024)
    trust_proxy: bool = setting(False, "The console is reached only through your own reverse proxy: take the client's address\n"
                                       "from the last X-Forwarded-For value (the login limit counts per address) and\n"
                                       "X-Forwarded-Proto: https marks the session cookie Secure.")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass
class NodeConfig:
    """All of node.yaml. `data_dir` is where node.yaml lives; relative paths are resolved against it."""

    node: NodeSection = section(NodeSection, "Identity of this node.")
    listen: ListenSection = section(ListenSection, "HTTP server.")
    pictrs: PictrsSection = section(PictrsSection, "The pict-rs external validation endpoint.")
    media: MediaSection = section(MediaSection, "Decoding limits and what to do with media that is not an image.")
    classifier: ClassifierSection = section(ClassifierSection, "The local classifier.")
    policy: PolicySection = section(PolicySection, "How scores and verdicts become decisions.")
    workers: WorkersSection = section(WorkersSection, "Remote GPU workers (a GPU-less node, classification elsewhere).")
    federation: FederationSection = section(FederationSection, "Sharing verdicts with the peers in peers.yaml.")
    banks: BanksSection = section(BanksSection, "Hash banks: imported lists of known-bad hashes (never shared with anyone).")
    evidence: EvidenceSection = section(EvidenceSection, "Evidence records of confirmed positives (for reports to the authorities).")
    attribution: AttributionSection = section(AttributionSection, "Who uploaded an image and where it is used (read-only: pict-rs, Lemmy, Mastodon).")
    admin: AdminSection = section(AdminSection, "The review console (its own listener; off unless enabled).")
    database: str = setting("verdict-node.db", "SQLite database (relative to the data directory).")
    keys_dir: str = setting("keys", "Directory of the node's private keys (relative to the data directory).")
    peers_file: str = setting("peers.yaml", "Trusted peers (see peers.example.yaml), relative to the data directory.")
    data_dir: Path = field(default=Path("data"), init=False, repr=True, compare=False)

    def path(self, relative: str) -> Path:
        """Resolve a path from the config against the data directory."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.data_dir / p

    @property
    def database_path(self) -> Path:
        return self.path(self.database)

    @property
    def rsa_key_path(self) -> Path:
        return self.path(self.keys_dir) / "rsa.pem"

    @property
    def ed25519_key_path(self) -> Path:
        return self.path(self.keys_dir) / "ed25519.pem"

    @property
    def peers_path(self) -> Path:
        return self.path(self.peers_file)

    @property
    def actor_id(self) -> str:
        return f"{self.node.url}/actor"

    def media_limits(self) -> Limits:
        """scanners.media.Limits from the media section."""
        return dataclasses.replace(DEFAULT_LIMITS, max_bytes=self.media.max_bytes,
                                   max_pixels=self.media.max_pixels, max_frames=self.media.max_frames)


def default_template(config: NodeConfig | None = None) -> str:
    """node.yaml as init writes it: the documented template with the values of `config` (default: the defaults)."""
    return ("# verdict-node configuration. Every key is shown with its default; see README.md.\n"
            "# A wrong value stops the node with one line naming the key.\n\n" + render_template(NodeConfig, config))


def parse_config(raw: Any, data_dir: Path | str, source: str = CONFIG_FILE) -> NodeConfig:
    """Validate an already-loaded YAML document. Errors are prefixed with `source`."""
    try:
        config = parse_section(NodeConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    config.data_dir = Path(data_dir)
    return config


def _read_yaml(path: Path) -> Any:
    """One YAML file of the data directory; every way it can be wrong is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.name}: not valid YAML{where}: {problem}") from None


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate node.yaml; its directory is the data directory. A file with no settings at all (0 bytes,
    or only comments) is refused: it is far more likely a truncated copy or an unfinished edit than a wish for
    all defaults (pict-rs tokens, node.url, ...), which `{}` still says explicitly."""
    path = Path(path)
    raw = _read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path.name}: empty: no settings in it (a truncated copy or an unfinished edit?); restore "
                          f"it, or delete it and run `verdict-node init --dir {path.parent}` to write the documented "
                          f"defaults")
    return parse_config(raw, path.parent, path.name)


# --------------------------------------------------------------------------------------------------
# peers.yaml
# --------------------------------------------------------------------------------------------------

@dataclass
class PeerThresholds:
    csam: float | None = setting(None, "Override of our csam threshold for this peer's scores.", min=0, max=1)
    nsfw: float | None = setting(None, "Override of our nsfw threshold for this peer's scores.", min=0, max=1)
    underage: float | None = setting(None, "Override of our underage threshold for this peer's scores.", min=0, max=1)


@dataclass
class PeerEntry:
    actor: str = setting("", "The peer's actor URL, e.g. https://peer.example/actor.", check=check_url)
    key_fingerprint: str | None = setting(None, "Pinned fingerprint of the peer's Ed25519 key (sha256:<hex>), as printed by\n"
                                                "its `verdict-node peers show-key`. Only this key verifies the peer's verdicts and\n"
                                                "retractions; an actor document without it is refused, extra keys are ignored.\n"
                                                "The RSA key that signs its requests is bound to the first document that carries\n"
                                                "the pin (or pinned with rsa_fingerprint); a later change is refused until\n"
                                                "`verdict-node peers forget-key ACTOR`.", check=_check_fingerprint)
    rsa_fingerprint: str | None = setting(None, "Optional pin of the peer's RSA key (HTTP signatures), the rsa_fingerprint line\n"
                                                "of its `peers show-key`. Needs key_fingerprint.", check=_check_fingerprint)
    trust: Literal["full", "block-only", "observe"] = setting(
        "observe", "full: its block and safe verdicts count; block-only: only its blocks count;\n"
                   "observe: stored and compared, never acted on.")
    thresholds: PeerThresholds | None = setting(None, "Per-category thresholds used for this peer's scores instead of ours.")
    known_models: list[str] = setting([], "Models (NAME@RULES) whose scores from this peer are comparable with our thresholds.",
                                      check=lambda v: _check_model_refs(v))
    follow: bool = setting(True, "Subscribe to this peer's verdicts.")
    share: bool = setting(True, "Let this peer follow us and receive our verdicts.")

    def validate(self) -> str | None:
        if not self.actor:
            return "actor: is required"
        if self.rsa_fingerprint and not self.key_fingerprint:
            return "rsa_fingerprint: needs key_fingerprint (the Ed25519 pin) too"
        return None


def parse_peers(raw: Any, source: str = "peers.yaml") -> list[PeerEntry]:
    """Validate a peers.yaml document: `peers:` is a list of PeerEntry mappings, actors unique."""
    if raw is None:
        return []
    if not isinstance(raw, dict) or set(raw) - {"peers"}:
        raise ConfigError(f"{source}: top level must be a mapping with one key, peers")
    items = raw.get("peers") or []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: peers: must be a list, got {describe(items)}")
    peers: list[PeerEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        prefix = f"peers[{i}]"
        item = dict(item) if isinstance(item, dict) else item
        thresholds = None
        if isinstance(item, dict) and item.get("thresholds") is not None:
            try:
                thresholds = parse_section(PeerThresholds, item.pop("thresholds"), f"{prefix}.thresholds")
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
        try:
            entry = parse_section(PeerEntry, item, prefix)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        entry.thresholds = thresholds
        if entry.actor in seen:
            raise ConfigError(f"{source}: {prefix}.actor: listed twice, got {describe(entry.actor)}")
        seen.add(entry.actor)
        peers.append(entry)
    return peers


def load_peers(path: str | Path) -> list[PeerEntry]:
    """Read peers.yaml; a missing file means no peers."""
    path = Path(path)
    if not path.exists():
        return []
    return parse_peers(_read_yaml(path), path.name)
