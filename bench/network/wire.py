"""What travels between the nodes, counted on the wire: a relay on loopback in front of every node.

Each node's public URL (``node.url``, what its peers reach it at: actor, inbox, outbox, lookups) is a port
of this relay, which passes the bytes unchanged to the port the node listens on. The bench's own calls
(pict-rs uploads, /metrics, the databases) go to the nodes directly, so everything counted here is traffic
between nodes. It counts TCP payload bytes both ways (HTTP request and status lines, headers and bodies;
no TCP/IP overhead, no TLS, which a real deployment adds) and HTTP requests, by what they are for: the
requests of one connection are followed by their Content-Length, and the answer's bytes are counted with
the request they answer (peers do not pipeline).

It runs as its own process, so that relaying does not compete with the bench's load generator for the
same interpreter:

    python -m bench.network.wire PUBLIC_PORT=NODE_PORT ...
    stdin "counts\\n" -> stdout: one JSON line {public port: {kind: [requests, bytes up, bytes down]}}

It prints "ready" once it listens, and exits when its stdin closes.
"""
from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from typing import Callable

#: What a request between nodes is for, by its method and path.
KINDS = ("inbox", "outbox", "deletes", "lookup", "actor", "other")
_MAX_HEAD = 64 * 1024


def request_kind(head: bytes) -> str:
    """``POST /inbox`` pushes (Create batches; Follow/Accept too), ``GET /outbox`` backfills a follower,
    ``GET /outbox?...type=Delete`` reads retractions (a node that holds verdicts of an issuer it does not
    follow), ``GET /lookup`` asks about one image, ``GET /actor`` fetches keys; the rest (WebFinger,
    NodeInfo) is ``other``."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = line.partition(" ")
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    if method == "POST" and path == "/inbox":
        return "inbox"
    if method == "GET" and path == "/outbox":
        return "deletes" if "type=Delete" in query else "outbox"
    if method == "GET" and path in ("/lookup", "/actor"):
        return path[1:]
    return "other"


def _body_length(head: bytes) -> int | None:
    """Content-Length of a request head (0 without one); None when the body is chunked (not followed)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return None
        if name == b"content-length":
            length = int(value.strip() or 0)
    return length


class RequestStream:
    """Follows the requests in one connection's client-to-node bytes, to say which kind each byte is."""

    def __init__(self, count: Callable[[str, int, int, int], None]) -> None:
        self.count = count  # (kind, requests, bytes up, bytes down)
        self.kind = "other"
        self._head = bytearray()
        self._body_left = 0
        self._opaque = False  # a chunked or oversized request: its bytes go on to the last kind seen

    def up(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._opaque:
                self.count(self.kind, 0, len(view), 0)
                return
            if self._body_left:
                n = min(self._body_left, len(view))
                self.count(self.kind, 0, n, 0)
                self._body_left -= n
                view = view[n:]
                continue
            self._head += view
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    self._opaque = True
                    self.count(self.kind, 0, len(self._head), 0)
                return
            head, rest = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
            self._head = bytearray()
            self.kind = request_kind(head)
            self.count(self.kind, 1, len(head), 0)
            length = _body_length(head)
            if length is None:
                self._opaque = True
            else:
                self._body_left = length
            view = memoryview(rest)

    def down(self, data: bytes) -> None:
        self.count(self.kind, 0, 0, len(data))


class Relay:
    """Listens on each public port and passes the bytes to the node behind it, counting them."""

    def __init__(self, routes: dict[int, int]) -> None:
        self.routes = routes
        self.counts: dict[int, dict[str, list[int]]] = {port: defaultdict(lambda: [0, 0, 0]) for port in routes}

    async def start(self) -> list[asyncio.Server]:
        servers = []
        for public, private in self.routes.items():
            servers.append(await asyncio.start_server(
                lambda r, w, public=public, private=private: self._connection(r, w, public, private),
                "127.0.0.1", public))
        return servers

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                          public: int, private: int) -> None:
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", private)
        except OSError:
            client_w.close()  # the node is not up yet: the caller sees a closed connection, as without us
            return
        table = self.counts[public]

        def count(kind: str, requests: int, up: int, down: int) -> None:
            row = table[kind]
            row[0] += requests
            row[1] += up
            row[2] += down

        stream = RequestStream(count)
        await asyncio.gather(_pipe(client_r, node_w, stream.up), _pipe(node_r, client_w, stream.down))

    def snapshot(self) -> dict[str, dict[str, list[int]]]:
        return {str(port): {kind: list(row) for kind, row in table.items()} for port, table in self.counts.items()}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Callable[[bytes], None]) -> None:
    try:
        while data := await reader.read(65536):
            seen(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


async def _serve(routes: dict[int, int]) -> None:
    relay = Relay(routes)
    servers = await relay.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := await reader.readline():
        if line.strip() == b"counts":
            print(json.dumps(relay.snapshot()), flush=True)
    for server in servers:
        server.close()


def main(argv: list[str]) -> None:
    routes = {int(public): int(private) for public, private in (arg.split("=", 1) for arg in argv)}
    asyncio.run(_serve(routes))


if __name__ == "__main__":
    main(sys.argv[1:])
