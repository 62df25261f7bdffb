"""A hand-driven producer for tests that need exact control of seq, epoch and snapshot."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from relay.source.base import meta_key, snapshot_key, stream_key


class RawProducer:
    def __init__(self, url: str, prefix: str = "md:") -> None:
        self.client = aioredis.Redis.from_url(url)
        self.prefix = prefix

    async def epoch(self, channel: str, epoch: str) -> None:
        await self.client.hset(meta_key(self.prefix, channel), "epoch", epoch)

    async def add(
        self, channel: str, seq: int | bytes, data: Any, ts: int = 1_700_000_000_000_000
    ) -> str:
        raw = data if isinstance(data, bytes) else orjson.dumps(data)
        fields = {"seq": seq if isinstance(seq, bytes) else str(seq), "ts": str(ts), "data": raw}
        return await self.add_fields(channel, fields)

    async def add_fields(self, channel: str, fields: dict[str, Any]) -> str:
        entry_id = await self.client.xadd(stream_key(self.prefix, channel), fields)  # type: ignore[arg-type]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def snapshot(
        self, channel: str, seq: int, entry_id: str, data: Any, ts: int = 1_700_000_000_000_000
    ) -> None:
        await self.client.hset(
            snapshot_key(self.prefix, channel),
            mapping={"seq": seq, "ts": ts, "data": orjson.dumps(data), "id": entry_id},
        )

    async def close(self) -> None:
        await self.client.aclose()
