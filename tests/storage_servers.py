"""Real storage servers on loopback for the source and sweep tests: OpenSSH's sshd with a private config,
moto's S3 server (plus a proxy that answers 500s on demand), and the pict-rs emulator.

Use the fixtures by importing them into a test module:
``from tests.storage_servers import sshd_server, s3_server, pictrs_server  # noqa: F401``.
All are session-scoped (starting sshd/moto costs ~0.5 s each) and tests isolate themselves by using
their own directory / bucket. Processes are stopped at the end of the session.
"""
from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncssh
import pytest

from tests.node_helpers import free_port, run  # noqa: F401 - re-exported to the source tests
from tests.pictrs_emulator import PictrsState, build_app

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PASSPHRASE = "correct horse battery staple"


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# --------------------------------------------------------------------------------------------------
# helpers shared by the source and sweep tests
async def collect(source, since=None, limit=None):
    """List a source into a list, optionally stopping early (an interrupted sweep)."""
    out = []
    async for item in source.list(since):
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


async def read_all(source) -> tuple[int, list]:
    """Read every listed item: (how many read, the ItemErrors). A per-item error must not stop the listing."""
    from scanners.sources import ItemError

    ok, errors = 0, []
    async for item in source.list():
        try:
            await source.read(item)
            ok += 1
        except ItemError as exc:
            errors.append(exc)
    return ok, errors


async def assert_deleted(source, victim) -> None:
    """After a delete the item reads as gone, and deleting it again says it is gone."""
    from scanners.sources import ItemGone

    await source.delete(victim)
    with pytest.raises(ItemGone):
        await source.read(victim)
    with pytest.raises(ItemGone):
        await source.delete(victim)


def make_tree(root: Path) -> dict[str, bytes]:
    """Nested dirs of extension-less files like pict-rs 0.5's files/ layout, plus things to skip."""
    files = {}
    for i in range(12):
        key = f"{i % 3:03d}/{i % 2:03d}/{i:04d}{'abcdef'[i % 6]}-uuid"
        files[key] = os.urandom(100 + i)
    files["top-level-file"] = b"top"
    for key, data in files.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / ".tmp-upload").write_bytes(b"partial")
    (root / "000" / ".hidden").write_bytes(b"x")
    outside = root.parent / "outside-secret"
    outside.write_bytes(b"secret")
    (root / "escape-link").symlink_to(outside)
    (root / "inside-link").symlink_to(root / "top-level-file")
    files["inside-link"] = b"top"
    return files


# --------------------------------------------------------------------------------------------------
# sshd
@dataclass
class SSHServer:
    host: str
    port: int
    username: str
    host_public_key: str          # "ssh-ed25519 AAAA..." to pass as the source's host_key
    client_keys: dict[str, Path]  # "ed25519", "ecdsa", "rsa", "ed25519-encrypted" -> private key path
    workdir: Path
    proc: subprocess.Popen = field(repr=False)

    def url(self, path: str) -> str:
        return f"ssh://{self.username}@{self.host}:{self.port}{path}"

    def connection_pids(self) -> list[int]:
        """Per-connection sshd processes (children of the listener)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), None)
            if ppid == str(self.proc.pid):
                pids.append(int(entry.name))
        return pids

    def drop_connections(self) -> int:
        """Kill every live SSH connection (as a network drop or sshd restart would); returns how many."""
        pids = self.connection_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


def _write_key(key: asyncssh.SSHKey, path: Path, passphrase: str | None = None) -> None:
    key.write_private_key(str(path), passphrase=passphrase)
    os.chmod(path, 0o600)


def start_sshd(workdir: Path, *, sftp: bool = True) -> SSHServer:
    if not os.path.exists(SSHD):
        raise RuntimeError("sshd not installed: run `make system-deps` (apt-get install openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    _write_key(host_key, workdir / "host_ed25519")
    clients = {
        "ed25519": asyncssh.generate_private_key("ssh-ed25519"),
        "ecdsa": asyncssh.generate_private_key("ecdsa-sha2-nistp256"),
        "rsa": asyncssh.generate_private_key("ssh-rsa", key_size=2048),
        "ed25519-encrypted": asyncssh.generate_private_key("ssh-ed25519"),
    }
    paths = {}
    for name, key in clients.items():
        paths[name] = workdir / f"client_{name}"
        _write_key(key, paths[name], PASSPHRASE if name.endswith("encrypted") else None)
    (workdir / "authorized_keys").write_text(
        "".join(k.export_public_key("openssh").decode() for k in clients.values()))
    port = free_port()
    (workdir / "sshd_config").write_text(f"""
Port {port}
ListenAddress 127.0.0.1
HostKey {workdir}/host_ed25519
AuthorizedKeysFile {workdir}/authorized_keys
PidFile {workdir}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
{"Subsystem sftp internal-sftp" if sftp else ""}
MaxSessions 64
MaxStartups 100
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    with open(workdir / "sshd.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(workdir / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_port(port)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"sshd did not start: {(workdir / 'sshd.log').read_text()}")
    import getpass
    return SSHServer("127.0.0.1", port, getpass.getuser(),
                     host_key.export_public_key("openssh").decode().strip(), paths, workdir, proc)


@pytest.fixture(scope="session")
def sshd_server():
    workdir = Path(tempfile.mkdtemp(prefix="verdict-sshd-"))
    server = start_sshd(workdir)
    yield server
    server.proc.terminate()
    try:
        server.proc.wait(5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    server.drop_connections()
    shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# S3 (moto) and a fault-injecting proxy in front of it
@dataclass
class S3Server:
    endpoint: str          # moto directly
    proxy_endpoint: str    # through FaultProxy
    proxy: "FaultProxy"
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def options(self, through_proxy: bool = False) -> dict:
        return {"endpoint": self.proxy_endpoint if through_proxy else self.endpoint,
                "access_key": self.access_key, "secret_key": self.secret_key, "region": self.region}


class FaultProxy:
    """A plain HTTP forwarder that answers the next ``fail`` requests with ``status`` (default 500) and
    forwards everything else to the target unchanged; counts what it failed and forwarded."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.fail = 0
        self.status = 500
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    failing = proxy.fail > 0
                    if failing:
                        proxy.fail -= 1
                        proxy.failed += 1
                    else:
                        proxy.forwarded += 1
                if failing:
                    payload = (b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code>"
                               b"<Message>injected</Message></Error>")
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self.fail, self.status, self.failed, self.forwarded = n, status, 0, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    wait_for_port(port)
    proxy = FaultProxy(port)
    yield S3Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy.port}", proxy)
    proxy.close()
    moto.stop()


# --------------------------------------------------------------------------------------------------
# pict-rs emulator
@dataclass
class PictrsServer:
    host: str
    port: int
    api_key: str
    state: PictrsState

    @property
    def url(self) -> str:
        return f"pictrs://{self.host}:{self.port}"

    def reset(self) -> None:
        self.state.hashes.clear()
        self.state.alias_to_hash.clear()
        self.state.fail_next = 0
        self.state.long_hex = False
        self.state.requests.clear()


@pytest.fixture(scope="session")
def pictrs_server():
    from aiohttp import web
    state = PictrsState(api_key="test-api-key")
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(build_app(state))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield PictrsServer("127.0.0.1", port, state.api_key, state)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
