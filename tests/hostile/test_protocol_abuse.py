"""Protocol abuse (docs/limits.md): error floods are closed 1008 once the error budget is
spent; subscription churn and random channel names leak nothing (memory, tasks, the hub's
tables); resume with absurd positions gets a snapshot or a clear error, never an OK."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import string
import tracemalloc
from typing import Any

import aiohttp
import orjson
from support.client import Feed, connect

from relay.limits import LIMITS

from .harness import BOOK, TRADES, Stage, poll, stage


async def _frames_until_close(feed: Feed) -> tuple[list[dict[str, Any]], aiohttp.WSMessage]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            message = await feed.ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                return frames, message
            frames.append(orjson.loads(message.data))


async def test_an_error_flood_is_closed_1008_after_the_error_budget() -> None:
    async with stage(error_burst=10.0, error_limit=0.5) as s, connect(s.relay.ws_url) as bad:
        for n in range(40):  # within the message rate (burst 50), over the error budget
            if n % 2:
                await bad.send({"op": "subscribe", "channel": f"book.NOPE{n}", "id": n})
            else:
                await bad.ws.send_str("garbage")
        frames, close = await _frames_until_close(bad)
        assert close.type is aiohttp.WSMsgType.CLOSE
        assert (close.data, close.extra) == (1008, "too many errors")
        codes = {frame["code"] for frame in frames}
        assert codes == {"invalid_json", "unknown_channel"}
        assert 11 <= len(frames) < 25  # the budget (and tokens refilled meanwhile), + 1
        assert s.metric("relay_policy_closes_total", {"reason": "error_limit"}) == 1
        await s.assert_control_healthy()


async def test_errors_within_the_budget_leave_the_connection_open() -> None:
    async with stage(error_burst=10.0, error_limit=0.5) as s, connect(s.relay.ws_url) as ok:
        for n in range(8):
            await ok.send({"op": "unsubscribe", "channel": BOOK, "id": n})
            assert (await ok.reply())["code"] == "not_subscribed"
        await ok.send({"op": "ping", "id": "alive"})
        assert await ok.reply() == {"type": "pong", "id": "alive"}
        await s.assert_control_healthy()


def _random_channel(rng: random.Random) -> str:
    kind = rng.choice(["book", "trades"])
    symbol = "".join(rng.choices(string.ascii_letters + string.digits + "_-", k=rng.randint(1, 40)))
    return f"{kind}.{symbol}"


def _relay_memory(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes held by allocations made in the relay's connection-side code: the hub, the
    server, connections, admission and the protocol (not the channels' bounded history)."""
    watched = (
        *("relay/hub.py", "relay/server.py", "relay/connection.py", "relay/gate.py"),
        *("relay/core/protocol.py", "relay/core/admission.py", "relay/metrics.py"),
    )
    return sum(
        stat.size
        for stat in snapshot.statistics("filename")
        if stat.traceback[0].filename.endswith(watched)
    )


async def _churn(feed: Feed, cycles: int, rng: random.Random) -> None:
    """Subscribe and unsubscribe real channels, and hit random names, in batches."""
    for start in range(0, cycles, 100):
        for n in range(start, start + 100):
            channel = BOOK if n % 2 else TRADES
            await feed.send({"op": "subscribe", "channel": channel, "id": n})
            await feed.send({"op": "unsubscribe", "channel": channel, "id": n})
            await feed.send({"op": "subscribe", "channel": _random_channel(rng), "id": n})
            await feed.send({"op": "unsubscribe", "channel": _random_channel(rng), "id": n})
        replies = 0
        while replies < 400:  # raw reads: no book kept from the snapshots, that is slow
            message = await feed.ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            replies += orjson.loads(message.data)["type"] != "snapshot"


def _tables(s: Stage) -> dict[str, Any]:
    hub = s.relay.relay.hub
    return {
        "channels": sorted(hub.channels),
        "subscribers": {name: len(subs) for name, subs in hub._subscribers.items()},
        "waiting": {name: len(w) for name, w in hub._waiting.items()},
        "connections": len(s.relay.relay.connections),
        "admitted": s.relay.app[LIMITS].admission.open_total,
        "subscriptions": s.metric("relay_subscriptions", {"kind": "book"})
        + s.metric("relay_subscriptions", {"kind": "trades"}),
    }


async def test_subscription_churn_and_random_channels_leak_nothing() -> None:
    many = 1_000_000.0
    async with stage(rate_limit=many, rate_burst=many, error_burst=many) as s:
        rng = random.Random(5)
        async with connect(s.relay.ws_url) as warmup:
            await _churn(warmup, 100, rng)  # first-use allocations (caches, label series)
        await poll(lambda: len(s.relay.relay.connections) == 1)
        baseline = _tables(s)
        tasks = len(asyncio.all_tasks())
        # Memory is compared between the end of a first round and the end of two more:
        # free lists and caches fill in the first round and stay; a leak grows with rounds.
        tracemalloc.start()
        try:
            held: list[int] = []
            for rounds in (1, 2):
                for _ in range(rounds):  # a connection per round: connections come and go
                    async with connect(s.relay.ws_url) as churner:
                        await _churn(churner, 1000, rng)
                    del churner
                await poll(lambda: len(s.relay.relay.connections) == 1)
                await poll(lambda: len(asyncio.all_tasks()) <= tasks)
                # The control client keeps every frame it parsed; its dicts may reuse the
                # relay's freed ones (CPython's free lists), which tracemalloc would still
                # attribute to the relay's line.
                s.control.frames.clear()
                gc.collect()
                held.append(_relay_memory(tracemalloc.take_snapshot()))
        finally:
            tracemalloc.stop()
        assert _tables(s) == baseline
        assert baseline["subscribers"] == {BOOK: 1, TRADES: 0}  # the control client only
        # 2000 more cycles, 4000 more random names (measured growth: under 1 kB): a leak
        # of 2 bytes a request would show
        assert held[1] - held[0] < 16 * 1024, held
        await s.assert_control_healthy()


async def _resume(s: Stage, resume: Any) -> list[dict[str, Any]]:
    """The frames answering a subscribe with ``resume``, up to the snapshot or error."""
    async with connect(s.relay.ws_url) as feed:
        # the stdlib's encoder: it writes integers beyond 64 bits, which orjson refuses
        await feed.ws.send_str(
            json.dumps({"op": "subscribe", "channel": BOOK, "id": 1, "resume": resume})
        )
        frames = [await feed.receive()]
        if frames[0]["type"] == "subscribed":
            frames.append(await feed.receive())
        return frames


async def test_resume_with_absurd_positions_gets_a_snapshot_never_an_ok() -> None:
    async with stage() as s:
        await poll(lambda: s.control.views[BOOK].seq is not None)
        epoch = s.control.views[BOOK].epoch
        head = s.sim.seqs[BOOK]
        snapshot_cases: list[object] = [
            {"epoch": epoch, "seq": -1},
            {"epoch": epoch, "seq": -(2**63)},
            {"epoch": epoch, "seq": head + 1_000},  # beyond what the producer wrote
            {"epoch": epoch, "seq": 2**53 - 1},
            {"epoch": epoch, "seq": 2**64 - 1},
            {"epoch": "another-epoch", "seq": 3},
            {"epoch": "", "seq": 3},
            {"epoch": "x" * 1_000, "seq": 3},
        ]
        for resume in snapshot_cases:
            subscribed, snapshot = await _resume(s, resume)
            assert subscribed["resumed"] is False, resume
            assert snapshot["type"] == "snapshot", resume
            assert subscribed["seq"] == snapshot["seq"] <= s.sim.seqs[BOOK]
        error_cases: list[object] = [
            {"epoch": epoch, "seq": 1.5},
            {"epoch": epoch, "seq": "5"},
            {"epoch": epoch, "seq": True},
            {"epoch": epoch, "seq": None},
            {"epoch": epoch, "seq": 2**64},  # beyond 64 bits: a float to JSON parsers
            {"epoch": 7, "seq": 3},
            {"seq": 3},
            [epoch, 3],
            "latest",
        ]
        for resume in error_cases:
            (error,) = await _resume(s, resume)
            assert (error["type"], error["code"], error["id"]) == ("error", "invalid_resume", 1)
        assert s.metric("relay_resumes_total", {"outcome": "replayed"}) == 0
        assert s.metric("relay_resumes_total", {"outcome": "snapshot"}) == len(snapshot_cases)
        await s.assert_control_healthy()


async def test_a_resume_within_history_still_replays() -> None:
    """The control for the absurd cases: a sane resume is answered with the updates."""
    async with stage() as s:
        await poll(lambda: len(s.control.views[BOOK].updates) >= 5)
        view = s.control.views[BOOK]
        seq = view.updates[1]
        async with connect(s.relay.ws_url) as feed:
            await feed.subscribe(BOOK, request_id=1, resume={"epoch": view.epoch, "seq": seq})
            subscribed = await feed.receive()
            assert (subscribed["resumed"], subscribed["seq"]) == (True, seq)
            assert (await feed.receive())["seq"] == seq + 1
        await s.assert_control_healthy()
