"""``relay tail``: print a relay's frames for some channels, one JSON line each.

For operators and for trying the relay out: it subscribes, prints every frame as it
arrives, and says on stderr when a channel's seq does not follow on (which, by contract
rule 1, never happens without a snapshot in between).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import aiohttp
import orjson


async def tail(url: str, channels: Sequence[str], limit: int | None = None) -> int:
    """Print frames until ``limit`` updates were seen (or forever); returns the gap count."""
    seqs: dict[str, int] = {}
    gaps = updates = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for n, channel in enumerate(channels):
            await ws.send_str(
                orjson.dumps({"op": "subscribe", "channel": channel, "id": n}).decode()
            )
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            print(message.data, flush=True)
            frame = orjson.loads(message.data)
            if frame["type"] == "snapshot":
                seqs[frame["channel"]] = frame["seq"]
            elif frame["type"] == "update":
                channel, seq = frame["channel"], frame["seq"]
                if channel in seqs and seq != seqs[channel] + 1:
                    gaps += 1
                    print(
                        f"relay tail: gap on {channel}: {seqs[channel]} -> {seq}", file=sys.stderr
                    )
                seqs[channel] = seq
                updates += 1
                if limit is not None and updates >= limit:
                    break
        if ws.close_code is not None and ws.close_code != 1000:
            print(
                f"relay tail: closed with {ws.close_code} {ws.exception() or ''}", file=sys.stderr
            )
    return gaps
