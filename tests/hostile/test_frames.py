"""Frame abuse (docs/limits.md): over-size frames and fragment floods (1009), ping floods
(rate-limited like messages; pongs never pile up), invalid UTF-8 (1007). The control client
keeps its updates throughout."""

from __future__ import annotations

import asyncio
import contextlib
import struct

from support.rawws import RawClient, frame_bytes

from relay.connection import Connection

from .harness import Stage, poll, stage

TEXT, CONTINUATION, PING, PONG = 0x1, 0x0, 0x9, 0xA
LIMIT = 4096


def _flooder(s: Stage) -> Connection:
    others = [c for c in s.relay.relay.connections if c.subscriptions == set()]
    assert len(others) == 1
    return others[0]


async def _close_of(client: RawClient) -> int | None:
    """The relay's close code; the close is answered, as a well-behaved peer would."""
    async with asyncio.timeout(10):
        close = await client.read_until_close()
    with contextlib.suppress(ConnectionError):
        await client.send_frame(0x8, close.payload[:2])
    client.close()
    return close.close_code


async def test_a_frame_announcing_a_huge_length_is_closed_1009_at_once() -> None:
    async with stage(max_frame_bytes=LIMIT) as s:
        client = await RawClient.connect(s.host, s.port)
        # only the header: the relay must not wait for (or buffer) 1 TiB of payload
        client.writer.write(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 40) + bytes(4))
        assert await _close_of(client) == 1009
        await s.assert_control_healthy()


async def test_a_fragment_flood_is_bounded_by_the_assembled_size() -> None:
    async with stage(max_frame_bytes=LIMIT) as s:
        client = await RawClient.connect(s.host, s.port)
        await client.send_frame(TEXT, b"x" * 1000, fin=False)
        for _ in range(50):  # 51 kB in fragments of 1 kB, each under the limit
            client.writer.write(frame_bytes(CONTINUATION, b"x" * 1000, fin=False))
        await client.writer.drain()
        assert await _close_of(client) == 1009
        await poll(lambda: s.metric("relay_closes_total", {"code": "1009"}) == 1)
        await s.assert_control_healthy()


async def test_many_empty_fragments_still_make_one_small_message() -> None:
    async with stage(max_frame_bytes=LIMIT) as s:
        client = await RawClient.connect(s.host, s.port)
        await client.send_frame(TEXT, b'{"op": "ping", ', fin=False)
        empty = frame_bytes(CONTINUATION, b"", fin=False)
        for _ in range(20):
            client.writer.write(empty * 500)
            await client.writer.drain()
        await client.send_frame(CONTINUATION, b'"id": 7}')
        assert (await client.read_frame()).payload == b'{"type":"pong","id":7}'
        client.close()
        await s.assert_control_healthy()


async def test_a_ping_flood_is_rate_limited_then_closed_1008() -> None:
    async with stage(rate_limit=5.0, rate_burst=10.0, rate_strikes=5) as s:
        client = await RawClient.connect(s.host, s.port)
        client.writer.write(frame_bytes(PING, b"p") * 200)
        await client.writer.drain()
        pongs = 0
        async with asyncio.timeout(10):
            while (frame := await client.read_frame()).opcode != 0x8:
                pongs += frame.opcode == PONG
        client.close()
        assert frame.close_code == 1008
        assert frame.payload[2:] == b"rate limit exceeded"
        assert 10 <= pongs < 30  # the burst (and what refilled meanwhile), not 200
        assert s.metric("relay_policy_closes_total", {"reason": "rate_limit"}) == 1
        await s.assert_control_healthy()


async def test_pongs_to_a_peer_that_never_reads_do_not_pile_up() -> None:
    """Pings within the rate, from a peer that never reads its pongs: the relay stops
    reading it (TCP back-pressure) instead of queueing pongs without end."""
    async with stage(rate_limit=1e9, rate_burst=1e9) as s:
        client = await RawClient.connect(s.host, s.port, rcvbuf=4096)
        flood = frame_bytes(PING, b"p" * 125) * 1000  # 131 kB a write, 127 kB of pongs
        backlog: list[int] = []
        sent = 0
        pushed_back = False
        async with asyncio.timeout(30):
            while sent < 400_000:
                client.writer.write(flood)
                sent += 1000
                try:
                    await asyncio.wait_for(client.writer.drain(), 0.5)
                except TimeoutError:
                    pushed_back = True
                    break
                backlog.append(_flooder(s)._transport.get_write_buffer_size())
        assert pushed_back  # the relay stopped reading: 400k pongs (50 MB) were never queued
        await asyncio.sleep(0.2)
        backlog.append(_flooder(s)._transport.get_write_buffer_size())
        assert max(backlog) < 1024 * 1024
        await s.assert_control_healthy()
        client.writer.transport.abort()
        await poll(lambda: len(s.relay.relay.connections) == 1)


async def test_invalid_utf8_is_closed_1007() -> None:
    async with stage() as s:
        client = await RawClient.connect(s.host, s.port)
        await client.send_frame(TEXT, b'{"op": "ping", "id": "\xff\xfe"}')
        assert await _close_of(client) == 1007
        fragmented = await RawClient.connect(s.host, s.port)
        await fragmented.send_frame(TEXT, b'{"op": "\xe2\x82', fin=False)  # a split "€" ...
        await fragmented.send_frame(CONTINUATION, b'\xac"}')  # ... is fine once whole
        assert b"unknown_op" in (await fragmented.read_frame()).payload
        await fragmented.send_frame(TEXT, b'{"op": "\xe2\x82', fin=False)
        await fragmented.send_frame(CONTINUATION, b'"}')  # never completed: invalid
        assert await _close_of(fragmented) == 1007
        await poll(lambda: s.metric("relay_closes_total", {"code": "1007"}) == 2)
        await s.assert_control_healthy()
