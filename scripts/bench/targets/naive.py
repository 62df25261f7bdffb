"""naive: the aiohttp relay most people would write first.

``web.run_app`` (the default asyncio loop), ``async for msg in ws`` per connection, one
task reading the streams with XREAD, and per update and per subscriber
``await ws.send_str(json.dumps(message))`` with the producer's data parsed and re-encoded
by the standard ``json`` module. It speaks the same client protocol as the relay for what
the load client uses (subscribe -> subscribed + a minimal snapshot with ``data: {}``, then
updates with seq and ts); it keeps no book, and ``data`` is re-serialized (``json.dumps``
adds spaces), so it is not byte-for-byte the producer's as the contract wants.

    python scripts/bench/targets/naive.py --port 8002 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

subscribers: dict[str, set[web.WebSocketResponse]] = {}
last_seq: dict[str, tuple[int, int]] = {}
epochs: dict[str, str] = {}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    mine: set[str] = set()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            channel = req.get("channel")
            if req.get("op") == "subscribe" and channel in subscribers:
                seq, ts = last_seq[channel]
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "subscribed",
                            "id": req.get("id"),
                            "channel": channel,
                            "epoch": epochs[channel],
                            "seq": seq,
                        }
                    )
                )
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "snapshot",
                            "channel": channel,
                            "epoch": epochs[channel],
                            "seq": seq,
                            "ts": ts,
                            "data": {},
                        }
                    )
                )
                subscribers[channel].add(ws)
                mine.add(channel)
            else:
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "error",
                            "id": req.get("id"),
                            "code": "unknown_channel",
                            "message": f"no such channel: {channel}",
                        }
                    )
                )
    finally:
        for channel in mine:
            subscribers[channel].discard(ws)
    return ws


async def reader(app: web.Application) -> AsyncIterator[None]:
    redis = aioredis.Redis.from_url(app["redis_url"], decode_responses=True)
    names = [c for c in app["channels"].split(",") if c]
    if not names:
        names = sorted([k[4:-1] async for k in redis.scan_iter(match="md:{*}", _type="stream")])
    streams = {}
    for name in names:
        subscribers[name] = set()
        epochs[name] = await redis.hget(f"md:{{{name}}}:meta", "epoch") or ""
        last = await redis.xrevrange(f"md:{{{name}}}", count=1)
        streams[f"md:{{{name}}}"] = last[0][0] if last else "0-0"
        last_seq[name] = (int(last[0][1]["seq"]), int(last[0][1]["ts"])) if last else (0, 0)

    async def loop() -> None:
        while True:
            for key, entries in await redis.xread(streams, count=100, block=1000):
                name = key[4:-1]
                for entry_id, fields in entries:
                    streams[key] = entry_id
                    message = {
                        "type": "update",
                        "channel": name,
                        "seq": int(fields["seq"]),
                        "ts": int(fields["ts"]),
                        "data": json.loads(fields["data"]),
                    }
                    last_seq[name] = (message["seq"], message["ts"])
                    for ws in list(subscribers[name]):
                        try:
                            await ws.send_str(json.dumps(message))
                        except ConnectionResetError:
                            subscribers[name].discard(ws)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channels", default="", help="comma-separated; empty = scan md:{*}")
    args = parser.parse_args()
    app = web.Application()
    app["redis_url"] = args.redis
    app["channels"] = args.channels
    app.router.add_get("/ws", websocket)
    app.cleanup_ctx.append(reader)
    # shutdown_timeout: the bench stops targets with SIGTERM and waits 15 s at most.
    web.run_app(
        app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=2
    )


if __name__ == "__main__":
    main()
