"""A failing Redis under a relay with clients (docs/faults.md).

Each test runs a producer (``relay.producer.Simulator``) writing a book and a trades
channel at 100 updates/s, one `relay serve` process and three clients that check every
frame. During the fault the relay's CPU stays low (no busy loop) and its Redis errors
are spaced by the backoff; after it, every client gets data again, and at the end every
client's book equals the producer's with no silent gap: each update was the next seq, or
followed a fresh snapshot that replaced the state. Each test prints its figures
(``pytest -s``): they are the table of docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from faults.harness import (
    CPU_BOUND,
    CpuWindow,
    Outcome,
    Producer,
    RelayProcess,
    Watched,
    check,
    settle,
    wait_for,
    wait_updates,
    watched_clients,
)
from relay.redisproc import RedisProcess
from relay.source.base import stream_key

CLIENTS = 3
BOOK = "book.BTC-USD"


@dataclass
class Stack:
    server: RedisProcess
    relay: RelayProcess
    producer: Producer
    clients: list[Watched]


@dataclass
class Fault:
    ended: float  # time.monotonic() when the fault was over
    cpu: float  # the relay's CPU share of one core during the fault
    seconds: float  # how long the fault lasted


@contextlib.asynccontextmanager
async def _stack(server: RedisProcess, tmp_path: Path) -> AsyncIterator[Stack]:
    await asyncio.to_thread(server.start)
    producer = Producer(server.url)
    relay = RelayProcess(server.url, tmp_path)
    try:
        await producer.start()
        relay.start()
        await relay.ready()
        async with watched_clients(relay.ws_url, producer.channels, CLIENTS) as clients:
            stack = Stack(server, relay, producer, clients)
            await _flowing(stack, 30)
            yield stack
    finally:
        await producer.close()
        relay.stop()
        await asyncio.to_thread(server.cleanup)


async def _flowing(stack: Stack, updates: int) -> None:
    """Until every client applied ``updates`` more book updates."""
    start = [len(c.feed.views[BOOK].updates) if BOOK in c.feed.views else 0 for c in stack.clients]
    await wait_for(
        lambda: all(
            BOOK in c.feed.views and len(c.feed.views[BOOK].updates) >= n + updates
            for c, n in zip(stack.clients, start, strict=True)
        ),
        20,
        f"{updates} updates at every client",
    )


async def _outage(
    stack: Stack,
    begin: Callable[[], Awaitable[None] | None],
    end: Callable[[], Awaitable[None] | None],
    seconds: float,
    *,
    measure_end: bool = False,
) -> Fault:
    """``begin``, hold the fault ``seconds`` while measuring the relay's CPU, ``end``
    (``measure_end``: the fault lasts until ``end`` returns, which is measured too)."""
    started = time.monotonic()
    result = begin()
    if result is not None:
        await result
    window = CpuWindow(stack.relay)
    await asyncio.sleep(seconds)  # the fault's duration: what is measured is the CPU
    cpu = window.share()
    result = end()
    if result is not None:
        await result
    if measure_end:
        cpu = window.share()
    ended = time.monotonic()
    return Fault(ended, cpu, ended - started)


async def _finish(stack: Stack, fault: Fault, name: str, errors_before: float) -> Outcome:
    recovery = await wait_updates(stack.clients, fault.ended, timeout=20)
    await _flowing(stack, 20)
    errors = await stack.relay.metric("relay_redis_errors_total") - errors_before
    await settle(stack.producer, stack.clients)
    extra = check(stack.producer, stack.clients)
    outcome = Outcome(name, 0, extra, recovery, fault.cpu, errors)
    outcome.report()
    assert fault.cpu < CPU_BOUND, f"relay used {fault.cpu:.0%} of a core during the fault"
    # Capped, jittered backoff (base 0.05 s, cap 0.5 s): a few retries a second at most,
    # not a retry per loop turn.
    assert errors <= 10 + 20 * fault.seconds, f"{errors} Redis errors in {fault.seconds:.1f}s"
    return outcome


async def _in_thread(call: Callable[[], None]) -> None:
    await asyncio.to_thread(call)


async def test_restart_without_persistence_gets_fresh_snapshots(tmp_path: Path) -> None:
    """Every stream is gone: the producer opens a new epoch; clients get snapshots."""
    server = RedisProcess()
    async with asyncio.timeout(60):
        async with _stack(server, tmp_path) as stack:
            before = await stack.relay.metric("relay_redis_errors_total")
            epoch = stack.producer.sim.epoch
            fault = await _outage(
                stack, lambda: _in_thread(server.stop), lambda: _in_thread(server.start), 1.5
            )
            outcome = await _finish(stack, fault, "restart, no persistence", before)
            assert stack.producer.sim.epoch != epoch
            assert outcome.snapshots >= 1
            for client in stack.clients:
                for channel in stack.producer.channels:
                    assert client.feed.views[channel].epoch == stack.producer.sim.epoch
            assert await stack.relay.metric("relay_redis_reconnects_total") >= 1


@pytest.mark.parametrize("persistence", ["aof", "rdb"])
async def test_restart_with_persistence_loses_nothing(tmp_path: Path, persistence: str) -> None:
    """The streams survive: updates continue from the relay's ids, with no snapshot."""
    # rdb: an RDB written on shutdown (save points set), loaded on start.
    aof = persistence == "aof"
    server = RedisProcess(appendonly=True) if aof else RedisProcess(save="3600 1")
    async with asyncio.timeout(60):
        async with _stack(server, tmp_path) as stack:
            before = await stack.relay.metric("relay_redis_errors_total")
            epoch = stack.producer.sim.epoch
            fault = await _outage(
                stack, lambda: _in_thread(server.stop), lambda: _in_thread(server.start), 1.5
            )
            outcome = await _finish(stack, fault, f"restart, {persistence}", before)
            assert stack.producer.sim.epoch == epoch
            assert outcome.snapshots == 0
            assert outcome.errors >= 1


async def test_paused_redis_is_waited_for_without_spinning(tmp_path: Path) -> None:
    """SIGSTOP for 6 s: longer than the read block (0.1 s) and the relay's socket timeout
    (block + 5 s), so the relay times out and retries against a server that accepts
    connections but answers nothing. After SIGCONT nothing is lost and no snapshot."""
    server = RedisProcess()
    async with asyncio.timeout(60):
        async with _stack(server, tmp_path) as stack:
            before = await stack.relay.metric("relay_redis_errors_total")
            fault = await _outage(stack, server.pause, server.resume, 6.0)
            outcome = await _finish(stack, fault, "paused (SIGSTOP 6 s)", before)
            assert outcome.snapshots == 0
            assert outcome.errors >= 1  # timed out


@pytest.mark.parametrize("persistence", ["none", "aof-always", "aof-everysec"])
async def test_kill_9(tmp_path: Path, persistence: str) -> None:
    """A crash. Without persistence it is a restart without it: a new epoch, snapshots.
    With an AOF fsynced on every write nothing acknowledged is lost: no snapshot. With
    the default fsync every second the last second may be lost: then the producer opens
    a new epoch (snapshots), else nothing changes; never a silent gap either way."""
    if persistence == "none":
        server = RedisProcess()
    else:
        server = RedisProcess(appendonly=True, appendfsync=persistence.removeprefix("aof-"))
    async with asyncio.timeout(60), _stack(server, tmp_path) as stack:
        before = await stack.relay.metric("relay_redis_errors_total")
        epoch = stack.producer.sim.epoch
        fault = await _outage(
            stack, lambda: _in_thread(server.kill), lambda: _in_thread(server.start), 1.5
        )
        outcome = await _finish(stack, fault, f"kill -9, {persistence}", before)
        lost_data = stack.producer.sim.epoch != epoch
        if persistence == "none":
            assert lost_data
        elif persistence == "aof-always":
            assert not lost_data
        assert (outcome.snapshots >= 1) if lost_data else (outcome.snapshots == 0)
        if persistence == "aof-everysec":
            print(f"aof-everysec: {'lost the last writes' if lost_data else 'lost nothing'}")


async def test_stream_trimmed_past_the_relay_while_it_was_not_reading(tmp_path: Path) -> None:
    """The relay process is stopped (SIGSTOP) while the producer writes on and the stream
    is trimmed to its last 5 entries: on SIGCONT the relay sees the gap and its clients
    get a fresh snapshot, never the entries after the hole as if nothing happened."""
    server = RedisProcess()
    async with asyncio.timeout(60):
        async with _stack(server, tmp_path) as stack:
            relay = stack.relay
            trimmer = aioredis.Redis.from_url(server.url)
            before = await relay.metric("relay_redis_errors_total")
            gaps_before = await relay.metric("relay_source_gaps_total")

            async def trim() -> None:
                await _flowing_for(stack, 1.0)  # the producer writes on, unread
                await trimmer.xtrim(stream_key("md:", BOOK), maxlen=5, approximate=False)
                await trimmer.xtrim(
                    stream_key("md:", "trades.BTC-USD"), maxlen=5, approximate=False
                )

            try:
                fault = await _paused_relay(stack, trim)
            finally:
                await trimmer.aclose()
            outcome = await _finish(stack, fault, "stream trimmed past the relay", before)
            assert outcome.snapshots >= 1
            resynced = max(
                next(t for t, ch in c.snapshots if ch == BOOK and t > fault.ended)
                for c in stack.clients
            )
            took = resynced - fault.ended
            print(f"fresh book snapshot at every client {took:.2f}s after SIGCONT")
            assert await relay.metric("relay_source_gaps_total") > gaps_before


async def _flowing_for(stack: Stack, seconds: float) -> None:
    seq = stack.producer.sim.seqs[BOOK]
    await wait_for(lambda: stack.producer.sim.seqs[BOOK] >= seq + 100 * seconds, 20, "the producer")


async def _paused_relay(stack: Stack, during: Callable[[], Awaitable[None]]) -> Fault:
    started = time.monotonic()
    os.kill(stack.relay.pid, signal.SIGSTOP)
    try:
        await during()
    finally:
        os.kill(stack.relay.pid, signal.SIGCONT)
    ended = time.monotonic()
    return Fault(ended, 0.0, ended - started)


async def test_loading_answers_are_retried(tmp_path: Path) -> None:
    """Restarted with an RDB that loads slowly: Redis answers -LOADING for about 2 s.
    The relay and the producer back off and retry; the streams were kept: no snapshot."""
    server = RedisProcess(save="3600 1")
    async with asyncio.timeout(60):
        async with _stack(server, tmp_path) as stack:
            filler = aioredis.Redis.from_url(server.url)
            async with filler.pipeline(transaction=False) as pipe:
                for number in range(4000):
                    pipe.set(f"filler:{number}", "x")
                await pipe.execute()
            await filler.aclose()
            before = await stack.relay.metric("relay_redis_errors_total")

            def restart_loading() -> None:
                server.stop()
                # 0.5 ms per key of 4000: about 2 s of loading, answering between keys.
                server.args = ("--key-load-delay", "500",
                               "--loading-process-events-interval-bytes", "1024")  # fmt: skip
                server.start(wait=False)

            async def loaded() -> None:
                client = aioredis.Redis.from_url(server.url)
                try:
                    await wait_for_loaded(client)
                finally:
                    await client.aclose()

            fault = await _outage(
                stack, lambda: _in_thread(restart_loading), loaded, 0.2, measure_end=True
            )
            outcome = await _finish(stack, fault, "LOADING (slow RDB load)", before)
            assert "BusyLoadingError" in stack.relay.log()  # the relay did see -LOADING
            assert outcome.snapshots == 0


async def wait_for_loaded(client: aioredis.Redis, timeout: float = 30.0) -> None:
    from redis.exceptions import BusyLoadingError, ConnectionError

    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await client.info("persistence")
            if not info["loading"]:
                return
        except (BusyLoadingError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("redis-server still loading")
        await asyncio.sleep(0.05)


async def _synced(master: aioredis.Redis, replica: aioredis.Redis) -> None:
    """Until ``replica`` is connected to ``master`` and holds everything it wrote."""

    async def offsets() -> tuple[int, int, str]:
        mine = await master.info("replication")
        theirs = await replica.info("replication")
        link = str(theirs.get("master_link_status", ""))
        return int(mine["master_repl_offset"]), int(theirs.get("slave_repl_offset", -1)), link

    deadline = time.monotonic() + 20
    while True:
        wrote, holds, link = await offsets()
        if link == "up" and wrote == holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replica not in sync: {wrote} vs {holds}, link {link}")
        await asyncio.sleep(0.02)


async def test_failover_readonly_for_the_producer_and_reads_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failover as Sentinel does it (writes paused, replica in sync, promoted): the
    Redis that the producer and the relay use becomes a replica for 1.5 s, then the
    master again. The producer gets -READONLY and retries with backoff; the relay only
    reads, so READONLY never reaches it, but its blocked XREAD is ended by the role
    change (-UNBLOCKED) and must be retried like any transient error: no rebuild, no
    snapshot, nothing lost."""
    server, other = RedisProcess(), RedisProcess()
    await asyncio.to_thread(other.start)
    try:
        async with asyncio.timeout(60), _stack(server, tmp_path) as stack:
            first = aioredis.Redis.from_url(server.url)
            second = aioredis.Redis.from_url(other.url)
            await second.replicaof("127.0.0.1", server.port)
            await _synced(first, second)
            before = await stack.relay.metric("relay_redis_errors_total")
            epoch = stack.producer.sim.epoch

            async def fail_over() -> None:
                await first.client_pause(5000, all=False)  # writes only, as Sentinel does
                await _synced(first, second)
                await second.replicaof("NO", "ONE")
                await first.replicaof("127.0.0.1", other.port)
                await first.client_unpause()

            async def fail_back() -> None:
                await _synced(second, first)
                await first.replicaof("NO", "ONE")

            fault = await _outage(stack, fail_over, fail_back, 1.5)
            outcome = await _finish(stack, fault, "failover: READONLY, UNBLOCKED", before)
            await first.aclose()
            await second.aclose()
            assert any("ReadOnlyError" in str(r.__dict__.get("error")) for r in caplog.records)
            assert stack.producer.sim.epoch == epoch
            assert outcome.snapshots == 0
            assert await stack.relay.metric("relay_ingest_failures_total") == 0
    finally:
        await asyncio.to_thread(other.cleanup)
