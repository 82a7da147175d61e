"""What the network is asked: a seeded pool of posts, and when each reaches which node.

The pool (``make_pool``) mixes what instances see: bundled photos, resized and re-encoded variants of them
(other pixels, close perceptual hashes), generated images (distinct photo-like ones, most of the pool), and
re-posts that are metadata-only edits of an earlier post (other bytes, the same pixels). An upload carries
camera metadata; the copy other instances receive is the same file without it, as pict-rs strips metadata
(different bytes, the same pixel key; WebP is sent as it is).

The schedule (``schedule``): each post is uploaded at one origin node, a classifying one (a node without a
model has nothing to decide its own users' new images with: they get on_unavailable), at a time spread
evenly over the posting window. It then arrives at k other nodes, each after its own delay counted from the
origin's answer (an instance fetches a remote image once the post has federated, never before it was
accepted at home). k follows a Zipf-like popularity (P(k) ~ k^-a, capped at every other node), so a few
images reach every node and most reach one or two. Delays are log-uniform between ``delay_min`` and
``delay_max``: the short ones arrive before the origin's verdict could be pushed (the node asks a lookup
peer), the long ones after (the pushed verdict answers). Same seed, same pool and schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from scanners.fingerprint import exact_keys
from tests.images import encode, photo_image, photo_names, synthetic_image

_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True)
class Post:
    """One image as the network meets it: what the origin receives, and what every other node receives."""

    kind: str            # photo | variant | generated | repost (metadata-only edit of an earlier post)
    upload: bytes        # at the origin, with its metadata
    federated: bytes     # at the other nodes, metadata stripped
    content_type: str
    pixel_key: str       # the image's identity: the pixel sha256 both copies share


@dataclass(frozen=True)
class Arrival:
    node: int
    delay: float  # seconds after the origin's answer


@dataclass(frozen=True)
class Schedule:
    """When each post is uploaded, where, and where it arrives afterwards."""

    nodes: int
    posts: Sequence[Post]
    origins: Sequence[int]
    post_times: Sequence[float]          # seconds from the start of the run
    arrivals: Sequence[Sequence[Arrival]]

    @property
    def uploads(self) -> int:
        return len(self.posts) + sum(len(a) for a in self.arrivals)

    @property
    def distinct_images(self) -> int:
        return len({p.pixel_key for p in self.posts})

    def reach(self) -> list[int]:
        """Nodes each post reaches, origin included."""
        return [1 + len(a) for a in self.arrivals]


# -- the pool -------------------------------------------------------------------------------------------

def _with_metadata(data: bytes, fmt: str, note: str) -> bytes:
    """The same file with a metadata block added (an EXIF segment in a JPEG, a tEXt chunk in a PNG): other
    bytes, the same pixels, what exiftool would strip again. WebP stays as it is."""
    text = f"camera serial {note}; edited with bench 1.0".encode()
    if fmt == "jpeg":
        payload = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00" + text
        return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    if fmt == "png":
        import zlib

        chunk = b"tEXt" + b"Comment\x00" + text
        block = len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
        return data[:33] + block + data[33:]  # after the signature (8) and IHDR (25)
    return data


def _post(kind: str, image: Image.Image, fmt: str, note: str, quality: int = 88) -> Post:
    federated = encode(image, fmt, quality=quality)
    upload = _with_metadata(federated, fmt, note)
    _, pixel_key = exact_keys(federated)
    assert pixel_key is not None and exact_keys(upload)[1] == pixel_key, kind
    return Post(kind, upload, federated, _CONTENT_TYPES[fmt], pixel_key)


def make_pool(count: int, seed: int) -> list[Post]:
    """``count`` posts: every bundled photo once (640 px), about 15% variants of them (other sizes, JPEG
    quality, PNG or WebP), about 10% re-posts of earlier posts with other metadata, the rest generated
    images (512x384, mostly JPEG, some PNG). Shuffled, so the kinds are spread over the posting window."""
    rng = np.random.default_rng(seed)
    photos = photo_names()[:count]
    posts = [_post("photo", photo_image(name, 640), "jpeg", f"{seed}-{name}") for name in photos]
    variants = min(max(0, count - len(posts)), round(0.15 * count))
    for i in range(variants):
        name = photos[i % len(photos)]
        side = int(rng.choice([320, 480, 800, 1024]))
        fmt = str(rng.choice(["jpeg", "jpeg", "png", "webp"]))
        posts.append(_post("variant", photo_image(name, side), fmt, f"{seed}-v{i}", quality=int(rng.integers(70, 95))))
    reposts = min(max(0, count - len(posts)), round(0.10 * count))
    generated = count - len(posts) - reposts
    for i in range(generated):
        fmt = "png" if rng.random() < 0.15 else "jpeg"
        posts.append(_post("generated", synthetic_image(seed * 1_000_003 + i, (512, 384)), fmt, f"{seed}-g{i}"))
    order = list(rng.permutation(len(posts)))
    posts = [posts[i] for i in order]
    for i in range(reposts):
        earlier = posts[int(rng.integers(0, len(posts)))]
        fmt = {"image/jpeg": "jpeg", "image/png": "png"}.get(earlier.content_type, "webp")
        again = _with_metadata(earlier.federated, fmt, f"{seed}-r{i}")
        posts.insert(int(rng.integers(len(posts) // 2, len(posts) + 1)),
                     Post("repost", again, earlier.federated, earlier.content_type, earlier.pixel_key))
    return posts


# -- the schedule ---------------------------------------------------------------------------------------

def popularity(rng: np.random.Generator, others: int, exponent: float) -> int:
    """How many other nodes a post reaches: Zipf(exponent), capped at ``others`` (then it reaches all)."""
    return int(min(others, rng.zipf(exponent)))


def schedule(posts: Sequence[Post], nodes: int, classifying: Sequence[int], *, seed: int, window: float,
             zipf: float = 2.0, delay_min: float = 0.1, delay_max: float = 8.0) -> Schedule:
    """Origins among ``classifying``, post times spread over ``window`` seconds, reach and delays drawn."""
    rng = np.random.default_rng([seed, nodes, *classifying])
    times = sorted(float(t) for t in rng.uniform(0.0, window, len(posts)))
    origins, arrivals = [], []
    for _ in posts:
        origin = int(rng.choice(classifying))
        others = [n for n in range(nodes) if n != origin]
        k = popularity(rng, len(others), zipf)
        chosen = sorted(int(n) for n in rng.choice(others, size=k, replace=False))
        delays = np.exp(rng.uniform(np.log(delay_min), np.log(delay_max), size=k))
        origins.append(origin)
        arrivals.append([Arrival(n, float(d)) for n, d in zip(chosen, delays)])
    return Schedule(nodes, posts, origins, times, arrivals)


def describe(sched: Schedule) -> dict[str, float]:
    """The schedule in numbers, for the report."""
    reach = sched.reach()
    kinds: dict[str, int] = {}
    for post in sched.posts:
        kinds[post.kind] = kinds.get(post.kind, 0) + 1
    sizes = [len(p.upload) for p in sched.posts]
    return {"posts": len(sched.posts), "distinct_images": sched.distinct_images, "uploads": sched.uploads,
            "mean_reach": float(np.mean(reach)), "reach_all": sum(r == sched.nodes for r in reach),
            "median_bytes": float(np.median(sizes)), **{f"kind_{k}": v for k, v in sorted(kinds.items())}}
