"""Getting activities to peers: signed HTTP requests, and the durable delivery queue behind them.

Outgoing requests are signed the way Mastodon signs them (draft-cavage, rsa-sha256, ``(request-target)
host date digest``, ``keyId=<actor>#main-key``), with a timeout on every request and a 1 MB cap on what
we read back, so a hostile or slow peer costs us bounded time and memory.

The queue is the ``deliveries`` table (one row per outbox entry and target inbox), so it survives
restarts and works the same whether the row was written by the server or by a CLI command in another
process (the loop polls the database). Each inbox has its own worker, so a dead peer backs off
(exponentially, for days) without delaying any other peer. Consecutive verdict entries for one inbox
travel together as one ``Create`` of up to ``batch_max`` verdicts, sent once the batch is full or its
oldest entry has waited ``batch_wait`` seconds; a few such batches may be in flight at once, while every
other activity (Follow, Accept, Delete, ...) keeps its place in the log order.

Outbox entries are either an activity (``document`` is the activity: Delete, Accept, Follow, ...) or of
type ``Verdict`` (``document`` is one signed verdict of ours, published inside a ``Create``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import aiohttp

from node.federation.records import VERDICT_ENTRY
from scanners.backoff import backoff_seconds
from protocol import httpsig

log = logging.getLogger("verdict_node.delivery")

ACTIVITY_JSON = "application/activity+json"
LD_JSON = 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"'
MAX_RESPONSE_BYTES = 1_000_000
USER_AGENT = "verdict-node"


class PeerRequestError(Exception):
    """A request to a peer failed (network, timeout, oversized or non-JSON answer, or an error status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PeerResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PeerRequestError(f"answer is not JSON: {exc}", self.status) from None


async def read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` (we never hold more than limit + a chunk).
    ``StreamReader.read(n)`` returns what has arrived so far, not n bytes: hence the loop."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


class SignedClient:
    """HTTP client whose every request carries our HTTP signature (Mastodon's conventions).

    Timeouts follow Mastodon's: 5 s to connect, 10 s per read, 30 s in all unless the caller asks for
    less (a pict-rs lookup has a budget)."""

    def __init__(self, actor_id: str, rsa_key: Any, *, connect_timeout: float = 5.0, read_timeout: float = 10.0,
                 total_timeout: float = 30.0, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 connector: Callable[[], aiohttp.BaseConnector] | None = None) -> None:
        self.key_id = f"{actor_id}#main-key"
        self._key = rsa_key
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=connect_timeout,
                                              sock_read=read_timeout)
        self.max_response_bytes = max_response_bytes
        self._connector = connector or (lambda: aiohttp.TCPConnector(limit=64, limit_per_host=8))
        self._session: aiohttp.ClientSession | None = None

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"User-Agent": USER_AGENT},
                                                  connector=self._connector())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      accept: str = f"{ACTIVITY_JSON}, {LD_JSON}", timeout: float | None = None,
                      max_bytes: int | None = None) -> PeerResponse:
        """Send one signed request; never follows redirects (a redirect could point our signature at
        another host). Raises PeerRequestError on network failure, timeout or an oversized answer."""
        max_bytes = self.max_response_bytes if max_bytes is None else max_bytes
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = ACTIVITY_JSON
        headers.update(httpsig.sign_request(method.upper(), url, dict(headers), body, self.key_id, self._key))
        session = await self._client()
        request_timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        try:
            async with session.request(method, url, data=body, headers=headers, allow_redirects=False,
                                       timeout=request_timeout) as resp:
                data = await read_limited(resp.content, max_bytes)
                if data is None:
                    raise PeerRequestError(f"answer larger than {max_bytes} bytes", resp.status)
                return PeerResponse(resp.status, dict(resp.headers), data)
        except asyncio.TimeoutError:
            raise PeerRequestError(f"{method} {url}: timed out") from None
        except aiohttp.ClientError as exc:
            raise PeerRequestError(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None

    async def get_json(self, url: str, *, timeout: float | None = None) -> Any:
        """Signed GET of a JSON document; a non-2xx answer raises PeerRequestError with the status."""
        resp = await self.request("GET", url, timeout=timeout)
        if not 200 <= resp.status < 300:
            raise PeerRequestError(f"GET {url}: HTTP {resp.status}: {resp.body[:200]!r}", resp.status)
        return resp.json()

    async def post_activity(self, inbox: str, body: bytes, *, timeout: float | None = None) -> PeerResponse:
        return await self.request("POST", inbox, body=body, timeout=timeout)


# -- retry schedule ---------------------------------------------------------------------------------------

def is_permanent_refusal(status: int) -> bool:
    """A 4xx other than 408 (timeout) and 429 (rate limited) means the peer will never take this
    activity: retrying would only hammer it (Mastodon drops such deliveries too)."""
    return 400 <= status < 500 and status not in (408, 429)


# -- enqueueing -------------------------------------------------------------------------------------------

def enqueue(conn: Any, activity: Mapping[str, Any], inboxes: Iterable[str], *,
            audience: Sequence[str] | None = None, now: float | None = None) -> int:
    """Append ``activity`` to the outbox log and queue it for each inbox, in the caller's transaction
    or its own. ``audience`` None means "every approved follower" (it shows in the outbox pages);
    otherwise only those actors may read it. Returns the outbox seq."""
    now = time.time() if now is None else now
    cur = conn.execute(
        "INSERT INTO outbox (activity_id, type, object_id, audience, created_at, document) VALUES (?,?,?,?,?,?)",
        (activity["id"], activity["type"], _object_id(activity),
         json.dumps(list(audience)) if audience is not None else None, now,
         json.dumps(activity, separators=(",", ":"), sort_keys=True)))
    seq = int(cur.lastrowid)
    conn.executemany("INSERT OR IGNORE INTO deliveries (outbox_seq, inbox, attempts, next_attempt_at) "
                     "VALUES (?, ?, 0, ?)", [(seq, inbox, now) for inbox in dict.fromkeys(inboxes) if inbox])
    return seq


def drop_log_deliveries(conn: Any, inbox: str) -> None:
    """Unqueue the change-log entries (audience None) meant for ``inbox``: it no longer follows us, so
    they are not for it any more; answers addressed to it alone (an Accept, a Reject) stay queued."""
    conn.execute("DELETE FROM deliveries WHERE inbox = ? AND outbox_seq IN "
                 "(SELECT seq FROM outbox WHERE audience IS NULL)", (inbox,))


def _object_id(activity: Mapping[str, Any]) -> str | None:
    obj = activity.get("object")
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping) and isinstance(obj.get("id"), str):
        return obj["id"]
    return None


# -- the delivery loop ------------------------------------------------------------------------------------

@dataclass
class _Pending:
    delivery_id: int
    seq: int
    type: str
    created_at: float
    attempts: int
    next_attempt_at: float


# (verdict documents as stored JSON texts, first seq, last seq) -> the Create body to send.
BatchBuilder = Callable[[list[str], int, int], bytes]


class DeliveryQueue:
    """Per-inbox workers over the ``deliveries`` table.

    ``build_batch(verdict_texts, first_seq, last_seq)`` turns consecutive verdict entries into the body
    of the one Create that carries them (the federation module owns the wire form)."""

    def __init__(self, store: Any, client: SignedClient, build_batch: BatchBuilder, *,
                 batch_max: int = 100, batch_wait: float = 1.0, poll_interval: float = 1.0,
                 retry_base: float = 10.0, retry_cap: float = 3600.0, give_up_after: float = 7 * 86400.0,
                 request_timeout: float = 30.0, max_in_flight: int = 4) -> None:
        self.store = store
        self.client = client
        self.build_batch = build_batch
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.give_up_after = give_up_after
        self.request_timeout = request_timeout
        self.max_in_flight = max_in_flight
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._supervisor_wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # (result, entries): "delivered", "retry" or "dropped"; federation counts them in /metrics.
        self.on_result: Callable[[str, int], None] = lambda result, entries: None
        # (inbox, outbox seqs): the peer refused these for good (a 4xx); federation.follows learns of its
        # refused Follows there, so it can ask again later.
        self.on_refused: Callable[[str, list[int]], None] = lambda inbox, seqs: None

    # public ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="delivery-supervisor")

    async def stop(self) -> None:
        tasks = list(self._workers.values()) + ([self._supervisor] if self._supervisor else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._supervisor = None

    def wake(self, inbox: str | None = None) -> None:
        """New rows may be due (for one inbox, or any): look now instead of at the next poll."""
        self._supervisor_wake.set()
        events = [self._wake[inbox]] if inbox is not None and inbox in self._wake else list(self._wake.values())
        for event in events:
            event.set()

    def retry_now(self, inbox: str) -> None:
        """The peer showed signs of life (it sent us a signed request): retry its backlog at once."""
        now = time.time()
        cur = self.store.conn.execute("UPDATE deliveries SET next_attempt_at = ? WHERE inbox = ? AND next_attempt_at > ?",
                                      (now, inbox, now))
        if cur.rowcount:
            self.wake(inbox)

    # internals ------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                # Per peer an index seek, however long a dead peer's backlog has grown.
                inboxes = [row[0] for row in self.store.conn.execute(
                    "SELECT DISTINCT inbox FROM peers p WHERE inbox IS NOT NULL AND EXISTS "
                    "(SELECT 1 FROM deliveries d WHERE d.inbox = p.inbox)")]
            except Exception:  # a locked or busy database must not kill the loop
                log.exception("delivery supervisor: cannot read the queue")
                inboxes = []
            for inbox in inboxes:
                task = self._workers.get(inbox)
                if task is None or task.done():
                    self._wake.setdefault(inbox, asyncio.Event())
                    self._workers[inbox] = asyncio.create_task(self._work(inbox), name=f"deliver {inbox}")
                else:
                    self._wake[inbox].set()
            self._supervisor_wake.clear()
            try:
                await asyncio.wait_for(self._supervisor_wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass

    def _pending(self, inbox: str, after: int = 0) -> list[_Pending]:
        """The head of this inbox's queue past ``after``, without the documents (read when sent)."""
        rows = self.store.conn.execute(
            "SELECT d.id, d.outbox_seq, o.type, o.created_at, d.attempts, d.next_attempt_at "
            "FROM deliveries d JOIN outbox o ON o.seq = d.outbox_seq "
            "WHERE d.inbox = ? AND d.delivered_at IS NULL AND d.outbox_seq > ? ORDER BY d.outbox_seq LIMIT ?",
            (inbox, after, self.batch_max)).fetchall()
        return [_Pending(*row) for row in rows]

    def _documents(self, batch: list[_Pending]) -> list[str]:
        first, last = batch[0].seq, batch[-1].seq
        texts = dict(self.store.conn.execute("SELECT seq, document FROM outbox WHERE seq BETWEEN ? AND ?",
                                             (first, last)))
        return [texts[item.seq] for item in batch]

    async def _sleep(self, inbox: str, seconds: float) -> None:
        event = self._wake.setdefault(inbox, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            pass

    async def _work(self, inbox: str) -> None:
        """Deliver everything queued for one inbox, then exit (the supervisor restarts it).

        Up to ``max_in_flight`` verdict batches travel at once (verdicts are independent and idempotent,
        and a Delete that overtakes its Create is kept by the receiver), so the round trip and the
        receiver's verification overlap. Any other activity (Follow, Accept, Delete, ...) is a barrier:
        it goes alone, after everything before it, and nothing after it leaves before it is through."""
        idle_since = time.monotonic()
        in_flight: set[asyncio.Task[None]] = set()
        handed_out = 0  # highest seq given to an in-flight batch
        try:
            while True:
                if not in_flight:
                    handed_out = 0
                try:
                    pending = self._pending(inbox, after=handed_out)
                except Exception:
                    log.exception("delivery to %s: cannot read the queue", inbox)
                    await self._sleep(inbox, self.poll_interval)
                    continue
                now = time.time()
                head = pending[0] if pending else None
                batch = self._take_batch(pending) if head is not None and head.next_attempt_at <= now else None
                must_wait = in_flight and (len(in_flight) >= self.max_in_flight or head is None
                                           or (batch is not None and not _is_verdict_create(batch[0])))
                if must_wait:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if head is None:
                    if time.monotonic() - idle_since > self.poll_interval:
                        return
                    await self._sleep(inbox, self.poll_interval)
                    continue
                idle_since = time.monotonic()
                if batch is None:  # backing off, or a batch still filling: wait for its time (or news)
                    due = head.next_attempt_at if head.next_attempt_at > now else head.created_at + self.batch_wait
                    await self._sleep(inbox, min(due - now, 60.0))
                    continue
                if not _is_verdict_create(batch[0]):
                    await self._send(inbox, batch)
                    continue
                handed_out = batch[-1].seq
                task = asyncio.create_task(self._send(inbox, batch))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            for task in in_flight:
                task.cancel()

    def _take_batch(self, pending: list[_Pending]) -> list[_Pending] | None:
        head = pending[0]
        if not _is_verdict_create(head):
            return [head]
        run: list[_Pending] = []
        for item in pending:
            if not _is_verdict_create(item) or len(run) == self.batch_max:
                break
            run.append(item)
        full = len(run) >= self.batch_max or len(run) < len(pending)
        if not full and head.attempts == 0 and time.time() - head.created_at < self.batch_wait:
            return None
        return run

    async def _send(self, inbox: str, batch: list[_Pending]) -> None:
        texts = self._documents(batch)
        if _is_verdict_create(batch[0]):
            body = self.build_batch(texts, batch[0].seq, batch[-1].seq)
        else:
            body = texts[0].encode()
        ids = [(item.delivery_id,) for item in batch]
        try:
            resp = await self.client.post_activity(inbox, body, timeout=self.request_timeout)
            status, error = resp.status, (None if 200 <= resp.status < 300 else
                                          f"HTTP {resp.status}: {resp.body[:200].decode('utf-8', 'replace')}")
        except PeerRequestError as exc:
            status, error = None, str(exc)
        now = time.time()
        if error is None:
            self._write("DELETE FROM deliveries WHERE id = ?", ids)
            self.on_result("delivered", len(batch))
            return
        attempts = batch[0].attempts + 1
        permanent = status is not None and is_permanent_refusal(status)
        expired = now - batch[0].created_at > self.give_up_after
        if permanent or expired:
            # Dropped for good; a follower that missed it still gets it by backfilling the outbox.
            log.warning("delivery to %s dropped (%s): %s", inbox, "refused" if permanent else "gave up", error)
            self._write("DELETE FROM deliveries WHERE id = ?", ids)
            self.on_result("dropped", len(batch))
            if permanent:
                self.on_refused(inbox, [item.seq for item in batch])
            return
        delay = backoff_seconds(attempts, self.retry_base, self.retry_cap)
        log.info("delivery to %s failed (attempt %d, retry in %.0f s): %s", inbox, attempts, delay, error)
        self.on_result("retry", len(batch))
        self._write("UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                    [(attempts, now + delay, error[:500], i) for (i,) in ids])

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """One transaction for a whole batch (autocommit would commit once per row)."""
        with self.store.transaction() as conn:
            conn.executemany(sql, rows)


def _is_verdict_create(item: _Pending) -> bool:
    return item.type == VERDICT_ENTRY
