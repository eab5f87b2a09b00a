"""The lean keep-alive pool S3Backend uses for small requests, against raw HTTP/1.1 servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from unistore.backends.s3._fast import FastPool
from unistore.testing._s3servers import S3Server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = 0
    for line in head.split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head, await reader.readexactly(length)


def _pool(port: int) -> FastPool:
    return FastPool("127.0.0.1", port, tls=False, server_name="127.0.0.1", limit=4, connect_timeout=5, timeout=5)


async def test_keeps_connections_alive_and_sends_one_content_length(serve: Callable[[Handler], Awaitable[int]]) -> None:
    connections = 0
    heads: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            heads.append(head)
            writer.write(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
            await writer.drain()
        writer.close()

    pool = _pool(await serve(handler))
    for i in range(5):
        r = await pool.request("PUT", f"/b/k{i}", "h", {"content-length": "3"}, b"abc")
        assert (r.status, r.body, r.headers["etag"]) == (200, b"abc", '"e"')
    assert connections == 1
    assert all(h.lower().count("content-length") == 1 for h in heads)
    pool.close()


async def test_a_connection_closed_while_idle_is_replaced(serve: Callable[[Handler], Awaitable[int]]) -> None:
    """The server drops kept-alive connections after one response (as S3 does after idling)."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    pool = _pool(await serve(handler))
    for _ in range(3):
        assert (await pool.request("DELETE", "/b/k", "h", {}, None)).status == 204
    assert served == 3  # each request served once: no duplicate after a stale connection
    pool.close()


async def test_chunked_and_close_delimited_bodies(serve: Callable[[Handler], Awaitable[int]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_request(reader)
        if "/chunked" in head:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    pool = _pool(await serve(handler))
    assert (await pool.request("GET", "/chunked", "h", {}, None)).body == b"Wikipedia"
    assert (await pool.request("GET", "/plain", "h", {}, None)).body == b"until the end"
    pool.close()


async def test_a_server_that_hangs_up_mid_response_is_an_error(serve: Callable[[Handler], Awaitable[int]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    pool = _pool(await serve(handler))
    with pytest.raises(asyncio.IncompleteReadError):
        await pool.request("GET", "/x", "h", {}, None)
    pool.close()


async def test_a_small_range_read_goes_through_the_pool_even_when_the_range_is_ignored(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    from unistore import ByteRange
    from unistore.backends.s3 import S3Backend

    heads: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                head, _ = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            heads.append(head.lower())
            body = b"0123456789"  # the whole object: this server ignores Range
            writer.write(b'HTTP/1.1 200 OK\r\nETag: "e1"\r\nContent-Length: 10\r\n\r\n' + body)
            await writer.drain()
        writer.close()

    port = await serve(handler)
    store = S3Backend(bucket="b", endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="s" * 8)
    try:
        dl = await store.open("k", range=ByteRange(2, 5))
        assert await dl.read() == b"234"
        assert (dl.start, dl.end, dl.info.size, dl.info.etag) == (2, 5, 10, "e1")
        assert "range: bytes=2-4" in heads[0] and "user-agent: python" not in heads[0]  # not aiohttp's
    finally:
        await store.aclose()


async def test_streamed_bodies_keep_the_connection_only_when_read_to_the_end(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    connections = 0
    body = bytes(range(256)) * 4096  # 1 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, _ = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if "/chunked" in head:
                chunked = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            try:
                await writer.drain()
            except ConnectionError:
                break
        writer.close()

    pool = _pool(await serve(handler))
    for _ in range(3):  # read to the end: one connection serves them all
        r = await pool.stream("GET", "/k", "h", {})
        chunks = [c async for c in r.iter_chunks(64 * 1024)]
        assert b"".join(chunks) == body and max(map(len, chunks)) <= 64 * 1024 and len(chunks) >= 16
    r = await pool.stream("GET", "/k", "h", {})
    assert await r.read() == body
    assert connections == 1
    r = await pool.stream("GET", "/k", "h", {})
    async for _ in r.iter_chunks(1000):
        break
    r.release()  # abandoned half-way: the connection is closed, not reused
    r.release()
    r = await pool.stream("GET", "/chunked", "h", {})
    assert (r.status, b"".join([c async for c in r.iter_chunks(3)])) == (200, b"Wikipedia")
    assert connections == 2
    for _ in range(5):  # every stream gave its slot back (the pool's limit is 4)
        r = await pool.stream("GET", "/k", "h", {})
        r.release()
    pool.close()


async def test_a_streamed_body_cut_short_is_an_error(serve: Callable[[Handler], Awaitable[int]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    pool = _pool(await serve(handler))
    r = await pool.stream("GET", "/x", "h", {})
    with pytest.raises(ConnectionResetError):
        async for _ in r.iter_chunks(1000):
            pass
    r.release()
    pool.close()


def test_s3_reads_do_not_load_aiohttp(seaweed: S3Server) -> None:
    """Downloads stream through the lean pool: a process that only reads never imports aiohttp."""
    import subprocess
    import sys

    code = f"""
import asyncio, sys
from unistore import ByteRange
from unistore.backends.s3 import S3Backend

async def main():
    s = S3Backend(bucket="unistore-tests", endpoint={seaweed.endpoint!r}, access_key={seaweed.access_key!r},
                  secret_key={seaweed.secret_key!r}, region={seaweed.region!r})
    data = bytes(range(256)) * 12288  # 3 MiB
    await s.put_object("fast/no-aiohttp", data[: 1 << 20])
    assert "aiohttp" not in sys.modules
    assert await (await s.open("fast/no-aiohttp")).read() == data[: 1 << 20]
    assert await (await s.open("fast/no-aiohttp", range=ByteRange(10, None))).read() == data[10 : 1 << 20]
    await s.aclose()
    print("aiohttp" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


async def test_bytes_arriving_while_the_caller_holds_the_first_chunks_are_not_lost(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    """The body read along with the head is handed out first; what arrives meanwhile is read next."""
    body = bytes(range(256)) * 1024  # 256 KiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:65536])
        await writer.drain()
        await asyncio.sleep(0.2)  # the client is still busy with the first 64 KiB
        writer.write(body[65536:])
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    pool = _pool(await serve(handler))
    r = await pool.stream("GET", "/slow", "h", {})
    await asyncio.sleep(0.1)  # the first 64 KiB wait in the stream reader's buffer
    got = bytearray()
    async with asyncio.timeout(4):
        async for chunk in r.iter_chunks(4096):
            got += chunk
            await asyncio.sleep(0.02)
    assert bytes(got) == body
    r.release()
    pool.close()
