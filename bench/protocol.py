"""Protocol throughput on one core: verdict proof verification / signing and HTTP signature
verification / signing.

Prints absolute rates and, because the machine is shared and noisy, each rate as a ratio to the bare
cryptographic primitive measured in the same process (Ed25519 verify of 64 bytes, RSA-2048 PKCS#1 v1.5
verify), so the overhead of our parsing and canonicalization is visible on its own.

    .venv/bin/python bench/protocol.py [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402

from protocol import httpsig, keys  # noqa: E402
from protocol.activities import ed25519_key_id, rsa_key_id  # noqa: E402
from protocol.verdict import (  # noqa: E402
    Fingerprint, ModelInfo, Verdict, new_verdict_id, sign_verdict, utc_timestamp, verify_verdict,
)

ACTOR = "https://verdicts.example.org/actor"


def rates(functions: dict[str, Callable[[], object]], seconds: float, rounds: int = 15) -> dict[str, float]:
    """Calls per second of each function. The functions take turns in short slices, round after round,
    and each gets the median of its slices: neighbours' load hits all of them alike, so the ratios hold
    even when the absolute figures move."""
    for fn in functions.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    slice_s = seconds / rounds
    for _ in range(rounds):
        for name, fn in functions.items():
            count, start = 0, time.perf_counter()
            deadline = start + slice_s
            while True:
                for _ in range(10):
                    fn()
                count += 10
                now = time.perf_counter()
                if now >= deadline:
                    break
            samples[name].append(count / (now - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def realistic_verdict() -> Verdict:
    return Verdict(
        id=new_verdict_id(ACTOR), issuer=ACTOR,
        fingerprint=Fingerprint(os.urandom(32).hex(), os.urandom(32).hex(), os.urandom(8).hex(),
                                "pil-rgb-v1+imagehash-4.3-phash+pdq-thumb512", os.urandom(32).hex()),
        scores={"csam": 0.0132, "nsfw": 0.8731, "underage": 0.1544}, label="nsfw",
        model=ModelInfo("ViT-L-14", "openai", "horde-safety-2024.06"), published=utc_timestamp(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    ed, rsa_key = keys.generate_ed25519(), keys.generate_rsa()
    ed_pub, rsa_pub = ed.public_key(), rsa_key.public_key()
    verdict = realistic_verdict()
    signed = sign_verdict(verdict, ed, ed25519_key_id(ACTOR))
    wire = json.dumps(signed)
    doc = json.loads(wire)
    resolve = {ed25519_key_id(ACTOR): ed_pub}.__getitem__  # a cached key object, as the node keeps them

    body = json.dumps({"@context": "https://www.w3.org/ns/activitystreams", "type": "Create", "actor": ACTOR,
                       "object": [signed]}).encode()
    post_headers = {"Content-Type": "application/activity+json"}
    post_headers.update(httpsig.sign_request("POST", "https://peer.example/inbox", post_headers, body,
                                             rsa_key_id(ACTOR), rsa_key))

    def verify_http() -> None:
        params = httpsig.parse_signature(post_headers)
        httpsig.verify_request("POST", "/inbox", post_headers, body, params, rsa_pub)

    raw_ed_sig = ed.sign(b"x" * 64)
    raw_rsa_sig = rsa_key.sign(b"x" * 200, padding.PKCS1v15(), hashes.SHA256())
    s = args.seconds
    figures = rates({
        "baseline ed25519 verify (64 B)": lambda: ed_pub.verify(raw_ed_sig, b"x" * 64),
        "baseline rsa-2048 verify": lambda: rsa_pub.verify(raw_rsa_sig, b"x" * 200, padding.PKCS1v15(),
                                                          hashes.SHA256()),
        "verify_verdict (dict)": lambda: verify_verdict(doc, resolve),
        "verify_verdict (json text)": lambda: verify_verdict(json.loads(wire), resolve),
        "sign_verdict": lambda: sign_verdict(verdict, ed, ed25519_key_id(ACTOR)),
        "http verify (cavage rsa-sha256 POST)": verify_http,
        "http sign (cavage rsa-sha256 POST)": lambda: httpsig.sign_request(
            "POST", "https://peer.example/inbox", {}, body, rsa_key_id(ACTOR), rsa_key),
    }, s * 7)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"one core, {s:.1f} s per figure (interleaved slices, medians); verdict document {len(wire)} bytes, "
          f"POST body {len(body)} bytes; load average {load:.2f} on {os.cpu_count()} CPUs")
    for name, value in figures.items():
        print(f"  {name:40s} {value:10,.0f} /s")
    print("ratios to the bare primitive measured above:")
    verdict_ratio = figures["verify_verdict (dict)"] / figures["baseline ed25519 verify (64 B)"]
    http_ratio = figures["http verify (cavage rsa-sha256 POST)"] / figures["baseline rsa-2048 verify"]
    print(f"  verify_verdict / ed25519 verify        {verdict_ratio:.2f}")
    print(f"  http verify / rsa-2048 verify          {http_ratio:.2f}")
    target = 3000
    ok = figures["verify_verdict (dict)"] >= target
    print(f"verdict verifications target >= {target}/s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
