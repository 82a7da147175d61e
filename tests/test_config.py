"""node.yaml / peers.yaml: defaults, one-line errors naming the key, the documented template, init."""
from __future__ import annotations

import stat
import subprocess
import sys

import pytest
import yaml

from node.config import ConfigError, NodeConfig, default_template, load_config, load_peers, parse_config, parse_peers
from node.datadir import init_data_dir
from node.policy import policy_config_of

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_template_documents_every_key_and_parses_back_to_defaults():
    text = default_template()
    assert parse_config(yaml.safe_load(text), "d") == NodeConfig()
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every key line is preceded by a comment line
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), line


@pytest.mark.parametrize("raw, message", [
    ({"policy": {"thresholds": {"csam": "high"}}},
     'node.yaml: policy.thresholds.csam: must be a number in [0, 1], got "high"'),
    ({"policy": {"thresholds": {"nsfw": 1.5}}}, "node.yaml: policy.thresholds.nsfw: must be a number in [0, 1], got 1.5"),
    ({"listen": {"port": 0}}, "node.yaml: listen.port: must be an integer in [1, 65535], got 0"),
    ({"listen": {"prot": 1}}, "node.yaml: listen.prot: unknown key"),
    ({"pictrs": {"on_unavailable": "maybe"}}, "node.yaml: pictrs.on_unavailable: must be one of reject, accept"),
    ({"pictrs": {"trust_forwarded_for": "yes"}}, "node.yaml: pictrs.trust_forwarded_for: must be true or false"),
    ({"pictrs": {"allowed_ips": ["localhost"]}}, "node.yaml: pictrs.allowed_ips:"),
    ({"pictrs": {"tokens": ["short"]}}, "node.yaml: pictrs.tokens: every token must be at least 16"),
    ({"node": {"url": "node.example"}}, "node.yaml: node.url: must be an http(s) URL"),
    ({"media": 3}, "node.yaml: media: must be a mapping"),
    ([1, 2], "node.yaml: top level: must be a mapping"),
])
def test_wrong_values_give_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "d")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_partial_config_keeps_other_defaults(tmp_path):
    (tmp_path / "node.yaml").write_text("policy:\n  thresholds:\n    nsfw: 0.7\nlisten: {port: 9000}\n")
    c = load_config(tmp_path / "node.yaml")
    assert c.policy.thresholds.nsfw == 0.7 and c.policy.thresholds.csam == 0.5
    assert c.listen.port == 9000 and c.listen.host == "127.0.0.1"
    assert c.database_path == tmp_path / "verdict-node.db"


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "node.yaml").write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"^node.yaml: not valid YAML \(line 2, column 1\)"):
        load_config(tmp_path / "node.yaml")


@pytest.mark.parametrize("name", ["node.yaml", "peers.yaml"])
def test_a_yaml_file_that_is_not_utf8_or_not_yaml_is_one_line(tmp_path, name):
    load = load_config if name == "node.yaml" else load_peers
    (tmp_path / name).write_bytes(b"node:\n  url: caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match=rf"^{name}: not UTF-8 text \(byte 16\)$"):
        load(tmp_path / name)
    (tmp_path / name).write_text("peers: [\n")
    with pytest.raises(ConfigError, match=rf"^{name}: not valid YAML \(line 2, column 1\)"):
        load(tmp_path / name)


def test_peers_example_parses_and_maps_onto_policy(tmp_path):
    peers = load_peers(ROOT / "peers.example.yaml")
    assert peers and {p.trust for p in peers} == {"full", "block-only", "observe"}
    policy = policy_config_of(NodeConfig(), peers)
    for p in peers:
        assert policy.peers[p.actor].level == p.trust
    with_override = [p for p in peers if p.thresholds is not None][0]
    assert policy.peers[with_override.actor].thresholds is not None


@pytest.mark.parametrize("raw, message", [
    ({"peers": [{"actor": "https://a.example/actor", "trust": "total"}]}, "peers.yaml: peers[0].trust: must be one of"),
    ({"peers": [{"trust": "full"}]}, "peers.yaml: peers[0].actor: is required"),
    ({"peers": [{"actor": "https://a.example/actor", "thresholds": {"csam": 2}}]},
     "peers.yaml: peers[0].thresholds.csam: must be a number in [0, 1]"),
    ({"peers": [{"actor": "https://a.example/actor"}, {"actor": "https://a.example/actor"}]},
     "peers.yaml: peers[1].actor: listed twice"),
    ({"followers": []}, "peers.yaml: top level must be a mapping with one key, peers"),
    # A pin that is not a fingerprint would pin nothing: refused with the form it must have.
    ({"peers": [{"actor": "https://a.example/actor", "key_fingerprint": "abc123"}]},
     "peers.yaml: peers[0].key_fingerprint: must be sha256: and 64 lowercase hex digits"),
    ({"peers": [{"actor": "https://a.example/actor", "key_fingerprint": "SHA256:" + "A" * 64}]},
     "peers.yaml: peers[0].key_fingerprint: must be sha256: and 64 lowercase hex digits"),
    ({"peers": [{"actor": "https://a.example/actor", "key_fingerprint": "sha256:" + "a" * 63}]},
     "peers.yaml: peers[0].key_fingerprint: must be sha256: and 64 lowercase hex digits"),
    ({"peers": [{"actor": "https://a.example/actor", "rsa_fingerprint": "sha256:" + "a" * 64}]},
     "peers.yaml: peers[0].rsa_fingerprint: needs key_fingerprint"),
])
def test_wrong_peers(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_peers(raw)
    assert str(e.value).startswith(message)


def test_init_writes_config_keys_0600_and_database(tmp_path):
    data = tmp_path / "data"
    config = init_data_dir(data, "https://node.example/")
    assert config.node.url == "https://node.example"
    assert len(config.pictrs.tokens) == 1 and len(config.pictrs.tokens[0]) >= 16
    for key in (config.rsa_key_path, config.ed25519_key_path):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "node.yaml").stat().st_mode) == 0o600
    assert config.database_path.exists()
    before = config.ed25519_key_path.read_bytes()
    again = init_data_dir(data, "https://other.example")  # re-running keeps config and keys
    assert again.node.url == "https://node.example" and config.ed25519_key_path.read_bytes() == before


def _cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_cli_init_prints_pictrs_urls_and_wrong_config_exits_2(tmp_path):
    r = _cli("init", "--dir", str(tmp_path / "d"), "--url", "https://node.example", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    token = load_config(tmp_path / "d" / "node.yaml").pictrs.tokens[0]
    assert f"PICTRS__MEDIA__EXTERNAL_VALIDATION=http://127.0.0.1:8080/pictrs/validate/{token}" in r.stdout
    (tmp_path / "d" / "node.yaml").write_text("policy:\n  thresholds:\n    csam: high\n")
    r = _cli("serve", "--config", str(tmp_path / "d" / "node.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        'error: node.yaml: policy.thresholds.csam: must be a number in [0, 1], got "high"']


def _one_error_line(result) -> str:
    """The single line a refused command printed (exit code 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_missing_keys_next_to_a_database_stop_every_command_until_init_force(tmp_path):
    """Deleting (or failing to restore) keys/ must not quietly give an established node a new identity."""
    import shutil

    from protocol.keys import key_fingerprint, load_private_key

    data = tmp_path / "d"
    config = init_data_dir(data, "https://node.example")
    yaml_path = str(data / "node.yaml")
    old_pin = key_fingerprint(load_private_key(config.ed25519_key_path))
    (data / "node.yaml").write_text((data / "node.yaml").read_text().replace("name: verdict-node", "name: kept"))
    node_yaml = (data / "node.yaml").read_bytes()
    shutil.rmtree(data / "keys")

    for command in (["peers", "show-key", "--config", yaml_path], ["serve", "--config", yaml_path],
                    ["scan", str(tmp_path), "--config", yaml_path], ["init", "--dir", str(data)]):
        line = _one_error_line(_cli(*command, cwd=tmp_path, timeout=60))
        assert f"{data / 'keys'}: the keys directory is missing" in line, (command, line)
        assert "peers that pinned this node's key would refuse it" in line
        assert f"verdict-node init --dir {data} --force" in line
        assert not (data / "keys").exists(), command  # nothing was created behind the admin's back

    r = _cli("init", "--dir", str(data), "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "new identity" in r.stderr and "peers show-key" in r.stderr
    assert (data / "node.yaml").read_bytes() == node_yaml  # --force keeps the admin's settings and token
    assert key_fingerprint(load_private_key(config.ed25519_key_path)) != old_pin
    r = _cli("peers", "show-key", "--config", yaml_path, cwd=tmp_path)
    assert r.returncode == 0 and "key_fingerprint: sha256:" in r.stdout, r.stderr

    config.ed25519_key_path.unlink()  # one key lost is a lost identity too
    line = _one_error_line(_cli("peers", "show-key", "--config", yaml_path, cwd=tmp_path))
    assert f"{config.ed25519_key_path}: missing, but the database {config.database_path} exists" in line


def test_a_key_file_that_does_not_parse_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "d"
    config = init_data_dir(data)
    yaml_path = str(data / "node.yaml")
    rsa_pem = config.rsa_key_path.read_bytes()
    for content, problem in ((b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "not a PEM private key (RSA or Ed25519)"),
                             (b"", "not a PEM private key (RSA or Ed25519)"),
                             (config.ed25519_key_path.read_bytes(), "holds an Ed25519 key, expected RSA")):
        config.rsa_key_path.write_bytes(content)
        for command in (["serve", "--config", yaml_path], ["peers", "show-key", "--config", yaml_path]):
            line = _one_error_line(_cli(*command, cwd=tmp_path, timeout=60))
            assert line.startswith(f"error: {config.rsa_key_path}: {problem}; restore it from a backup"), line
        assert config.rsa_key_path.read_bytes() == content  # a broken key is evidence: never overwritten
    config.rsa_key_path.write_bytes(rsa_pem)
    assert _cli("peers", "show-key", "--config", yaml_path, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n"])
def test_an_empty_node_yaml_is_an_error_not_all_defaults(tmp_path, text):
    (tmp_path / "node.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"^node.yaml: empty: ") as e:
        load_config(tmp_path / "node.yaml")
    assert "\n" not in str(e.value)
    line = _one_error_line(_cli("serve", "--config", str(tmp_path / "node.yaml"), cwd=tmp_path, timeout=60))
    assert line.startswith("error: node.yaml: empty: ")
    (tmp_path / "node.yaml").write_text("{}\n")  # all defaults, said explicitly
    assert load_config(tmp_path / "node.yaml") == NodeConfig()


def test_init_url_with_a_loopback_port_is_where_serve_listens(tmp_path):
    """`init --url http://127.0.0.1:8081` used to keep listen.port 8080: the node gave peers a URL it did not
    answer at. A loopback URL's port is the listen port; a public URL's port is the proxy's, and init says so."""
    r = _cli("init", "--dir", str(tmp_path / "lo"), "--url", "http://127.0.0.1:8081", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = load_config(tmp_path / "lo" / "node.yaml")
    assert (config.node.url, config.listen.port) == ("http://127.0.0.1:8081", 8081)
    assert f"EXTERNAL_VALIDATION=http://127.0.0.1:8081/pictrs/validate/{config.pictrs.tokens[0]}" in r.stdout
    assert load_config(init_data_dir(tmp_path / "name", "http://localhost:9000").data_dir / "node.yaml") \
        .listen.port == 9000
    r = _cli("init", "--dir", str(tmp_path / "pub"), "--url", "https://a.example:8443", cwd=tmp_path)
    config = load_config(tmp_path / "pub" / "node.yaml")
    assert (config.node.url, config.listen.port) == ("https://a.example:8443", 8080)
    assert "the port in node.url (8443) is the public one" in r.stdout
    assert "EXTERNAL_VALIDATION=http://127.0.0.1:8080/pictrs/validate/" in r.stdout


def test_a_model_none_node_says_it_classifies_nothing_not_until_it_loads(tmp_path, caplog):
    import logging

    from node.runtime import Node

    config = init_data_dir(tmp_path / "none")
    config.classifier.model = "none"
    with caplog.at_level(logging.INFO, logger="verdict_node"):
        node = Node.open(config)
    node.store.close()
    node.executor.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no classifier")]
    assert len(lines) == 1 and "classifies nothing itself" in lines[0] and "until it loads" not in lines[0]
