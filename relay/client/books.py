"""One channel's local state as a pure state machine: no I/O, no clock, no asyncio.

``ChannelState`` takes the relay's ``snapshot`` and ``update`` frames (decoded JSON) for one
channel and keeps the book (or the last trades) they describe. Its invariants:

- While ``status`` is LIVE, ``seq`` is the seq of the last frame applied and the state is
  the producer's state at that seq (checked against the frame's checksum on book
  channels, when the relay sends one and ``checksum_depth`` is not 0).
- An update is applied only when its seq is exactly ``seq + 1``. One at or before ``seq``
  is a duplicate and is ignored; one after ``seq + 1`` is a gap. A gap, a checksum
  mismatch or a frame that cannot be applied returns a ``ResyncReason`` and produces no
  event: the session then discards the state and asks for a fresh snapshot. So an
  update is never handed to the user unless it was applied in order to a verified state.
- A snapshot always replaces the state (contract rule 4), whatever its seq or epoch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from relay.client.events import (
    BookSnapshot,
    BookUpdate,
    ChannelCounters,
    ChannelStatus,
    Event,
    ResyncReason,
    StatusChanged,
    Trade,
    TradesSnapshot,
    TradeUpdate,
)
from relay.core.book import Book, BookError, Level
from relay.core.channel import Kind
from relay.core.checksum import DEFAULT_DEPTH, book_checksum

DEFAULT_TRADES_KEPT = 100


class LocalBook:
    """A channel's local L2 book: read it, don't change it (the client applies updates).

    Levels are the producer's own ``(price, size)`` strings; bids best first (descending
    price), asks best first (ascending). ``seq``, ``ts`` and ``epoch`` say which state of
    the producer's book this is. A snapshot makes a new ``LocalBook``; updates change the
    current one in place.
    """

    __slots__ = ("_book", "channel", "epoch", "seq", "ts")

    def __init__(self, channel: str, book: Book, *, epoch: str, seq: int, ts: int) -> None:
        self._book = book
        self.channel = channel
        self.epoch = epoch
        self.seq = seq
        self.ts = ts

    def bids(self, depth: int | None = None) -> list[Level]:
        return self._book.bid_levels(depth)

    def asks(self, depth: int | None = None) -> list[Level]:
        return self._book.ask_levels(depth)

    def best_bid(self) -> Level | None:
        return self._book.best_bid()

    def best_ask(self) -> Level | None:
        return self._book.best_ask()

    @property
    def bid_count(self) -> int:
        return len(self._book.bids)

    @property
    def ask_count(self) -> int:
        return len(self._book.asks)

    def spread(self) -> Decimal | None:
        """Best ask minus best bid; None when a side is empty."""
        bid, ask = self._book.best_bid(), self._book.best_ask()
        return None if bid is None or ask is None else Decimal(ask[0]) - Decimal(bid[0])

    def mid(self) -> Decimal | None:
        bid, ask = self._book.best_bid(), self._book.best_ask()
        return None if bid is None or ask is None else (Decimal(ask[0]) + Decimal(bid[0])) / 2

    def checksum(self, depth: int = DEFAULT_DEPTH) -> int:
        """The relay's checksum of this book (docs/protocol.md)."""
        return book_checksum(self._book, depth)

    def to_payload(self) -> dict[str, list[list[str]]]:
        """``{"bids": [[price, size], ...], "asks": [...]}``, every level, best first."""
        return self._book.to_payload()

    def to_book(self) -> Book:
        """A copy as a ``relay.core.book.Book``."""
        return self._book.copy()

    def __repr__(self) -> str:
        return (
            f"LocalBook({self.channel} seq={self.seq} bids={self.bid_count} "
            f"asks={self.ask_count} top={self.best_bid()}/{self.best_ask()})"
        )


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one frame: events for the user, or the reason to resync."""

    events: list[Event] = field(default_factory=list)
    resync: ResyncReason | None = None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ChannelState:
    """Local state of one channel; fed the frames the relay sends for it, in order."""

    def __init__(
        self,
        name: str,
        kind: Kind,
        *,
        checksum_depth: int = DEFAULT_DEPTH,
        trades_kept: int = DEFAULT_TRADES_KEPT,
    ) -> None:
        self.name = name
        self.kind = kind
        self.checksum_depth = checksum_depth if kind is Kind.BOOK else 0
        self.status = ChannelStatus.SUBSCRIBING
        self.epoch: str | None = None
        self.seq: int | None = None
        self.ts: int | None = None
        self.book: LocalBook | None = None
        self.trades: deque[Trade] = deque(maxlen=trades_kept)
        self.counters = ChannelCounters()
        # Resyncs since the last update that was applied and verified: spaces out
        # resubscribes that keep failing (a relay with another checksum depth, say).
        self.streak = 0

    @property
    def position(self) -> tuple[str, int] | None:
        """``(epoch, seq)`` of the state held, to resume from; None when there is none."""
        if self.epoch is None or self.seq is None:
            return None
        return self.epoch, self.seq

    def set_status(self, status: ChannelStatus, reason: str) -> list[Event]:
        if status is self.status:
            return []
        previous, self.status = self.status, status
        return [StatusChanged(self.name, status, previous, reason)]

    def discard(self) -> None:
        """Forget the state: the next thing applied must be a snapshot."""
        self.epoch = self.seq = self.ts = None
        self.book = None
        self.trades.clear()

    # -- frames ---------------------------------------------------------------------------

    def snapshot(self, frame: Mapping[str, Any], received_us: int) -> Step:
        self.counters.snapshots += 1
        epoch, seq, ts = frame.get("epoch"), _integer(frame.get("seq")), _integer(frame.get("ts"))
        data = frame.get("data")
        if not isinstance(epoch, str) or seq is None or ts is None or not isinstance(data, dict):
            return self._malformed()
        event: Event
        if self.kind is Kind.BOOK:
            try:
                book = Book.from_payload(data)
            except BookError:
                return self._malformed()
            checksum = frame.get("checksum")
            failed = self._verify(book, checksum)
            if failed is not None:
                return Step(resync=failed)
            local = LocalBook(self.name, book, epoch=epoch, seq=seq, ts=ts)
            self.book = local
            event = BookSnapshot(self.name, epoch, seq, ts, local, _integer(checksum), received_us)
        else:
            raw = data.get("trades")
            if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
                return self._malformed()
            trades = tuple(Trade.from_data(t) for t in raw)
            self.trades.clear()
            self.trades.extend(trades)
            event = TradesSnapshot(self.name, epoch, seq, ts, trades, received_us)
        self.epoch, self.seq, self.ts = epoch, seq, ts
        return Step([*self.set_status(ChannelStatus.LIVE, "snapshot"), event])

    def update(self, frame: Mapping[str, Any], received_us: int) -> Step:
        if self.status is not ChannelStatus.LIVE or self.seq is None:
            return Step(resync=ResyncReason.NO_SNAPSHOT)
        seq, ts = _integer(frame.get("seq")), _integer(frame.get("ts"))
        data = frame.get("data")
        if seq is None or ts is None or not isinstance(data, dict):
            return self._malformed()
        if seq <= self.seq:
            self.counters.duplicates += 1
            return Step()
        if seq != self.seq + 1:
            self.counters.gaps += 1
            return Step(resync=ResyncReason.GAP)
        event: Event
        if self.kind is Kind.BOOK:
            local = self.book
            assert local is not None  # LIVE book channels hold a book
            try:
                local._book.apply(data)  # validates every level before changing anything
            except BookError:
                return self._malformed()
            checksum = frame.get("checksum")
            failed = self._verify(local._book, checksum)
            if failed is not None:
                return Step(resync=failed)
            local.seq, local.ts = seq, ts
            event = BookUpdate(self.name, seq, ts, data, local, _integer(checksum), received_us)
        else:
            trade = Trade.from_data(data)
            self.trades.append(trade)
            event = TradeUpdate(self.name, seq, ts, trade, received_us)
        self.seq, self.ts = seq, ts
        self.counters.updates += 1
        self.streak = 0
        return Step([event])

    def _verify(self, book: Book, checksum: Any) -> ResyncReason | None:
        if checksum is None or not self.checksum_depth:
            return None
        expected = _integer(checksum)
        if expected is None:
            self.counters.malformed += 1
            return ResyncReason.MALFORMED
        if book_checksum(book, self.checksum_depth) != expected:
            self.counters.checksum_failures += 1
            return ResyncReason.CHECKSUM
        self.counters.checksums_verified += 1
        return None

    def _malformed(self) -> Step:
        self.counters.malformed += 1
        return Step(resync=ResyncReason.MALFORMED)
