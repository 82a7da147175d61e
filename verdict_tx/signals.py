"""``photo_md5``: the md5 of an image file's bytes, the exact key hash lists carry for images.

python-threatexchange has md5 only as ``video_md5`` (its content type is video), so without this type an
image md5 from a verdict-node could only be matched as a video. Exact matching, like video_md5.
"""
from __future__ import annotations

import hashlib
import re
import typing as t

from threatexchange.content_type.content_base import ContentType
from threatexchange.content_type.photo import PhotoContent
from threatexchange.signal_type import signal_base

_MD5 = re.compile(r"[0-9a-f]{32}\Z")


class PhotoMD5Signal(signal_base.SimpleSignalType, signal_base.BytesHasher):
    """MD5 of a photo's bytes: matches only the very same file (a re-encode or stripped metadata escapes it;
    PDQ catches those)."""

    @classmethod
    def get_name(cls) -> str:
        return "photo_md5"

    @classmethod
    def get_content_types(cls) -> t.List[t.Type[ContentType]]:
        return [PhotoContent]

    @classmethod
    def get_index_cls(cls) -> t.Type[signal_base.TrivialSignalTypeIndex]:
        return signal_base.TrivialSignalTypeIndex

    @classmethod
    def validate_signal_str(cls, signal_str: str) -> str:
        normalized = signal_str.strip().lower()
        if not _MD5.match(normalized):
            raise ValueError(f"{signal_str[:40]!r} is not an MD5 (32 hex digits)")
        return normalized

    @classmethod
    def hash_from_bytes(cls, bytes_: bytes) -> str:
        return hashlib.md5(bytes_).hexdigest()

    @staticmethod
    def get_examples() -> t.List[str]:
        return ["d41d8cd98f00b204e9800998ecf8427e"]
