"""A test client that keeps books the way a user's client must, and records every frame.

``Feed`` applies snapshot + updates per channel and records seq continuity, so tests can
assert in the contract's terms: gapless, duplicate-free, books equal to the producer's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from relay.core.book import Book
from relay.core.checksum import book_checksum


@dataclass
class ChannelView:
    epoch: str = ""
    seq: int | None = None
    book: Book = field(default_factory=Book)
    snapshots: int = 0
    updates: list[int] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected, got)
    trades: list[Any] = field(default_factory=list)
    checksums: int = 0  # book frames whose checksum was verified
    checksum_failures: list[int] = field(default_factory=list)  # seqs


class Feed:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.views: dict[str, ChannelView] = {}
        self.replies: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def subscribe(self, channel: str, request_id: Any = None, **extra: Any) -> None:
        message: dict[str, Any] = {"op": "subscribe", "channel": channel, **extra}
        if request_id is not None:
            message["id"] = request_id
        await self.send(message)

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected a text frame, got {message.type!r} {message.data!r}")
        frame: dict[str, Any] = orjson.loads(message.data)
        self.frames.append(frame)
        self._track(frame)
        return frame

    async def reply(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame that is not a snapshot or an update."""
        while True:
            frame = await self.receive(timeout)
            if frame["type"] not in {"snapshot", "update"}:
                return frame

    def _track(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "snapshot":
            view = self.views.setdefault(frame["channel"], ChannelView())
            view.epoch, view.seq = frame["epoch"], frame["seq"]
            view.snapshots += 1
            data = frame["data"]
            if "trades" in data:
                view.trades = list(data["trades"])
            else:
                view.book = Book.from_payload(data)
                self._verify(view, frame)
        elif kind == "update":
            view = self.views.setdefault(frame["channel"], ChannelView())
            if view.seq is not None and frame["seq"] != view.seq + 1:
                view.gaps.append((view.seq + 1, frame["seq"]))
            view.seq = frame["seq"]
            view.updates.append(frame["seq"])
            data = frame["data"]
            if "bids" in data or "asks" in data:
                view.book.apply(data)
                self._verify(view, frame)
            else:
                view.trades.append(data)
        elif kind == "subscribed":
            view = self.views.setdefault(frame["channel"], ChannelView())
            view.epoch = frame["epoch"]
            if frame.get("resumed"):
                view.seq = frame["seq"]
            self.replies.append(frame)
        else:
            self.replies.append(frame)

    @staticmethod
    def _verify(view: ChannelView, frame: dict[str, Any]) -> None:
        if "checksum" in frame:
            view.checksums += 1
            if frame["checksum"] != book_checksum(view.book):
                view.checksum_failures.append(frame["seq"])

    async def until(self, channel: str, seq: int, timeout: float = 10.0) -> ChannelView:
        """Read frames until ``channel`` reached ``seq``."""
        async with asyncio.timeout(timeout):
            while True:
                view = self.views.get(channel)
                if view is not None and view.seq is not None and view.seq >= seq:
                    return view
                await self.receive(timeout)


@contextlib.asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[Feed]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, **kwargs) as ws:
        yield Feed(ws)
