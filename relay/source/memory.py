"""An in-memory stream store with the Redis Streams semantics the relay relies on.

It is both sides at once: the simulator writes to a ``MemoryStore`` (XADD, hashes, atomic
snapshot-with-entry), and ``MemorySource`` reads it through the ``Source`` interface.
Everything runs in one event loop, so a synchronous method is atomic like MULTI/EXEC.
Ids are ``<ms>-<n>``, strictly increasing per stream, as Redis makes them.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence

from relay.core.entry import StreamEntry
from relay.source.base import (
    Snapshot,
    channel_of_key,
    meta_key,
    snapshot_from_fields,
    snapshot_key,
    stream_key,
)

StreamId = tuple[int, int]


def parse_id(text: str) -> StreamId:
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


class MemoryStore:
    def __init__(self) -> None:
        # Per stream: its ids and its entries, parallel lists, so reads can bisect the ids.
        self._streams: dict[str, tuple[list[StreamId], list[StreamEntry]]] = {}
        self._hashes: dict[str, dict[bytes, bytes]] = {}
        self._last_id: dict[str, StreamId] = {}
        self._changed = asyncio.Event()

    # -- writing (producer side) -----------------------------------------------------

    def xadd(self, key: str, fields: Mapping[bytes, bytes], maxlen: int | None = None) -> str:
        last = self._last_id.get(key, (0, 0))
        ms = int(time.time() * 1000)
        new = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
        self._last_id[key] = new
        entry_id = f"{new[0]}-{new[1]}"
        ids, entries = self._streams.setdefault(key, ([], []))
        ids.append(new)
        entries.append(StreamEntry(entry_id, dict(fields)))
        if maxlen is not None and len(ids) > maxlen:
            del ids[: len(ids) - maxlen]
            del entries[: len(entries) - maxlen]
        self._changed.set()
        self._changed = asyncio.Event()
        return entry_id

    def hset(self, key: str, mapping: Mapping[bytes, bytes]) -> None:
        self._hashes.setdefault(key, {}).update(mapping)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self._hashes.get(key, {}))

    def delete(self, *keys: str) -> None:
        for key in keys:
            self._streams.pop(key, None)
            self._hashes.pop(key, None)

    def stream(self, key: str) -> list[StreamEntry]:
        return list(self._streams[key][1]) if key in self._streams else []

    # -- reading ---------------------------------------------------------------------

    def _after(self, key: str, start: StreamId, inclusive: bool, count: int) -> list[StreamEntry]:
        if key not in self._streams:
            return []
        ids, entries = self._streams[key]
        i = bisect_left(ids, start)
        if not inclusive and i < len(ids) and ids[i] == start:
            i += 1
        return entries[i : i + count]

    def stream_keys(self) -> list[str]:
        return list(self._streams)

    def changed(self) -> asyncio.Event:
        return self._changed


class MemorySource:
    """``Source`` over a ``MemoryStore``."""

    def __init__(self, store: MemoryStore, prefix: str = "md:") -> None:
        self.store = store
        self.prefix = prefix

    async def discover(self) -> list[str]:
        names = (channel_of_key(self.prefix, key) for key in self.store.stream_keys())
        return sorted(name for name in names if name is not None)

    async def epochs(self, channels: Sequence[str]) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        for channel in channels:
            raw = self.store.hgetall(meta_key(self.prefix, channel)).get(b"epoch")
            result[channel] = raw.decode() if raw is not None else None
        return result

    async def snapshot(self, channel: str) -> Snapshot | None:
        fields = self.store.hgetall(snapshot_key(self.prefix, channel))
        return snapshot_from_fields(fields)

    async def entries_from(self, channel: str, start: str, count: int) -> list[StreamEntry]:
        inclusive = not start.startswith("(")
        sid = parse_id(start.lstrip("("))
        return self.store._after(stream_key(self.prefix, channel), sid, inclusive, count)

    async def last_entries(self, channel: str, count: int) -> list[StreamEntry]:
        entries = self.store.stream(stream_key(self.prefix, channel))
        return entries[-count:] if count else []

    async def read(
        self, positions: Mapping[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[StreamEntry]]]:
        waiter = self.store.changed()
        result = self._read_now(positions, count)
        if result or block_ms <= 0:
            return result
        try:
            await asyncio.wait_for(waiter.wait(), block_ms / 1000)
        except TimeoutError:
            return []
        return self._read_now(positions, count)

    def _read_now(
        self, positions: Mapping[str, str], count: int
    ) -> list[tuple[str, list[StreamEntry]]]:
        result = []
        for channel, last in positions.items():
            key = stream_key(self.prefix, channel)
            entries = self.store._after(key, parse_id(last), False, count)
            if entries:
                result.append((channel, entries))
        return result

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
