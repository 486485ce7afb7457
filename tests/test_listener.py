"""The listener as a public endpoint, over real sockets: requests without the secret closed
unread, bodies inflated only within the limit, slow senders closed, a cap on connections,
and an exhausted process logging once (tests/listener_worker.py, in a process of its own
with a low open-file limit)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from copyai_async import CopyAIClient
from copyai_async.testing import FakeCopyAI
from copyai_async.webhooks import Listener

EVENT = {
    "type": "workflowRun.completed",
    "workflowRunId": "WRUN-1",
    "workflowId": "WCFG-1",
    "result": {"text": "done"},
}
WORKER = Path(__file__).with_name("listener_worker.py")


@pytest.fixture
async def client() -> AsyncIterator[CopyAIClient]:
    """A client whose API nobody calls here: the listener is what is tested."""
    async with FakeCopyAI() as server, CopyAIClient(server.api_key, base_url=server.url) as c:
        yield c


def _bomb(size: int) -> bytes:
    """A gzip body that inflates to about ``size`` bytes of JSON (one long string)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"a" * (1 << 20)
    parts = [compressor.compress(b'{"text": "')]
    parts += [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, compressor.compress(b'"}'), compressor.flush()])


async def _open(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(listener.url.host, listener.url.port)


def _request_head(target: str, **headers: str) -> bytes:
    lines = [
        f"POST {target} HTTP/1.1",
        "Host: listener",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _closed_by_peer(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not
    within ``within`` seconds)."""
    return await asyncio.wait_for(reader.read(), within)


async def test_a_request_without_the_secret_is_answered_and_closed_unread(
    client: CopyAIClient,
) -> None:
    bomb = _bomb(64 << 20)  # 64 MiB of zeros in about 64 KiB
    async with client.listen() as listener:
        reader, writer = await _open(listener)
        head = _request_head(
            listener.path,  # no token
            **{
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Content-Length": str(len(bomb) * 10),  # more is "coming"
            },
        )
        writer.write(head + bomb[: len(bomb) // 2])
        answer = await _closed_by_peer(reader)  # not drained: closed right after the 404
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"Connection: close" in answer
        writer.close()
        assert listener.stats.not_found == 1
        assert (listener.stats.bad_body, listener.stats.too_large) == (0, 0)
        # Another path and another method: refused and closed the same way.
        for line in (b"POST /elsewhere HTTP/1.1", b"GET " + listener.path.encode() + b" HTTP/1.1"):
            reader, writer = await _open(listener)
            writer.write(line + b"\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
            answer = await _closed_by_peer(reader)
            assert answer.split(b" ", 2)[1] in (b"404", b"405")
            writer.close()


async def _post(listener: Listener, body: bytes, *, authorized: bool = True, **headers: str) -> int:
    url = listener.url if authorized else listener.url.with_query(None)
    headers.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(str(url), data=body, headers=headers) as resp,
    ):
        return resp.status


async def test_compressed_bodies_are_inflated_within_the_limit(client: CopyAIClient) -> None:
    event = json.dumps(EVENT).encode()
    async with client.listen(max_body=1 << 20) as listener:
        assert await _post(listener, gzip.compress(event), **{"Content-Encoding": "gzip"}) == 200
        for i, pack in enumerate((zlib.compress, lambda b: zlib.compress(b)[2:-4])):
            body = pack(json.dumps({**EVENT, "workflowRunId": f"WRUN-d{i}"}).encode())
            assert await _post(listener, body, **{"Content-Encoding": "deflate"}) == 200
        assert listener.stats.accepted == 3
        # 64 MiB once inflated: refused at the limit, while inflating.
        assert await _post(listener, _bomb(64 << 20), **{"Content-Encoding": "gzip"}) == 413
        # A body the server in front already inflated: taken as it is.
        again = json.dumps({**EVENT, "workflowRunId": "WRUN-2"}).encode()
        assert await _post(listener, again, **{"Content-Encoding": "gzip"}) == 200
        assert await _post(listener, b"\x1f\x8bnot gzip", **{"Content-Encoding": "gzip"}) == 400
        cut = gzip.compress(json.dumps({**EVENT, "workflowRunId": "WRUN-3"}).encode())[:-12]
        assert await _post(listener, cut, **{"Content-Encoding": "gzip"}) == 400
        assert await _post(listener, b"\x0b\x03", **{"Content-Encoding": "br"}) == 415
        assert await _post(listener, event, **{"Content-Encoding": "gzip, br"}) == 415
        stats = listener.stats
        assert (stats.accepted, stats.too_large, stats.bad_body, stats.bad_content_type) == (
            4,
            1,
            2,
            2,
        )
        # feed() applies the same rules to a body another server read.
        query = listener.url.query_string
        gz = {"Content-Encoding": "gzip"}
        assert await listener.feed(_bomb(8 << 20), query=query, headers=gz) == 413
        body = gzip.compress(json.dumps({**EVENT, "workflowRunId": "WRUN-4"}).encode())
        assert await listener.feed(body, query=query, headers=gz) == 200
        assert listener.authorized(query)
        assert not listener.authorized("token=guess")


@pytest.mark.parametrize("auto_decompress", [False, True])
async def test_the_handler_mounted_in_an_aiohttp_app(
    client: CopyAIClient, auto_decompress: bool
) -> None:
    # Mounted in an app of the user's: inflated by the handler (auto_decompress=False,
    # as the docs advise) or already by aiohttp; the limit holds either way, and a
    # request without the secret is answered and closed unread.
    async with client.listen(serve=False, public_url="https://hooks.example/in") as listener:
        app = web.Application()
        app.router.add_post("/in", listener.handler)
        runner = web.AppRunner(app, auto_decompress=auto_decompress, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}/in?{listener.url.query_string}"
            gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                body = gzip.compress(json.dumps(EVENT).encode())
                async with session.post(url, data=body, headers=gz) as resp:
                    assert resp.status == 200
                async with session.post(url, data=_bomb(16 << 20), headers=gz) as resp:
                    assert resp.status == 413
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = _request_head("/in", **{**gz, "Content-Length": "10000000"})
            writer.write(head + _bomb(16 << 20)[:1000])
            answer = await _closed_by_peer(reader)
            assert answer.startswith(b"HTTP/1.1 404")
            writer.close()
        finally:
            await runner.cleanup()
        assert (listener.stats.accepted, listener.stats.too_large) == (1, 1)
        assert listener.stats.not_found == 1


async def test_a_slow_sender_is_closed(client: CopyAIClient) -> None:
    async with client.listen(request_timeout=0.3) as listener:
        target = f"{listener.path}?{listener.url.query_string}"
        # Half a request line, then a byte now and then: never a whole request.
        reader, writer = await _open(listener)
        writer.write(b"POST " + target.encode()[:10])

        async def trickle() -> None:
            for _ in range(50):
                await asyncio.sleep(0.05)
                writer.write(b"x")

        trickling = asyncio.create_task(trickle())
        assert await _closed_by_peer(reader, within=3.0) == b""
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        writer.close()
        # The headers at once, the body never finished.
        reader, writer = await _open(listener)
        head = _request_head(
            target, **{"Content-Type": "application/json", "Content-Length": "1000"}
        )
        writer.write(head + b'{"type": ')
        assert await _closed_by_peer(reader, within=3.0) == b""
        writer.close()
        # A connection that sends nothing at all.
        reader, writer = await _open(listener)
        assert await _closed_by_peer(reader, within=3.0) == b""
        writer.close()
        assert listener.stats.timed_out == 3
        # Deliveries in time are taken as before; the sender's keep-alive, idle after
        # its request, is closed in the ordinary way (not counted as timed out).
        reader, writer = await _open(listener)
        body = json.dumps(EVENT).encode()
        head = _request_head(
            target, **{"Content-Type": "application/json", "Content-Length": str(len(body))}
        )
        writer.write(head + body)
        answer = await _closed_by_peer(reader, within=3.0)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()
        assert listener.stats.timed_out == 3
        assert listener.stats.accepted == 1


async def test_expect_100_continue_is_answered_once_the_secret_is_checked(
    client: CopyAIClient,
) -> None:
    async with client.listen() as listener:
        body = json.dumps(EVENT).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Expect": "100-continue",
        }
        reader, writer = await _open(listener)
        writer.write(_request_head(f"{listener.path}?{listener.url.query_string}", **headers))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
        writer.close()
        # Without the secret: no 100 Continue, the answer and the close at once.
        reader, writer = await _open(listener)
        writer.write(_request_head(listener.path, **headers))
        answer = await _closed_by_peer(reader)
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"100 Continue" not in answer
        writer.close()


async def test_malformed_requests_are_not_logged_as_errors(
    client: CopyAIClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client.listen() as listener:
        for garbage in (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
        ):
            reader, writer = await _open(listener)
            writer.write(garbage)
            answer = await _closed_by_peer(reader)
            assert b" 400 " in answer.split(b"\r\n", 1)[0]
            writer.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []


async def test_closing_the_listener_with_a_body_half_sent(client: CopyAIClient) -> None:
    listener = client.listen()
    await listener.start()
    target = f"{listener.path}?{listener.url.query_string}"
    reader, writer = await _open(listener)
    head = _request_head(target, **{"Content-Type": "application/json", "Content-Length": "1000"})
    writer.write(head + b'{"type": ')
    await asyncio.sleep(0.05)  # the handler is reading the body
    await asyncio.wait_for(listener.aclose(), 5)  # no raw CancelledError, nothing left open
    assert await _closed_by_peer(reader) == b""
    writer.close()


async def test_closing_the_listener_does_not_wait_on_idle_keep_alive_connections(
    client: CopyAIClient,
) -> None:
    # A sender that keeps its connection for the next delivery (Copy.ai's, the fake's):
    # the listener closes it at once when it stops, rather than waiting out the grace
    # its requests under way get (0.5 s, which every `runs wait --listen` paid).
    listener = client.listen()
    await listener.start()
    async with aiohttp.ClientSession() as sender:
        async with sender.post(str(listener.url), json=EVENT) as resp:
            assert resp.status == 200
            assert resp.headers.get("Connection", "keep-alive").lower() != "close"
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(listener.aclose(), 5)
        assert asyncio.get_running_loop().time() - began < 0.25


async def test_connections_are_capped_and_the_slowest_make_room(
    client: CopyAIClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="copyai_async")
    async with client.listen(max_connections=3, request_timeout=30.0) as listener:
        server = listener._server
        assert server is not None
        seen: list[int] = []

        async def count() -> None:
            while True:
                seen.append(server.connections)
                await asyncio.sleep(0.002)

        counting = asyncio.create_task(count())
        target = f"{listener.path}?{listener.url.query_string}".encode()
        # Two connections half-way through their request line, one silent: every slot.
        held = [await _open(listener) for _ in range(3)]
        for _, writer in held[:2]:
            writer.write(b"POST " + target[:8])
        # A delivery gets in: the connection that has waited longest for its request
        # (0.5 s at least) is closed for it, long before the 30 s request_timeout.
        for i in range(2):
            body = json.dumps({**EVENT, "workflowRunId": f"WRUN-{i}"}).encode()
            assert await asyncio.wait_for(_post(listener, body), 5) == 200
        counting.cancel()
        await asyncio.gather(counting, return_exceptions=True)
        assert max(seen) <= 3
        assert listener.stats.evicted >= 1
        assert listener.stats.timed_out == 0
        assert listener.stats.accepted == 2
        for _, writer in held:
            writer.close()
    full = [r for r in caplog.records if "connections (max_connections) are taken" in r.message]
    assert len(full) == 1


async def _read_json(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), 60)
    assert line, "the worker ended early"
    answer: dict[str, Any] = json.loads(line)
    return answer


@pytest.mark.parametrize("scenario", ["capped", "uncapped"])
async def test_a_flood_of_connections_under_a_low_open_file_limit(scenario: str) -> None:
    # 300 connections that never finish a request, against a process limited to 128
    # open files. Capped (40), the client's own API calls all succeed and the listener
    # never holds more than 40. Uncapped (1000), accepting fails for lack of
    # descriptors: logged once, not once per try, and it recovers once they are gone.
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        scenario,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    assert worker.stderr is not None
    flood: list[asyncio.StreamWriter] = []
    try:
        url = URL((await _read_json(worker.stdout))["url"])
        for _ in range(300):
            _, writer = await asyncio.open_connection(url.host, url.port)
            writer.write(b"POST /copyai-web")
            flood.append(writer)
        worker.stdin.write(b"flooded\n")
        await _read_json(worker.stdout)  # its API calls are over
        for writer in flood:
            writer.close()
        await asyncio.sleep(1.5)  # the worker's request_timeout passes
        statuses = []
        async with aiohttp.ClientSession() as session:
            for i in range(3):
                body = json.dumps({**EVENT, "workflowRunId": f"WRUN-{i}"})
                headers = {"Content-Type": "application/json"}
                async with session.post(str(url), data=body, headers=headers) as resp:
                    statuses.append(resp.status)
        worker.stdin.write(b"report\n")
        report = await _read_json(worker.stdout)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        for writer in flood:
            writer.close()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        await worker.stderr.read()
    assert statuses == [200] * 3
    assert report["accepted"] == 3
    if scenario == "capped":
        assert report["api_failures"] == 0
        assert report["api_calls"] > 10
        assert report["accept_warnings"] == 0
        assert 0 < report["max_open"] <= 40
    else:
        assert report["accept_warnings"] == 1
        assert report["accept_recovered"] == 1
    assert report["asyncio_errors"] == 0
