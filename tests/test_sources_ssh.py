"""SSHSource against a real OpenSSH sshd on loopback (tests/storage_servers.py)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from scanners.sources import NotRegularFile, SourceError, open_source
from scanners.sources.ssh import SSHSource
from tests.storage_servers import PASSPHRASE, assert_deleted, collect, make_tree, read_all, run, sshd_server  # noqa: F401


def ssh_source(server, root: Path, key: str = "ed25519", **options) -> SSHSource:
    options.setdefault("client_keys", [str(server.client_keys[key])])
    options.setdefault("host_key", server.host_public_key)
    return open_source(server.url(str(root)), **options)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    return root, make_tree(root)


def test_list_read_nested_and_skips(sshd_server, tree):
    root, files = tree
    src = ssh_source(sshd_server, root)

    async def go():
        async with src:
            items = await collect(src)
            datas = await asyncio.gather(*(src.read(i) for i in items), return_exceptions=True)  # parallel, bounded
            connections = set(sshd_server.connection_pids())
            return items, datas, connections
    before = set(sshd_server.connection_pids())
    items, datas, connections = run(go())
    assert len(connections - before) == 1  # one SSH connection for the whole sweep, not one per file
    assert sorted(i.key for i in items) == sorted(files)
    assert [i.key for i in items] == [i.key for i in run(collect_local(root))]
    # A symlink is listed (its target is inside the root) but never followed: the target is read under
    # its own name, and reading the link says what it is.
    read = dict(zip((i.key for i in items), datas))
    assert isinstance(read.pop("inside-link"), NotRegularFile)
    assert all(d == files[k] for k, d in read.items())
    assert any("escape-link" in e for e in src.listing_errors)
    assert src.reconnects == 0


async def collect_local(root):
    from scanners.sources.local import LocalSource
    return await collect(LocalSource(root))


@pytest.mark.parametrize("key", ["ecdsa", "rsa"])
def test_other_key_types(sshd_server, tree, key):
    root, files = tree
    src = ssh_source(sshd_server, root, key=key)

    async def go():
        async with src:
            return await src.read(next(i for i in await collect(src) if i.key == "top-level-file"))
    assert run(go()) == b"top"


def test_encrypted_key_passphrase_from_env(sshd_server, tree, monkeypatch):
    root, _ = tree
    monkeypatch.delenv("VERDICT_SSH_PASSPHRASE", raising=False)
    with pytest.raises(SourceError, match="VERDICT_SSH_PASSPHRASE"):
        ssh_source(sshd_server, root, key="ed25519-encrypted")
    monkeypatch.setenv("VERDICT_SSH_PASSPHRASE", PASSPHRASE)
    src = ssh_source(sshd_server, root, key="ed25519-encrypted")

    async def go():
        async with src:
            return len(await collect(src))
    assert run(go()) == 14


def test_host_key_is_checked(sshd_server, tree, tmp_path):
    root, _ = tree
    import asyncssh
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    src = ssh_source(sshd_server, root, host_key=other)
    with pytest.raises(SourceError, match="host key"):
        run(collect(src))
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    src = ssh_source(sshd_server, root, host_key=None, known_hosts=str(empty_known_hosts))
    with pytest.raises(SourceError, match="host key"):
        run(collect(src))
    good = tmp_path / "known_hosts_good"
    good.write_text(f"[127.0.0.1]:{sshd_server.port} {sshd_server.host_public_key}\n")
    src = ssh_source(sshd_server, root, host_key=None, known_hosts=str(good))

    async def go():
        async with src:
            return len(await collect(src))
    assert run(go()) == 14


def test_reconnects_after_connection_drop(sshd_server, tree):
    root, files = tree
    src = ssh_source(sshd_server, root, backoff=0.05)

    async def go():
        seen, datas = [], {}
        async with src:
            async for item in src.list():
                seen.append(item.key)
                if len(seen) in (3, 9):
                    assert sshd_server.drop_connections() >= 1
                    await asyncio.sleep(0.1)
                try:
                    datas[item.key] = await src.read(item)
                except NotRegularFile:  # the symlink: listed, never followed
                    datas[item.key] = None
        return seen, datas
    seen, datas = run(go())
    assert sorted(seen) == sorted(files)
    assert datas == {**files, "inside-link": None}
    assert src.reconnects >= 2


def test_quarantine_release_delete_remote(sshd_server, tree, tmp_path):
    root, files = tree
    qdir = tmp_path / "remote-q"
    src = ssh_source(sshd_server, root, quarantine_dir=str(qdir))
    key = "002/000/0008c-uuid"
    os.utime(root / key, (1_650_000_000, 1_650_000_000))

    async def go():
        async with src:
            items = {i.key: i for i in await collect(src)}
            location = await src.quarantine(items[key], {"verdict": "urn:x", "reason": "csam"})
            assert not (root / key).exists()
            assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
            assert Path(location).read_bytes() == files[key]
            sidecar = json.loads(Path(location + ".json").read_text())
            assert sidecar["reason"] == "csam" and sidecar["original"]["key"] == key
            assert sidecar["original"]["mtime"] == 1_650_000_000
            assert sidecar["sha256"] == hashlib.sha256(files[key]).hexdigest()
            (root / key).write_bytes(b"different")
            with pytest.raises(SourceError, match="not overwriting"):
                await src.release(location)
            (root / key).unlink()
            restored = await src.release(location)
            assert restored.key == key
            assert (root / key).read_bytes() == files[key]
            assert os.stat(root / key).st_mtime == 1_650_000_000
            assert not Path(location).exists()
            # The remote delete really deletes on the remote host (fedi-safety's bug used os.remove).
            victim = items["000/000/0000a-uuid"]
            await assert_deleted(src, victim)
            assert not (root / victim.key).exists()
    run(go())


def test_per_item_errors_do_not_stop(sshd_server, tree):
    root, files = tree
    src = ssh_source(sshd_server, root, max_bytes=105)

    async def go():
        async with src:
            return await read_all(src)
    ok, errors = run(go())
    links = [e for e in errors if isinstance(e, NotRegularFile)]
    assert [e.key for e in links] == ["inside-link"]  # listed, never followed
    assert ok + len(errors) == len(files) and errors and all("too large" in e.reason for e in errors if e not in links)


def test_unreachable_host_gives_clear_error(sshd_server, tree):
    from tests.storage_servers import free_port
    root, _ = tree
    src = open_source(f"ssh://root@127.0.0.1:{free_port()}{root}", host_key=sshd_server.host_public_key,
                      client_keys=[str(sshd_server.client_keys["ed25519"])], retries=1, backoff=0.01)
    with pytest.raises(SourceError, match="failed after 1 reconnects"):
        run(collect(src))


def test_key_from_ssh_agent(sshd_server, tree, tmp_path, monkeypatch):
    """No key file and no passphrase configured: the key comes from a running ssh-agent."""
    import subprocess
    import time
    root, _ = tree
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(sshd_server.client_keys["rsa"])], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh default keys to fall back on
        src = open_source(sshd_server.url(str(root)), host_key=sshd_server.host_public_key)

        async def go():
            async with src:
                return len(await collect(src))
        assert run(go()) == 14
    finally:
        agent.terminate()
        agent.wait(5)


def test_host_without_sftp_fails_clearly_and_leaves_no_connection(tmp_path, tree):
    """A connection that cannot start SFTP is closed before the next attempt: retries must not pile up
    open SSH sessions on the server."""
    from tests.storage_servers import start_sshd

    root, _ = tree
    server = start_sshd(tmp_path / "sshd-no-sftp", sftp=False)
    try:
        src = ssh_source(server, root, retries=2, backoff=0.01)

        async def go():
            with pytest.raises(SourceError, match="failed after 2 reconnects"):
                await collect(src)
            for _ in range(100):  # sshd's per-connection process exits once the client has closed
                if not server.connection_pids():
                    return []
                await asyncio.sleep(0.05)
            return server.connection_pids()
        assert run(go()) == []
    finally:
        server.proc.terminate()
        server.proc.wait(5)
