"""Hand-made relay frames for the SDK's pure state machine.

``FakeRelay`` plays the relay's side of the protocol for a few channels, per the contract
(subscribed before snapshot, resume within its history, checksums of the book after each
seq), without any I/O: tests move its producer on, pass its frames (or altered copies)
to a ``Session`` and answer the session's requests with it. It remembers the book after
every seq, so a test can check any book the SDK hands out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.core.book import Book
from relay.core.checksum import book_checksum
from relay.market import Instrument, Market

TS = 1_700_000_000_000_000


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def snapshot_frame(
    channel: str,
    seq: int,
    data: dict[str, Any],
    *,
    epoch: str = "e1",
    checksum: int | None = None,
    ts: int = TS,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "snapshot",
        "channel": channel,
        "epoch": epoch,
        "seq": seq,
        "ts": ts + seq,
    }
    if checksum is not None:
        frame["checksum"] = checksum
    frame["data"] = data
    return frame


def update_frame(
    channel: str, seq: int, data: dict[str, Any], *, checksum: int | None = None, ts: int = TS
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "update", "channel": channel, "seq": seq, "ts": ts + seq}
    if checksum is not None:
        frame["checksum"] = checksum
    frame["data"] = data
    return frame


@dataclass
class FakeChannel:
    name: str
    seq: int = 0
    book: Book = field(default_factory=Book)
    trades: list[dict[str, Any]] = field(default_factory=list)
    history: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (seq, frame)
    books: dict[int, Book] = field(default_factory=dict)  # the book after each seq

    @property
    def is_book(self) -> bool:
        return self.name.startswith("book.")


class FakeRelay:
    """The relay's side of one connection, for a handful of channels."""

    def __init__(
        self,
        channels: list[str],
        *,
        epoch: str = "e1",
        history: int = 1000,
        trades_kept: int = 50,
        checksum_depth: int = 10,
        seed: int = 1,
        start_seq: int = 5,
    ) -> None:
        self.epoch = epoch
        self.history = history
        self.trades_kept = trades_kept
        self.checksum_depth = checksum_depth
        self.channels = {name: FakeChannel(name) for name in channels}
        self.subscribed: set[str] = set()
        self._markets = {
            name: Market(Instrument(name.split(".", 1)[1], 100.0, 0.5), random.Random(seed), 12)
            for name in channels
        }
        for name in channels:
            channel = self.channels[name]
            if channel.is_book:
                channel.book = Book.from_payload(self._markets[name].book_payload())
            channel.seq = start_seq
            channel.books[start_seq] = channel.book.copy()

    # -- the producer ---------------------------------------------------------------------

    def step(self, name: str) -> dict[str, Any]:
        """The producer moves ``name`` on by one seq; returns the update frame for it."""
        channel = self.channels[name]
        market = self._markets[name]
        channel.seq += 1
        if channel.is_book:
            diff, _ = market.step()
            channel.book.apply(diff)
            channel.books[channel.seq] = channel.book.copy()
            frame = update_frame(name, channel.seq, diff, checksum=self._checksum(channel.book))
        else:
            trade = {"id": str(channel.seq), "price": "100.5", "size": "0.1", "side": "buy"}
            channel.trades.append(trade)
            frame = update_frame(name, channel.seq, trade)
        channel.history = [*channel.history, (channel.seq, frame)][-self.history :]
        return frame

    def snapshot(self, name: str) -> dict[str, Any]:
        channel = self.channels[name]
        if channel.is_book:
            return snapshot_frame(
                name,
                channel.seq,
                channel.book.to_payload(),
                epoch=self.epoch,
                checksum=self._checksum(channel.book),
            )
        kept = channel.trades[-self.trades_kept :] if self.trades_kept else []
        return snapshot_frame(name, channel.seq, {"trades": kept}, epoch=self.epoch)

    def _checksum(self, book: Book) -> int | None:
        return book_checksum(book, self.checksum_depth) if self.checksum_depth else None

    # -- the connection -------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The frames the relay sends in answer to one request."""
        name, request_id = request["channel"], request["id"]
        if request["op"] == "unsubscribe":
            if name not in self.subscribed:
                return [error(request_id, "not_subscribed")]
            self.subscribed.discard(name)
            return [{"type": "unsubscribed", "id": request_id, "channel": name}]
        if name in self.subscribed:
            return [error(request_id, "already_subscribed")]
        if name not in self.channels:
            return [error(request_id, "unknown_channel")]
        self.subscribed.add(name)
        channel = self.channels[name]
        head: dict[str, Any] = {"type": "subscribed", "id": request_id, "channel": name}
        resume = request.get("resume")
        if resume is not None:
            replay = self._replay(channel, resume["epoch"], resume["seq"])
            if replay is not None:
                head |= {"epoch": self.epoch, "seq": resume["seq"], "resumed": True}
                return [head, *replay]
            head |= {"epoch": self.epoch, "seq": channel.seq, "resumed": False}
            return [head, self.snapshot(name)]
        head |= {"epoch": self.epoch, "seq": channel.seq}
        return [head, self.snapshot(name)]

    def _replay(self, channel: FakeChannel, epoch: str, seq: int) -> list[dict[str, Any]] | None:
        if epoch != self.epoch or seq > channel.seq or seq < 0:
            return None
        if seq == channel.seq:
            return []
        frames = [frame for s, frame in channel.history if s > seq]
        if not frames or frames[0]["seq"] != seq + 1:
            return None
        return frames

    def disconnect(self) -> None:
        self.subscribed.clear()


def error(request_id: int | str | None, code: str, message: str = "") -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error"}
    if request_id is not None:
        frame["id"] = request_id
    return frame | {"code": code, "message": message or code}
