"""Relay process faults (docs/faults.md): one of two relays killed under load, and a
reconnect storm of 1,000 clients that must not reach Redis per client."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from support.client import connect
from support.rawws import RawClient

from faults.harness import Outcome, Producer, RelayProcess, commandstats, wait_for
from relay.client import BookUpdate, ChannelStatus, Client

BOOK = "book.BTC-USD"
SDK_CLIENTS = 5
STORM = 1000


async def test_kill_9_of_a_relay_clients_resume_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    producer = Producer(redis_url, rate=100.0)
    relays = [RelayProcess(redis_url, tmp_path) for _ in range(2)]
    clients: list[Client] = []
    try:
        async with asyncio.timeout(60):
            await producer.start()
            for relay in relays:
                relay.start()
            await asyncio.gather(*(relay.ready() for relay in relays))
            first, second = relays
            arrivals: list[list[float]] = []
            for number in range(SDK_CLIENTS):
                client = Client(
                    [first.ws_url, second.ws_url],
                    producer.channels,
                    reconnect_base=0.05,
                    reconnect_max=0.5,
                    rng=random.Random(number),
                )
                stamps: list[float] = []
                client.on(BookUpdate, _stamper(stamps))
                arrivals.append(stamps)
                clients.append(client)
                await client.start()
            await wait_for(
                lambda: all(len(stamps) >= 30 for stamps in arrivals), 20, "updates at every client"
            )
            first.kill()  # every client is on the first URL
            killed = time.monotonic()
            await wait_for(
                lambda: all(any(t > killed for t in stamps) for stamps in arrivals),
                20,
                "updates from the other relay",
            )
            recovery = max(next(t for t in s if t > killed) for s in arrivals) - killed
            await producer.stop()
            sim = producer.sim
            await wait_for(
                lambda: all(
                    c.position(ch) == (sim.epoch, sim.seqs[ch])
                    for c in clients
                    for ch in producer.channels
                ),
                20,
                "every client at the producer's last seqs",
            )
            for client in clients:
                assert client.url == second.ws_url
                assert client.stats.disconnects == 1
                for channel in producer.channels:
                    counters = client.counters(channel)
                    assert client.status(channel) is ChannelStatus.LIVE
                    assert counters.gaps == 0
                    assert counters.checksum_failures == 0
                    assert counters.resubscribes == 0
                    assert counters.snapshots == 1  # resumed: the missed updates, no snapshot
                    assert counters.resumes_replayed == 1
                book = client.book(BOOK)
                assert book is not None
                assert book.to_book() == producer.book(BOOK)
            Outcome("kill -9 of one of two relays", 0, 0, recovery).report()
    finally:
        for client in clients:
            await client.close()
        await producer.close()
        for relay in relays:
            relay.stop()


def _stamper(stamps: list[float]) -> Callable[[BookUpdate], None]:
    def stamp(_event: BookUpdate) -> None:
        stamps.append(time.monotonic())

    return stamp


# Commands the relay sends to Redis; the producer's own (XADD, EVALSHA...) are not counted.
_RELAY_COMMANDS = ("xread", "xrange", "xrevrange", "hget", "hgetall", "scan", "ping")


def _relay_calls(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in _RELAY_COMMANDS}


async def _resubscribe(port: int, epoch: str, seq: int) -> RawClient:
    client = await RawClient.connect("127.0.0.1", port)
    request = {"op": "subscribe", "channel": BOOK, "id": 1, "resume": {"epoch": epoch, "seq": seq}}
    await client.send_text(orjson.dumps(request).decode())
    frame = await client.read_frame()
    reply = orjson.loads(frame.payload)
    assert (reply["type"], reply["resumed"]) == ("subscribed", True), reply
    return client


async def test_reconnect_storm_of_1000_clients_does_not_reach_redis(
    redis_url: str, tmp_path: Path
) -> None:
    producer = Producer(redis_url, rate=50.0)
    relay = RelayProcess(redis_url, tmp_path)
    clients: list[RawClient] = []
    try:
        async with asyncio.timeout(90):
            await producer.start()
            relay.start()
            await relay.ready()
            async with connect(relay.ws_url) as feed:
                await feed.subscribe(BOOK, request_id=1)
                view = await feed.until(BOOK, producer.sim.seqs[BOOK])
                epoch, seq = view.epoch, view.seq
            assert seq is not None

            quiet_started = time.monotonic()
            before = await commandstats(redis_url)
            await asyncio.sleep(2.0)  # a window without clients: the relay's own rate
            quiet = _relay_calls(before, await commandstats(redis_url))
            quiet_seconds = time.monotonic() - quiet_started

            storm_started = time.monotonic()
            before = await commandstats(redis_url)
            pending = []
            for number in range(STORM):  # launched over one second
                pending.append(asyncio.create_task(_resubscribe(relay.port, epoch, seq)))
                if number % 100 == 99:
                    await asyncio.sleep(0.1)
            clients = list(await asyncio.gather(*pending))
            resubscribed = time.monotonic() - storm_started
            storm = _relay_calls(before, await commandstats(redis_url))
            storm_seconds = time.monotonic() - storm_started

            assert len(clients) == STORM
            assert await relay.metric("relay_resumes_total", outcome="replayed") >= STORM
            # Nothing per client reaches Redis: the relay's command rate during the storm
            # stays that of its own reader and discovery, not one more per client (1,000
            # clients would be 1,000 more of some command; a slow storm on a busy machine
            # only lengthens the window, which the allowance follows).
            for name in _RELAY_COMMANDS:
                allowed = 3 * quiet[name] / quiet_seconds * storm_seconds + 20
                assert storm[name] <= allowed, (name, storm[name], quiet[name], storm_seconds)
            print(
                f"\nSTORM {STORM} clients resubscribed in {resubscribed:.2f}s; relay commands "
                f"to Redis during it {sum(storm.values())} ({storm_seconds:.1f}s), "
                f"quiet {sum(quiet.values())} ({quiet_seconds:.1f}s)",
                flush=True,
            )
    finally:
        for client in clients:
            client.close()
        await producer.close()
        relay.stop()
