"""An S3-compatible bucket (AWS, MinIO, Garage, R2, B2, ...), one or more key prefixes.

boto3 is synchronous, so every call runs in a bounded thread pool (``concurrency`` workers, matching the
client's connection pool). Retries: botocore's *standard* retry mode (5xx, throttling, with jittered
backoff) plus our own outer loop with backoff for errors that outlast it (an endpoint restarting).

Incremental listing, honestly: S3's ListObjectsV2 has no server-side filter on LastModified, and keys are
listed in lexicographic order only. So a listing ``since`` a cursor still pages through every key under
the configured prefixes (1 LIST request per 1000 keys, no GETs) and filters by LastModified on our side;
only new/changed objects are handed out and read. fedi-safety did the same every 30 s over the whole
bucket; here the prefixes keep it to media (Mastodon buckets also hold backups/exports), and the listing
never holds more than one page in memory. For very large buckets, S3 Inventory reports or bucket event
notifications are the scalable feeds; they are not implemented. ``StartAfter`` is used only to resume an
interrupted listing (keys are walked in order, prefixes sorted and disjoint).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from typing import Any, AsyncIterator, Callable, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError

from scanners.backoff import Backoff

from .base import Item, ItemChanged, ItemError, ItemGone, Source, SourceError, build_sidecar, quarantine_name, sha256_hex
from .local import DEFAULT_MAX_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")

_MISSING = {"NoSuchKey", "404", "NotFound"}
_RETRYABLE = {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
              "RequestTimeout", "RequestTimeTooSkewed", "500", "502", "503", "504"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def normalise_prefixes(prefixes: list[str]) -> list[str]:
    """Sorted, without duplicates and without prefixes contained in another one, so key ranges are
    disjoint and ascending (a resume position is then one key)."""
    out: list[str] = []
    for p in sorted(set(prefixes or [""])):
        if not any(p.startswith(kept) for kept in out):
            out.append(p)
    return out


class S3Source(Source):
    """``s3://bucket/prefix?endpoint=https://s3.example.com&prefix=a/&prefix=b/``.

    Options: ``endpoint``, ``region``, ``access_key``/``secret_key`` (default: boto3's usual chain,
    e.g. AWS_ACCESS_KEY_ID), ``prefixes``, ``path_style`` (default True when an endpoint is given),
    ``quarantine_bucket`` (default: same bucket), ``quarantine_prefix`` (default ``verdict-quarantine/``;
    excluded from listing), ``page_size`` (max 1000), ``concurrency`` (default 8), ``retries`` (outer
    attempts, default 5), ``max_bytes``.
    """

    scheme = "s3"

    def __init__(self, bucket: str, prefixes: list[str] | None = None, *, endpoint: str | None = None,
                 region: str | None = None, access_key: str | None = None, secret_key: str | None = None,
                 path_style: bool | str | None = None, quarantine_bucket: str | None = None,
                 quarantine_prefix: str = "verdict-quarantine/", page_size: int = 1000,
                 concurrency: int = 8, retries: int = 5, backoff: float = 0.2,
                 max_bytes: int = DEFAULT_MAX_BYTES, connect_timeout: float = 10, read_timeout: float = 60):
        super().__init__()
        self.bucket = bucket
        self.prefixes = normalise_prefixes(list(prefixes or [""]))
        self.quarantine_bucket = quarantine_bucket or bucket
        self.quarantine_prefix = quarantine_prefix.rstrip("/") + "/"
        self.page_size = max(1, min(int(page_size), 1000))
        self.retries, self.backoff = int(retries), float(backoff)
        self.max_bytes = int(max_bytes)
        if isinstance(path_style, str):
            path_style = path_style.lower() in ("1", "true", "yes")
        if path_style is None:
            path_style = endpoint is not None
        config = Config(retries={"mode": "standard", "max_attempts": 5},
                        max_pool_connections=int(concurrency), connect_timeout=float(connect_timeout),
                        read_timeout=float(read_timeout),
                        s3={"addressing_style": "path" if path_style else "auto"})
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region or "us-east-1", aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, config=config)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=int(concurrency),
                                                           thread_name_prefix="s3-source")
        self.retried = 0

    def __repr__(self) -> str:
        return f"S3Source(s3://{self.bucket} {self.prefixes})"

    # -- plumbing --------------------------------------------------------------------------------
    async def _call(self, what: str, fn: Callable[[], T], key: str | None = None) -> T:
        """Run a boto3 call in the pool; retry transient failures; map 404 to ItemGone."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.backoff, 10.0)
        for attempt in range(self.retries + 1):
            try:
                return await loop.run_in_executor(self._pool, fn)
            except ClientError as exc:
                code, status = _code(exc), _status(exc)
                if key is not None and (code in _MISSING or status == 404):
                    raise ItemGone(key, "vanished") from None
                if not (code in _RETRYABLE or status >= 500 or status == 429):
                    if key is not None:
                        raise ItemError(key, f"{what}: {code or status}") from None
                    raise SourceError(f"s3://{self.bucket}: {what}: {code or status}: {exc}") from None
                error: Exception = exc
            except (BotoConnectionError, BotoCoreError) as exc:
                error = exc
            if attempt >= self.retries:
                raise SourceError(f"s3://{self.bucket}: {what} failed after {attempt + 1} attempts: {error}")
            self.retried += 1
            delay = backoff.next()
            log.warning("s3 %s failed (%s); retrying in %.1fs", what, error, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- listing ---------------------------------------------------------------------------------
    def _in_quarantine(self, key: str) -> bool:
        return self.quarantine_bucket == self.bucket and key.startswith(self.quarantine_prefix)

    async def _list(self, since: float | None, after: str | None) -> AsyncIterator[Item]:
        for prefix in self.prefixes:
            start_after = None
            if after is not None:
                if after.startswith(prefix):
                    start_after = after
                elif after > prefix:
                    continue  # every key of this prefix sorts before the resume position
            token = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.page_size}
                if token:
                    kwargs["ContinuationToken"] = token
                elif start_after:
                    kwargs["StartAfter"] = start_after
                page = await self._call("list", lambda kw=kwargs: self.client.list_objects_v2(**kw))
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/") or self._in_quarantine(key):
                        continue  # "folder" placeholders and our own quarantine
                    yield Item(key=key, size=int(obj.get("Size", 0)),
                               mtime=obj["LastModified"].timestamp() if obj.get("LastModified") else None,
                               etag=str(obj.get("ETag", "")).strip('"') or None)
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")

    # -- item operations -------------------------------------------------------------------------
    def _get(self, bucket: str, key: str, limit: int | None = None) -> tuple[bytes, dict[str, Any]]:
        limit = self.max_bytes if limit is None else limit
        resp = self.client.get_object(Bucket=bucket, Key=key)
        length = int(resp.get("ContentLength") or 0)
        body = resp["Body"]
        try:
            if length > limit:
                raise ItemError(key, f"too large ({length} bytes > {limit})")
            return body.read(limit + 1), resp
        finally:
            body.close()

    async def read(self, item: Item) -> bytes:
        data, _ = await self._call("get", lambda: self._get(self.bucket, item.key), key=item.key)
        return data

    async def delete(self, item: Item, *, sha256: str | None = None, location: str | None = None) -> None:
        if sha256 is not None:
            data, _ = await self._call("get", lambda: self._get(self.bucket, item.key), key=item.key)
            if sha256_hex(data) != sha256:
                raise ItemChanged(item.key, "its bytes are no longer those that were judged: not deleted")
        else:  # DeleteObject succeeds on a missing key; HEAD first so a vanished item is reported as such.
            await self._call("head", lambda: self.client.head_object(Bucket=self.bucket, Key=item.key), key=item.key)
        await self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=item.key),
                         key=item.key)

    def _new_quarantine_location(self) -> str:
        return f"s3://{self.quarantine_bucket}/{self.quarantine_prefix}{quarantine_name()}"

    def _quarantine_key(self, location: str) -> str:
        prefix = f"s3://{self.quarantine_bucket}/{self.quarantine_prefix}"
        if not location.startswith(prefix) or "/" in location[len(prefix):] or location.endswith(".json"):
            raise SourceError(f"{location} is not inside the quarantine {prefix}")
        return location[len(f"s3://{self.quarantine_bucket}/"):]

    async def quarantine(self, item: Item, sidecar: dict[str, Any], *, sha256: str | None = None,
                         location: str | None = None) -> str:
        data, resp = await self._call("get", lambda: self._get(self.bucket, item.key), key=item.key)
        if sha256 is not None and sha256_hex(data) != sha256:
            raise ItemChanged(item.key, "its bytes are no longer those that were judged: not quarantined")
        etag = str(resp.get("ETag", "")).strip('"')
        current = Item(item.key, size=len(data),
                       mtime=resp["LastModified"].timestamp() if resp.get("LastModified") else item.mtime,
                       etag=etag or item.etag)
        location = location or self._new_quarantine_location()
        name = self._quarantine_key(location)
        payload = json.dumps(build_sidecar(current, data, sidecar, f"s3://{self.bucket}"), indent=2,
                             sort_keys=True).encode()
        qb = self.quarantine_bucket
        # The copy is of the version that was read and checked, or of nothing.
        condition = {"CopySourceIfMatch": resp["ETag"]} if resp.get("ETag") else {}
        # Sidecar, then copy, then delete: a crash at any point leaves the original or a full copy.
        await self._call("put sidecar", lambda: self.client.put_object(
            Bucket=qb, Key=name + ".json", Body=payload, ContentType="application/json"))
        try:
            await self._call("copy", lambda: self.client.copy_object(
                Bucket=qb, Key=name, CopySource={"Bucket": self.bucket, "Key": item.key}, **condition),
                key=item.key)
        except ItemError as exc:
            await self._discard_quarantine(location)
            if "PreconditionFailed" in exc.reason or "412" in exc.reason:
                raise ItemChanged(item.key, "overwritten while being quarantined: not quarantined") from None
            raise
        await self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=item.key),
                         key=item.key)
        return location

    async def _quarantine_holds(self, location: str, sha256: str | None) -> bool:
        qkey, qb = self._quarantine_key(location), self.quarantine_bucket
        try:
            await self._call("head sidecar", lambda: self.client.head_object(Bucket=qb, Key=qkey + ".json"), key=qkey)
            data, _ = await self._call("get", lambda: self._get(qb, qkey), key=qkey)
        except ItemGone:
            return False
        return sha256 is None or sha256_hex(data) == sha256

    async def _discard_quarantine(self, location: str) -> None:
        qkey, qb = self._quarantine_key(location), self.quarantine_bucket
        for k in (qkey, qkey + ".json"):
            await self._call("delete quarantined", lambda k=k: self.client.delete_object(Bucket=qb, Key=k))

    async def release(self, location: str) -> Item:
        qkey = self._quarantine_key(location)
        qb = self.quarantine_bucket
        try:
            raw, _ = await self._call("get sidecar", lambda: self._get(qb, qkey + ".json", 1 << 20), key=qkey)
            sidecar = json.loads(raw)
            key = sidecar["original"]["key"]
            if not isinstance(key, str) or not key:
                raise ValueError("no original key")
        except ItemGone:
            raise SourceError(f"{location}: no quarantined item (sidecar missing)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{location}: unreadable sidecar ({exc})") from None
        data, _ = await self._call("get", lambda: self._get(qb, qkey), key=qkey)
        if sha256_hex(data) != sidecar.get("sha256"):
            raise SourceError(f"{location}: quarantined bytes do not match the sidecar's sha256")
        try:
            existing, _ = await self._call("get", lambda: self._get(self.bucket, key), key=key)
        except ItemGone:
            existing = None
        if existing is not None and existing != data:
            raise SourceError(f"{key}: a different object now exists there; not overwriting")
        if existing is None:
            await self._call("copy back", lambda: self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": qb, "Key": qkey}), key=key)
        for k in (qkey, qkey + ".json"):
            await self._call("delete quarantined", lambda k=k: self.client.delete_object(Bucket=qb, Key=k))
        head = await self._call("head", lambda: self.client.head_object(Bucket=self.bucket, Key=key), key=key)
        return Item(key, size=int(head.get("ContentLength", 0)), mtime=head["LastModified"].timestamp(),
                    etag=str(head.get("ETag", "")).strip('"') or None)
