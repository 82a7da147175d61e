"""Reading an instance's PostgreSQL (Lemmy's, Mastodon's) without ever writing to it.

One small psycopg pool per database, opened at the first query, never at start: a node whose instance
database is down starts and decides images as before. Every connection is made read-only twice over: the
session default (``default_transaction_read_only``) and each transaction's own ``SET TRANSACTION READ ONLY``,
so even a role that was granted more than SELECT cannot change a row through the node. ``statement_timeout``
bounds every query.

An outage is said once: the first failure logs one line naming the database (its URL without the password)
and why; later queries within ``RETRY_SECONDS`` give the same problem at once, without waiting on a dead
server again; the first success after it logs that the database is back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

from node.urls import redacted  # noqa: F401 - also this package's name for it

log = logging.getLogger("verdict_node.attribution")

RETRY_SECONDS = 30.0


class DatabaseUnavailable(Exception):
    """The database could not be asked; the message is the one line for the admin (no password in it)."""


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message: what the server or the network said."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libpq prefixes "connection failed: connection to server at ... failed: FATAL:  ..."; keep the cause.
    if "FATAL:" in text:
        text = text.split("FATAL:", 1)[1].strip()
    return text[:300]


class ReadOnlyDatabase:
    """One instance database: ``name`` says which (``lemmy``, ``mastodon``) in every problem line."""

    def __init__(self, name: str, url: str, *, password: str | None = None, connect_timeout: float = 5.0,
                 query_timeout: float = 10.0, max_size: int = 4) -> None:
        self.name = name
        self.url = url
        self.password = password
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.max_size = max_size
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._down_until = 0.0
        self._problem: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} database {redacted(self.url)}"

    def _kwargs(self) -> dict[str, Any]:
        options = (f"-c default_transaction_read_only=on -c statement_timeout={int(self.query_timeout * 1000)}"
                   " -c idle_in_transaction_session_timeout=60000")
        kwargs: dict[str, Any] = {"options": options, "connect_timeout": max(1, round(self.connect_timeout)),
                                  "application_name": "verdict-node attribution", "autocommit": True}
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    async def _open(self) -> Any:
        from psycopg_pool import AsyncConnectionPool  # heavy: psycopg_pool

        async with self._lock:
            if self._pool is None:
                # The pool would log every failed connection attempt; the one line of _fail says it instead.
                logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
                pool = AsyncConnectionPool(self.url, kwargs=self._kwargs(), min_size=0, max_size=self.max_size,
                                           open=False, timeout=self.connect_timeout, reconnect_timeout=0,
                                           name=f"attribution-{self.name}")
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def _diagnose(self) -> str:
        """Why no connection came: one direct attempt, whose error names the cause (a wrong password, a
        refused connection, an unknown database) where the pool only says it timed out."""
        import psycopg  # heavy: psycopg

        try:
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(self.url, **self._kwargs()),
                                          self.connect_timeout)
        except asyncio.TimeoutError:
            return f"no answer within {self.connect_timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any driver error is the reason we report
            return _reason(exc)
        await conn.close()
        return f"no connection within {self.connect_timeout:g} s (the pool is busy)"

    async def _fail(self, reason: str) -> DatabaseUnavailable:
        problem = f"{self.label} unreachable: {reason}"
        if self._problem != problem:
            log.warning("attribution: %s (tried again in %.0f s; image decisions are not affected)", problem,
                        RETRY_SECONDS)
        self._problem = problem
        self._down_until = time.monotonic() + RETRY_SECONDS
        await self._discard_pool()
        return DatabaseUnavailable(problem)

    async def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close(timeout=1.0)
            except Exception:  # noqa: BLE001 - a pool that cannot close cleanly is dropped anyway
                pass

    async def fetch(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of one read-only query as dicts. Raises DatabaseUnavailable with the admin's line."""
        from psycopg import Error as PsycopgError  # heavy: psycopg
        from psycopg.rows import dict_row  # heavy: psycopg
        from psycopg_pool import PoolClosed, PoolTimeout  # heavy: psycopg_pool

        if self._problem and time.monotonic() < self._down_until:
            raise DatabaseUnavailable(self._problem)
        pool = await self._open()
        try:
            async with pool.connection(timeout=self.connect_timeout) as conn:
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION READ ONLY")
                    async with conn.cursor(row_factory=dict_row) as cur:
                        await cur.execute(sql, params)
                        rows = await cur.fetchall()
        except PoolTimeout:
            raise await self._fail(await self._diagnose()) from None
        except PoolClosed:
            # Another query found the database down meanwhile and closed the pool: its problem is ours.
            raise DatabaseUnavailable(self._problem or f"{self.label} unreachable") from None
        except PsycopgError as exc:
            if getattr(exc, "sqlstate", None) is None or str(getattr(exc, "sqlstate", "")).startswith("08"):
                raise await self._fail(_reason(exc)) from None
            # The server answered but refused the query (a missing GRANT, a timeout): the database is up.
            raise DatabaseUnavailable(f"{self.label} refused a query: {_reason(exc)}") from None
        if self._problem:
            log.info("attribution: %s reachable again", self.label)
            self._problem = None
        return rows

    async def close(self) -> None:
        await self._discard_pool()
