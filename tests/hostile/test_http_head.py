"""The upgrade request itself: the origin allowlist (403), oversized heads (400), and
permessage-deflate declined, so that no compression bomb can reach the relay."""

from __future__ import annotations

import asyncio

from support.rawws import RawClient, refused_upgrade, upgrade_request

from .harness import poll, stage

APP = "https://app.example.com"


async def test_browsers_from_other_origins_get_403_and_others_pass() -> None:
    async with stage(allowed_origins=(APP, "http://localhost:8080")) as s:
        answer = await refused_upgrade(s.host, s.port, {"Origin": "https://evil.example.com"})
        assert answer.status == 403
        assert (await refused_upgrade(s.host, s.port, {"Origin": "null"})).status == 403
        allowed = await RawClient.connect(
            s.host, s.port, headers={"Origin": "https://APP.example.com"}
        )
        program = await RawClient.connect(s.host, s.port)  # no Origin: not a browser
        for client in (allowed, program):
            await client.send_text('{"op": "subscribe", "channel": "book.BTC-USD", "id": 1}')
            assert b'"subscribed"' in (await client.read_frame()).payload
            client.close()
        assert s.metric("relay_connections_refused_total", {"reason": "origin"}) == 2
        await s.assert_control_healthy()


async def test_without_an_allowlist_any_origin_may_connect() -> None:
    async with stage() as s:
        client = await RawClient.connect(s.host, s.port, headers={"Origin": "https://any.example"})
        client.close()
        await s.assert_control_healthy()


async def test_an_oversized_header_or_too_many_headers_are_refused() -> None:
    async with stage(max_header_bytes=1024, max_headers=20) as s:
        long_header = await refused_upgrade(s.host, s.port, {"X-Pad": "a" * 2000})
        many_headers = await refused_upgrade(s.host, s.port, {f"X-Pad-{n}": "a" for n in range(40)})
        long_line = await refused_upgrade(
            s.host, s.port, raw=upgrade_request(s.host, s.port, "/ws?" + "a" * 2000)
        )
        # aiohttp's parser answers 400 to each (the status line says what was too long)
        assert long_header.status == 400
        assert many_headers.status == 400
        assert long_line.status == 400
        # within the limits, the same request is fine
        client = await RawClient.connect(s.host, s.port, headers={"X-Pad": "a" * 500})
        client.close()
        assert s.metric("relay_connections_accepted_total") == 2
        await s.assert_control_healthy()


async def test_a_huge_head_is_cut_off_at_the_limit_not_buffered() -> None:
    """A client streaming an endless header line is answered and dropped once it passes
    the limit: the relay does not read megabytes before deciding."""
    async with stage(max_header_bytes=4096) as s:
        reader, writer = await asyncio.open_connection(s.host, s.port, limit=1 << 16)
        answer = asyncio.create_task(reader.read(1 << 16))
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        try:
            async with asyncio.timeout(10):
                while sent < 4 * 1024 * 1024 and not answer.done():
                    writer.write(b"a" * 8192)
                    sent += 8192
                    await writer.drain()
                    await asyncio.sleep(0)
        except ConnectionError:
            pass
        head = await asyncio.wait_for(answer, 5)
        writer.close()
        assert head.split(b"\r\n", 1)[0] in {
            b"HTTP/1.0 400 Bad Request",
            b"HTTP/1.1 400 Bad Request",
        }
        assert sent < 1024 * 1024  # answered long before the client was done
        await s.assert_control_healthy()


async def test_permessage_deflate_is_declined_and_compressed_frames_refused() -> None:
    async with stage() as s:
        client = await RawClient.connect(
            s.host,
            s.port,
            headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
        )
        assert "sec-websocket-extensions" not in client.response_head.lower()
        # a frame claiming compression (RSV1) without the extension: a protocol error
        bomb = bytes(64)  # the payload does not matter: it is never inflated
        await client.send_frame(0x1, bomb, rsv1=True)
        async with asyncio.timeout(5):
            close = await client.read_until_close()
        client.close()
        assert close.close_code == 1002
        await poll(lambda: s.metric("relay_closes_total", {"code": "1002"}) == 1)
        await s.assert_control_healthy()
