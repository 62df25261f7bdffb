"""The small interface the ingest loop reads through (DESIGN.md, "The source").

Errors:
- SourceUnavailable: the source could not be reached or answered with a transient error
  (connection refused or reset, timeout, LOADING, a
  blocked read ended by a failover: UNBLOCKED). The caller backs off and retries from
  the positions it already holds; nothing is lost that the stream still holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.core.entry import StreamEntry


class SourceUnavailable(Exception):
    """The source is unreachable or not answering; retry later."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The producer's snapshot hash of a book channel."""

    seq: int
    ts: int
    data: bytes
    id: str


def stream_key(prefix: str, channel: str) -> str:
    # The braces are a Redis Cluster hash tag: stream, snapshot and meta share a slot.
    return f"{prefix}{{{channel}}}"


def snapshot_key(prefix: str, channel: str) -> str:
    return f"{stream_key(prefix, channel)}:snapshot"


def meta_key(prefix: str, channel: str) -> str:
    return f"{stream_key(prefix, channel)}:meta"


def channel_of_key(prefix: str, key: str) -> str | None:
    """The channel of a stream key ``<prefix>{<channel>}``, or None for any other key."""
    if not key.startswith(prefix + "{") or not key.endswith("}"):
        return None
    return key[len(prefix) + 1 : -1]


class Source(Protocol):
    async def discover(self) -> list[str]:
        """Channels that have a stream now."""
        ...

    async def epochs(self, channels: Sequence[str]) -> dict[str, str | None]:
        """Each channel's epoch from its meta hash (None where there is none)."""
        ...

    async def snapshot(self, channel: str) -> Snapshot | None: ...

    async def entries_from(self, channel: str, start: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries with id >= ``start`` (``(id`` means strictly after)."""
        ...

    async def last_entries(self, channel: str, count: int) -> list[StreamEntry]:
        """The last ``count`` entries, oldest first."""
        ...

    async def read(
        self, positions: Mapping[str, str], block_ms: int, count: int
    ) -> list[tuple[str, list[StreamEntry]]]:
        """Entries after each channel's position, waiting up to ``block_ms`` for any."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def snapshot_from_fields(fields: Mapping[bytes, bytes]) -> Snapshot | None:
    """Decode a snapshot hash; None when absent or incomplete (treated as no snapshot)."""
    try:
        return Snapshot(
            seq=int(fields[b"seq"]),
            ts=int(fields[b"ts"]),
            data=fields[b"data"],
            id=fields[b"id"].decode(),
        )
    except (KeyError, ValueError):
        return None
