"""The data directory: what `verdict-node init` creates (node.yaml, keys, database), the node's identity,
the config every command opens, and the URLs pict-rs is given.

The node's identity is its two private keys in `keys_dir`, RSA (HTTP signatures) and Ed25519 (verdict proofs).

To its peers the keys ARE the node: they pin its Ed25519 fingerprint and cache its RSA key. Keys created
anew beside an existing database would silently turn a known node into a stranger every peer refuses. So
keys are created only for a data directory without a database (a new node), or when the admin asks for a
new identity (`verdict-node init --force`); otherwise missing keys stop every command with one line
saying what is missing, why it matters and what to do. A key file that cannot be used is one line too,
never a traceback. Both are `IdentityError`, a ConfigError: the commands exit with code 2.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from node.config import CONFIG_FILE, ConfigError, NodeConfig, check_url, default_template, describe, load_config
from node.store import Store
from protocol import keys
from protocol.errors import ProtocolError

log = logging.getLogger("verdict_node.datadir")

K = TypeVar("K", rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
_KIND_NAMES: dict[type, str] = {rsa.RSAPrivateKey: "RSA", ed25519.Ed25519PrivateKey: "Ed25519"}


class IdentityError(ConfigError):
    """The keys are missing next to an existing database, or a key file cannot be used."""


@dataclass(frozen=True)
class NodeKeys:
    rsa: rsa.RSAPrivateKey
    ed25519: ed25519.Ed25519PrivateKey


def _new_identity_hint(config: NodeConfig) -> str:
    return f"run `verdict-node init --dir {config.data_dir} --force` to make a new identity on purpose"


def _missing_keys_message(config: NodeConfig, missing: list[Path]) -> str:
    keys_dir = config.rsa_key_path.parent
    what = (f"{keys_dir}: the keys directory is missing" if not keys_dir.exists()
            else f"{', '.join(map(str, missing))}: missing")
    return (f"{what}, but the database {config.database_path} exists: new keys would be a new identity, and "
            f"peers that pinned this node's key would refuse it; restore the keys from a backup "
            f"(node.yaml keys_dir says where they belong), or {_new_identity_hint(config)}")


def ensure_identity(config: NodeConfig, *, new_identity: bool = False) -> list[Path]:
    """Create the key files that are missing, where that does not replace an identity: a data directory
    without a database yet, or `new_identity` (the admin's explicit choice). Existing key files are never
    overwritten. Returns the files created."""
    paths = [config.rsa_key_path, config.ed25519_key_path]
    missing = [p for p in paths if not p.exists()]
    if missing and config.database_path.exists() and not new_identity:
        raise IdentityError(_missing_keys_message(config, missing))
    keys_dir = config.rsa_key_path.parent
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    for path in missing:
        keys.save_private_key(keys.generate_rsa() if path == config.rsa_key_path else keys.generate_ed25519(), path)
    if missing and new_identity and config.database_path.exists():
        log.warning("new identity: created %s next to the existing database %s; peers that pinned this node's "
                    "old key will refuse it until they pin the new fingerprint (`verdict-node peers show-key`)",
                    ", ".join(map(str, missing)), config.database_path)
    return missing


def _load_key(path: Path, kind: type[K], config: NodeConfig) -> K:
    remedy = f"restore it from a backup, or move it away and {_new_identity_hint(config)}"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IdentityError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        key = keys.private_key_from_pem(data)
    except ProtocolError:
        raise IdentityError(f"{path}: not a PEM private key (RSA or Ed25519); {remedy}") from None
    if not isinstance(key, kind):
        held = _KIND_NAMES[rsa.RSAPrivateKey if isinstance(key, rsa.RSAPrivateKey) else ed25519.Ed25519PrivateKey]
        raise IdentityError(f"{path}: holds an {held} key, expected {_KIND_NAMES[kind]}; {remedy}")
    return key


def load_identity(config: NodeConfig) -> NodeKeys:
    """Read both keys; a file that is unreadable, not a PEM private key or of the wrong kind is an IdentityError."""
    return NodeKeys(rsa=_load_key(config.rsa_key_path, rsa.RSAPrivateKey, config),
                    ed25519=_load_key(config.ed25519_key_path, ed25519.Ed25519PrivateKey, config))


def open_identity(config: NodeConfig, *, new_identity: bool = False) -> NodeKeys:
    """The node's keys, created first where `ensure_identity` allows it."""
    ensure_identity(config, new_identity=new_identity)
    return load_identity(config)


# -- `verdict-node init`, and the config every command runs with ----------------------------------------

def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a URL on this host that nothing in front of the node rewrites."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_port(url: str) -> tuple[str, int | None]:
    """(host, explicit port or None) of a URL."""
    parts = urlsplit(url)
    try:
        return parts.hostname or "", parts.port
    except ValueError:
        return parts.hostname or "", None


def init_data_dir(data_dir: str | Path, url: str | None = None, *, new_identity: bool = False) -> NodeConfig:
    """Create what `data_dir` lacks: node.yaml (every key documented, a fresh pict-rs token), the keys and the
    database. An existing node.yaml is never rewritten, existing keys never replaced. Keys missing next to an
    existing database are refused (see the module docstring) unless `new_identity`: `init --force`.

    A loopback `url` with a port (``http://127.0.0.1:8081``) is where the node itself listens: listen.port
    takes that port, so the node answers at the URL it gives its peers. Any other URL is public (behind a
    reverse proxy) and leaves listen.port alone; `init` says so."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_FILE
    if not path.exists():
        defaults = NodeConfig()
        if url is not None:
            defaults.node.url = url.rstrip("/")
            problem = check_url(defaults.node.url)
            if problem:
                raise ConfigError(f"--url: {problem}, got {describe(url)}")
            host, port = url_port(defaults.node.url)
            if port is not None and is_loopback_host(host):
                defaults.listen.port = port
        defaults.pictrs.tokens = [secrets.token_urlsafe(24)]
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(default_template(defaults), encoding="utf-8")
        os.chmod(tmp, 0o600)  # it holds the pict-rs token
        tmp.replace(path)
    config = load_config(path)
    open_identity(config, new_identity=new_identity)
    Store(config.database_path).close()
    return config


def local_base_url(config: NodeConfig) -> str:
    """``http://host:port`` at which a process on this host reaches the node's listener: a wildcard listen
    address (0.0.0.0, ::) is reached on loopback."""
    host = config.listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.listen.port}"


def pictrs_urls(config: NodeConfig) -> list[str]:
    """The URLs to give pict-rs as PICTRS__MEDIA__EXTERNAL_VALIDATION."""
    base = local_base_url(config)
    urls = [f"{base}/pictrs/validate/{t}" for t in config.pictrs.tokens]
    urls.append(f"{base}/pictrs/validate/IPADDR")
    return urls


def cmd_init(args: argparse.Namespace) -> int:
    config = init_data_dir(args.dir, args.url, new_identity=args.force)
    print(f"data directory: {config.data_dir.resolve()}")
    print(f"  config:   {config.data_dir / CONFIG_FILE}")
    print(f"  keys:     {config.rsa_key_path}, {config.ed25519_key_path} (mode 0600)")
    print(f"  database: {config.database_path}")
    host, port = url_port(config.node.url)
    print(f"node.url: {config.node.url} (the actor is {config.actor_id}); serve listens on "
          f"{config.listen.host}:{config.listen.port} (listen.host / listen.port in node.yaml)")
    if port is not None and not is_loopback_host(host) and port != config.listen.port:
        print(f"  the port in node.url ({port}) is the public one, your reverse proxy's; it forwards to "
              f"listen.port {config.listen.port}, which pict-rs uses below")
    print("Point pict-rs at the node (either URL; the token one works from another host):")
    for u in pictrs_urls(config):
        print(f"  PICTRS__MEDIA__EXTERNAL_VALIDATION={u}")
    print(f"  PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT={int(config.pictrs.budget_seconds) + 5}")
    return 0


def resolve_config(path: str | Path | None) -> NodeConfig:
    """The config every command runs with: the given node.yaml, or ./data/node.yaml, created with init's
    defaults (keys, database, a pict-rs token) when it does not exist yet. The node's keys are checked here
    too (created for a new data directory only), so no command starts under a new identity by accident or
    stumbles on a broken key file later."""
    if path is None and not (Path("data") / CONFIG_FILE).exists():
        return init_data_dir("data")
    config = load_config(path if path is not None else Path("data") / CONFIG_FILE)
    open_identity(config)
    return config
