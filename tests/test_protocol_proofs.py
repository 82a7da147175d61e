"""Keys, eddsa-jcs-2022 proofs and signed verdicts: W3C vectors, round trips, tamper detection."""
from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import keys, proofs
from protocol.canonical import canonicalize
from protocol.errors import ProofError, ProtocolError
from protocol.verdict import (
    CATEGORIES, LABELS, Fingerprint, ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp,
    verify_verdict,
)

VECTORS = Path(__file__).parent / "vectors" / "eddsa-jcs-2022"
ACTOR = "https://verdicts.example/actor"
VM = ACTOR + "#ed25519-key"
ED_KEY = keys.generate_ed25519()


def _vector_keys():
    pair = json.loads((VECTORS / "keyPair.json").read_text())
    return (keys.ed25519_private_from_multikey(pair["privateKeyMultibase"]),
            keys.ed25519_from_multikey(pair["publicKeyMultibase"]))


@pytest.mark.parametrize("name", ["signedJCS-proof-context.json", "signedJCS-no-proof-context.json"])
def test_w3c_eddsa_jcs_2022_vector_verifies_and_is_reproduced(name):
    private, public = _vector_keys()
    signed = json.loads((VECTORS / name).read_text())
    seen = []
    proofs.verify(signed, lambda vm: seen.append(vm) or public)
    assert seen == [signed["proof"]["verificationMethod"]]
    if "@context" in signed["proof"]:
        # Our signer puts the document's @context in the proof, as the current spec example does, and
        # Ed25519 is deterministic: the published proofValue must come out byte for byte.
        unsigned = {k: v for k, v in signed.items() if k != "proof"}
        ours = proofs.sign(unsigned, private, signed["proof"]["verificationMethod"],
                           created=signed["proof"]["created"])
        assert ours == signed


def test_vector_multikey_matches_private_key():
    private, public = _vector_keys()
    assert keys.ed25519_multikey(private) == keys.ed25519_multikey(public) == \
        "z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"


def _tamper_paths(doc, prefix=()):
    """Every leaf of a JSON value, as a path."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _tamper_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _tamper_paths(value, prefix + (i,))
    else:
        yield prefix


def _set(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _tweak(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 0.5 if value < 0.5 else value - 0.25
    if isinstance(value, str):
        return value[:-1] + ("A" if not value.endswith("A") else "B")
    return "x"


def test_every_signed_field_of_the_vector_is_covered():
    _, public = _vector_keys()
    signed = json.loads((VECTORS / "signedJCS-proof-context.json").read_text())
    for path in _tamper_paths(signed):
        if path == ("proof", "verificationMethod"):
            continue  # changing the key id changes which key is resolved: covered below
        bad = copy.deepcopy(signed)
        _set(bad, path, _tweak(_get(signed, path)))
        with pytest.raises(ProofError):
            proofs.verify(bad, lambda vm: public)
    bad = copy.deepcopy(signed)
    bad["proof"]["verificationMethod"] += "x"
    with pytest.raises(ProofError, match="signature does not match"):
        proofs.verify(bad, lambda vm: public)
    bad = copy.deepcopy(signed)
    bad["extra"] = 1
    with pytest.raises(ProofError):
        proofs.verify(bad, lambda vm: public)


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def test_signature_field_added_after_proof_is_ignored():
    doc = proofs.sign({"@context": "https://www.w3.org/ns/activitystreams", "id": "https://a/1", "type": "Note"},
                      ED_KEY, VM)
    doc["signature"] = {"type": "RsaSignature2017", "signatureValue": "abc"}
    proofs.verify(doc, lambda vm: ED_KEY.public_key())


def test_created_uses_z_suffix_and_wrong_key_fails():
    doc = proofs.sign({"a": 1}, ED_KEY, VM)
    assert doc["proof"]["created"].endswith("Z") and "+" not in doc["proof"]["created"]
    assert len(doc["proof"]["created"]) == 20
    with pytest.raises(ProofError, match="signature does not match"):
        proofs.verify(doc, lambda vm: keys.generate_ed25519().public_key())


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("proof"), "no proof"),
    (lambda d: d["proof"].update(cryptosuite="eddsa-rdfc-2022"), "cryptosuite"),
    (lambda d: d["proof"].update(type="Ed25519Signature2020"), "type"),
    (lambda d: d["proof"].update(proofPurpose="authentication"), "proofPurpose"),
    (lambda d: d["proof"].update(proofValue="u" + d["proof"]["proofValue"][1:]), "proofValue"),
    (lambda d: d["proof"].update(proofValue="z0OIl"), "base58"),
    (lambda d: d["proof"].update(proofValue="z" + keys.base58btc_encode(b"x" * 63)), "64 bytes"),
    (lambda d: d["proof"].update({"@context": ["https://other.example"]}), "@context"),
    (lambda d: d["proof"].update(created="yesterday"), "dateTime"),
    (lambda d: d.update(proof=[d["proof"], d["proof"]]), "proof sets"),
])
def test_malformed_proofs_give_reasons(mutate, reason):
    doc = proofs.sign({"@context": ["https://www.w3.org/ns/activitystreams"], "n": 1}, ED_KEY, VM)
    mutate(doc)
    with pytest.raises(ProofError, match=reason):
        proofs.verify(doc, lambda vm: ED_KEY.public_key())


def test_resolver_must_return_ed25519_key():
    doc = proofs.sign({"n": 1}, ED_KEY, VM)
    with pytest.raises(ProofError, match="Ed25519"):
        proofs.verify(doc, lambda vm: keys.generate_rsa().public_key())


# -- keys ----------------------------------------------------------------------------------------------

def test_save_and_load_keys_are_private_and_round_trip(tmp_path):
    old_umask = os.umask(0)  # the most permissive umask: the file must still be 0600
    try:
        for key in (keys.generate_rsa(), keys.generate_ed25519()):
            path = tmp_path / f"{type(key).__name__}.pem"
            keys.save_private_key(key, path)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
            loaded = keys.load_private_key(path)
            assert keys.key_fingerprint(loaded) == keys.key_fingerprint(key)
        # overwrite keeps the mode and leaves no temporary file behind
        keys.save_private_key(keys.generate_ed25519(), tmp_path / "Ed25519PrivateKey.pem")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["Ed25519PrivateKey.pem", "RSAPrivateKey.pem"]
    finally:
        os.umask(old_umask)


def test_key_file_is_never_world_readable_while_written(tmp_path, monkeypatch):
    """Catch the file at its creation (os.open) and look at its mode before any byte is written."""
    seen = []
    real_open = os.open

    def spying_open(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spying_open)
    old_umask = os.umask(0)
    try:
        keys.save_private_key(keys.generate_ed25519(), tmp_path / "k.pem")
    finally:
        os.umask(old_umask)
    assert seen and all(mode & 0o077 == 0 for mode in seen)


def test_load_garbage_key_is_protocol_error(tmp_path):
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ProtocolError):
        keys.load_private_key(path)


def test_fingerprint_same_from_private_public_and_pem():
    rsa_key = keys.generate_rsa()
    forms = [rsa_key, rsa_key.public_key(), keys.rsa_public_pem(rsa_key),
             keys.private_key_pem(rsa_key), keys.public_key_from_pem(keys.rsa_public_pem(rsa_key))]
    prints = {keys.key_fingerprint(f) for f in forms}
    assert len(prints) == 1 and next(iter(prints)).startswith("sha256:")
    ed = keys.generate_ed25519()
    assert keys.key_fingerprint(ed) == keys.key_fingerprint(keys.ed25519_from_multikey(keys.ed25519_multikey(ed)))
    assert keys.key_fingerprint(ed) != keys.key_fingerprint(rsa_key)


def test_multikey_round_trip_and_refusals():
    ed = keys.generate_ed25519()
    mk = keys.ed25519_multikey(ed.public_key())
    assert mk.startswith("z6Mk")
    assert keys.key_fingerprint(keys.ed25519_from_multikey(mk)) == keys.key_fingerprint(ed)
    for bad in ("u" + mk[1:], mk[:-2], "z" + keys.base58btc_encode(b"\x12\x00" + b"\x01" * 32), "z0"):
        with pytest.raises(ProtocolError):
            keys.ed25519_from_multikey(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=80))
def test_base58_round_trip(data):
    assert keys.base58btc_decode(keys.base58btc_encode(data)) == data


def test_small_rsa_public_keys_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ProtocolError, match="too small"):
        keys.public_key_from_pem(keys.rsa_public_pem(small))
    assert keys.public_key_from_pem(keys.rsa_public_pem(small), min_rsa_bits=1024).key_size == 1024


# -- verdicts ------------------------------------------------------------------------------------------

def make_verdict(**changes) -> Verdict:
    fields = dict(
        id=new_verdict_id(ACTOR), issuer=ACTOR,
        fingerprint=Fingerprint("ab" * 32, "cd" * 32, "0123456789abcdef", "pil-rgb-v1", "ef" * 32),
        scores={"csam": 0.01, "nsfw": 0.73, "underage": 0.2}, label="nsfw",
        model=ModelInfo("ViT-L-14", "openai", "horde-safety-2024.1"), published=utc_timestamp(),
    )
    fields.update(changes)
    return Verdict(**fields)


def test_verdict_sign_verify_round_trip():
    verdict = make_verdict(supersedes=ACTOR.rsplit("/", 1)[0] + "/verdicts/old")
    signed = sign_verdict(verdict, ED_KEY, VM)
    assert signed["type"] == "Verdict" and signed["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    back = verify_verdict(json.loads(json.dumps(signed)), lambda vm: ED_KEY.public_key())
    assert back == verdict and back.proof["verificationMethod"] == VM
    # a parsed signed verdict re-emits the identical signed document
    assert canonicalize(back.to_as2()) == canonicalize(signed)


def test_verdict_tampering_any_leaf_fails():
    signed = sign_verdict(make_verdict(), ED_KEY, VM)
    for path in _tamper_paths(signed):
        bad = copy.deepcopy(signed)
        _set(bad, path, _tweak(_get(signed, path)))
        with pytest.raises(ProtocolError):
            verify_verdict(bad, lambda vm: ED_KEY.public_key())


def test_verdict_issuer_must_own_the_key():
    verdict = make_verdict()
    with pytest.raises(ProtocolError, match="verificationMethod"):
        sign_verdict(verdict, ED_KEY, "https://evil.example/actor#ed25519-key")
    other = "https://evil.example/actor"
    signed = proofs.sign(verdict.to_as2(), ED_KEY, other + "#key")
    called = []
    with pytest.raises(ProofError, match="not a key of the issuer"):
        verify_verdict(signed, lambda vm: called.append(vm) or ED_KEY.public_key())
    assert called == []  # refused before any key lookup
    # a prefix trick: https://verdicts.example/actorX#k is not a key of .../actor
    signed = proofs.sign(verdict.to_as2(), ED_KEY, ACTOR + "X#k")
    with pytest.raises(ProofError):
        verify_verdict(signed, lambda vm: ED_KEY.public_key())


def test_unsigned_verdict_refused():
    with pytest.raises(ProofError, match="not signed"):
        verify_verdict(make_verdict().to_as2(), lambda vm: ED_KEY.public_key())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["scores"].update(csam=1.5), "scores.csam"),
    (lambda d: d["scores"].update(csam=-0.1), "scores.csam"),
    (lambda d: d["scores"].update(csam=float("nan")), "scores.csam"),
    (lambda d: d["scores"].update(csam=True), "scores.csam"),
    (lambda d: d["scores"].update(csam="0.1"), "scores.csam"),
    (lambda d: d["scores"].update(violence=0.1), "scores"),
    (lambda d: d.update(scores={}), "scores"),
    (lambda d: d.update(scores=[0.1]), "scores"),
    (lambda d: d.update(label="maybe"), "label"),
    (lambda d: d.pop("label"), "label"),
    (lambda d: d.pop("published"), "published"),
    (lambda d: d.update(published="2026-01-01T00:00:00+00:00"), "published"),
    (lambda d: d.update(type="Note"), "type"),
    (lambda d: d.update(id="ftp://x/y"), "id"),
    (lambda d: d.update(id="https://other.example/verdicts/1"), "id"),
    (lambda d: d.update(attributedTo=5), "attributedTo"),
    (lambda d: d.update(supersedes="https://other.example/verdicts/1"), "supersedes"),
    (lambda d: d["fingerprint"].update(sha256="ab" * 31), "fingerprint.sha256"),
    (lambda d: d["fingerprint"].update(pixelSha256="AB" * 32), "fingerprint.pixelSha256"),
    (lambda d: d["fingerprint"].update(phash64="0123456789abcdeg"), "fingerprint.phash64"),
    (lambda d: d["fingerprint"].update(pdq256="00"), "fingerprint.pdq256"),
    (lambda d: d["fingerprint"].pop("preprocessing"), "fingerprint.preprocessing"),
    (lambda d: d["fingerprint"].update(preprocessing="x" * 129), "fingerprint.preprocessing"),
    (lambda d: d["model"].update(name="a\nb"), "model.name"),
    (lambda d: d["model"].update(version=""), "model.version"),
    (lambda d: d.update(model="ViT"), "model"),
    (lambda d: d.update(id="https://verdicts.example/" + "a" * 3000), "id"),
])
def test_verdict_parse_errors_name_the_field(mutate, field):
    doc = make_verdict().to_as2()
    mutate(doc)
    with pytest.raises(ProtocolError) as info:
        Verdict.from_as2(doc)
    assert info.value.field == field


def test_pdq_is_optional():
    verdict = make_verdict(fingerprint=Fingerprint("ab" * 32, "cd" * 32, "0123456789abcdef", "p", None))
    doc = verdict.to_as2()
    assert "pdq256" not in doc["fingerprint"]
    assert Verdict.from_as2(doc) == verdict


def test_md5_is_optional_signed_and_strict():
    """md5 joined the fingerprint later: a verdict without it (every verdict signed before) still parses and
    verifies as it was signed; one with it covers it by the proof and refuses a malformed value."""
    old = sign_verdict(make_verdict(), ED_KEY, VM)
    assert "md5" not in old["fingerprint"]
    assert verify_verdict(json.loads(json.dumps(old)), lambda vm: ED_KEY.public_key()).fingerprint.md5 is None
    fp = Fingerprint("ab" * 32, "cd" * 32, "0123456789abcdef", "pil-rgb-v1", "ef" * 32, md5="12" * 16)
    signed = sign_verdict(make_verdict(fingerprint=fp), ED_KEY, VM)
    assert signed["fingerprint"]["md5"] == "12" * 16
    assert verify_verdict(copy.deepcopy(signed), lambda vm: ED_KEY.public_key()).fingerprint == fp
    forged = copy.deepcopy(signed)
    forged["fingerprint"]["md5"] = "34" * 16
    with pytest.raises(ProofError):
        verify_verdict(forged, lambda vm: ED_KEY.public_key())
    for bad in ("12" * 15, "AB" * 16, 5):
        doc = make_verdict().to_as2()
        doc["fingerprint"]["md5"] = bad
        with pytest.raises(ProtocolError) as info:
            Verdict.from_as2(doc)
        assert info.value.field == "fingerprint.md5"


def test_new_ids_are_unique_and_time_ordered():
    ids = [new_verdict_id(ACTOR) for _ in range(50)]
    assert len(set(ids)) == 50 and all(i.startswith("https://verdicts.example/verdicts/") for i in ids)
    assert all(i.split("/")[-1][14] == "7" for i in ids)


_hex = lambda n: st.text("0123456789abcdef", min_size=n, max_size=n)  # noqa: E731
verdicts = st.builds(
    lambda fp, scores, label, model, sup: make_verdict(
        fingerprint=fp, scores=scores, label=label, model=model,
        supersedes=("https://verdicts.example/verdicts/" + sup) if sup else None),
    st.builds(Fingerprint, _hex(64), _hex(64), _hex(16),
              st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF).filter(str.isprintable),
                      min_size=1, max_size=20),
              st.one_of(st.none(), _hex(64))),
    st.dictionaries(st.sampled_from(CATEGORIES), st.floats(0, 1), min_size=1),
    st.sampled_from(LABELS),
    st.builds(ModelInfo, st.text("abcXYZ-._0189", min_size=1, max_size=12),
              st.text("abc19.", min_size=1, max_size=8), st.text("r-1.", min_size=1, max_size=8)),
    st.one_of(st.none(), st.text("abcdef0123", min_size=1, max_size=12)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verdicts)
def test_property_sign_verify_round_trip(verdict):
    signed = sign_verdict(verdict, ED_KEY, VM)
    assert verify_verdict(json.loads(json.dumps(signed)), lambda vm: ED_KEY.public_key()) == verdict


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None)
@given(json_values, st.data())
def test_property_from_as2_raises_only_protocol_error(value, data):
    try:
        Verdict.from_as2(value)
    except ProtocolError:
        pass
    # also arbitrary values planted into an otherwise valid verdict
    doc = make_verdict().to_as2()
    key = data.draw(st.sampled_from(["id", "attributedTo", "fingerprint", "scores", "label", "model",
                                     "published", "supersedes", "type", "@context"]))
    doc[key] = value
    try:
        Verdict.from_as2(doc)
    except ProtocolError:
        pass


def test_to_as2_refuses_non_numbers_and_accepts_numpy_scalars():
    import numpy as np
    for bad in ("0.5", True, None):
        with pytest.raises(ProtocolError) as info:
            make_verdict(scores={"csam": bad}).to_as2()
        assert info.value.field == "scores.csam"
    doc = make_verdict(scores={"csam": np.float32(0.25), "nsfw": np.float64(0.5)}).to_as2()
    assert doc["scores"] == {"csam": 0.25, "nsfw": 0.5} and type(doc["scores"]["csam"]) is float
