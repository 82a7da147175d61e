"""Slow and greedy clients against a real `verdict-node serve` on loopback: headers or bodies sent a byte at a
time, and multipart bodies of very many parts, must be cut off while /healthz keeps answering at once.

Deadlines are small here (headers 1 s, budget 3 s) so the tests are quick; the bounds asserted are generous
(does-not-hang checks, not speed targets)."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.node_helpers import make_data_dir, run, serve_process

HEADER_TIMEOUT = 1.0
BUDGET = 3.0
CUT_OFF_WITHIN = 20.0   # seconds; the deadlines above are 1 s and 3 s
HEALTHZ_WITHIN = 2.0    # seconds for one /healthz answer while the slow clients are at it


def _slow_client_config(tmp_path):
    return make_data_dir(tmp_path, listen={"header_timeout_seconds": HEADER_TIMEOUT},
                         pictrs={"budget_seconds": BUDGET, "on_unavailable": "accept"})


async def _trickle(port: int, head: bytes, tail: bytes, every: float) -> tuple[float, bytes]:
    """Send `head` at once, then `tail` a byte every `every` seconds, until the server closes the connection,
    answers the whole request, or CUT_OFF_WITHIN has passed. Returns (seconds it lasted, what the server sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""
    try:
        writer.write(head)
        for i in range(len(tail) + 1_000_000):
            if time.monotonic() - started > CUT_OFF_WITHIN:
                break
            if i < len(tail):
                writer.write(tail[i:i + 1])
                await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(65536), every)
            except asyncio.TimeoutError:
                continue
            answer += chunk
            if not chunk or i >= len(tail) - 1:  # closed, or answered once everything was sent
                break
    except (ConnectionError, OSError):
        pass  # reset by the server: closed as well
    finally:
        writer.close()
    return time.monotonic() - started, answer


async def _request_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request on an open keep-alive connection; returns the status line."""
    writer.write(request)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    headers = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").lower()
    length = int(headers.split("content-length:")[1].split("\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 10)
    return status.strip()


async def _healthz_worst(base: str, until: "asyncio.Future[object]") -> float:
    """Ask /healthz every 0.2 s until `until` is done; the slowest answer in seconds."""
    worst = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not until.done():
            started = time.monotonic()
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200
                await r.read()
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.2)
    return worst


def test_slow_headers_and_bodies_are_cut_off_while_healthz_answers(tmp_path):
    config = _slow_client_config(tmp_path)
    port = config.listen.port
    slow_headers = (b"GET /healthz HTTP/1.1\r\nHost: node\r\n", b"X-Padding: " + b"a" * 10_000)
    slow_body = (b"POST /pictrs/validate/IPADDR HTTP/1.1\r\nHost: node\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 100000\r\n\r\n", b"\xff" * 100_000)

    async def body(base: str):
        clients = asyncio.gather(
            *(_trickle(port, *slow_headers, every=0.2) for _ in range(3)),
            *(_trickle(port, *slow_body, every=0.2) for _ in range(3)),
            _trickle(port, b"", b"", every=0.2))  # connects and never sends a byte
        worst = await _healthz_worst(base, clients)
        results = await clients
        for lasted, answer in results[:3] + results[6:]:
            assert lasted < CUT_OFF_WITHIN and answer == b"", (lasted, answer)  # closed, nothing to answer
        for lasted, answer in results[3:6]:
            assert lasted < CUT_OFF_WITHIN, lasted
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer  # 408, unless reset first
        assert worst < HEALTHZ_WITHIN, worst

        # Clients that are slow but within the deadlines are served.
        lasted, answer = await _trickle(port, b"GET /healthz HTTP/1.1\r\nHost: node", b"\r\nX-A: b\r\n\r\n",
                                        every=HEADER_TIMEOUT / 40)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        lasted, answer = await _trickle(port, slow_body[0].replace(b"100000", b"10"), b"\xff" * 10,
                                        every=BUDGET / 30)
        assert answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 406 ")), answer  # decided, not timed out
        # An idle keep-alive connection is not a slow request: the next request on it, after longer than the
        # header deadline, is answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        get = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"
        assert await _request_on(reader, writer, get) == b"HTTP/1.1 200 OK"
        await asyncio.sleep(HEADER_TIMEOUT * 2)
        assert await _request_on(reader, writer, get) == b"HTTP/1.1 200 OK"
        writer.close()

    with serve_process(config) as (proc, base):
        run(body(base))
    log = proc.stdout.read()
    assert "Traceback" not in log and "Unhandled exception" not in log, log
    assert "no complete request headers within 1 s of the request's first byte (listen.header_timeout_seconds)" in log
    assert "request body not complete within 3 s of the request's first byte (pictrs.budget_seconds)" in log


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body; each part is (its header lines, its content)."""
    out = bytearray()
    for headers, content in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
    return bytes(out + f"--{boundary}--\r\n".encode())


def test_a_multipart_body_of_100000_parts_is_refused_at_once(tmp_path):
    config = make_data_dir(tmp_path, pictrs={"on_unavailable": "accept"})
    url = f"http://127.0.0.1:{config.listen.port}/api/v1/scan/{config.pictrs.tokens[0]}"
    form = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    file_part = ('Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg', b"zz")
    many = _multipart([(f'Content-Disposition: form-data; name="x{i}"', b"v") for i in range(100_000)] + [file_part])
    nested = _multipart([("Content-Type: multipart/mixed; boundary=inner",
                          _multipart([file_part], boundary="inner"))])
    crowded_headers = _multipart([("\r\n".join(f"X-H{i}: v" for i in range(1_000)), b"v"), file_part])

    async def post(session: aiohttp.ClientSession, data: bytes) -> tuple[int, str, float]:
        started = time.monotonic()
        async with session.post(url, data=data, headers=form) as r:
            return r.status, await r.text(), time.monotonic() - started

    async def body(base: str):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            upload = asyncio.ensure_future(post(session, many))
            worst = await _healthz_worst(base, upload)
            status, text, took = await upload
            assert status == 400 and "without a 'file' field in its first 8 parts" in text, (status, text)
            assert took < 10 and worst < HEALTHZ_WITHIN, (took, worst)

            status, text, _ = await post(session, nested)
            assert status == 400 and "nested multipart" in text, (status, text)
            status, text, _ = await post(session, crowded_headers)
            assert status == 400 and "malformed body" in text, (status, text)  # client garbage: never a 500
            status, text, _ = await post(session, _multipart([('Content-Disposition: form-data; name="x"', b"v"),
                                                               file_part]))
            assert status in (200, 406), (status, text)  # a form with a few parts is still read

    with serve_process(config) as (proc, base):
        run(body(base))
