"""Kraken spot WebSocket v1 (cryptofeed recordings): book-N with CRC32 checksums, trades.

Book messages are ``[channelID, {"as"|"a": [...]}, ({"b"|"bs": [...]},) "book-N", pair]``
with levels ``[price, volume, time(, "r")]`` and the checksum ``"c"`` in the last dict.
A volume of zero deletes the level.

Kraken keeps only N levels a side: after each update it drops the levels pushed below the
Nth, without saying so. The parser keeps the book to see those and adds explicit removals
to the BookDiff, so that a book built from the events equals Kraken's (and its checksum).
Each update is followed by a ``checksum`` Reference (unsigned CRC32, see checks.py).

Trades ``[channelID, [[price, volume, time, side, type, misc], ...], "trade", pair]`` have no
trade id (Trade.id is None). Ticker messages are skipped: Kraken's ticker is not sent in
step with the book, so it is no strict reference; so are other channels (spread, ohlc).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.core.book import Book
from relay.replay.events import BookDiff, Event, Level, Reference, Side, Snapshot, Trade
from relay.replay.venues import cryptofeed

VENUE = "kraken"
_REMOVE = "0"


def _levels(raw: Any) -> list[Level]:
    return [(str(level[0]), str(level[1])) for level in raw]


def _pushed_out(levels: list[Level], depth: int) -> list[Level]:
    return [(price, _REMOVE) for price, _ in levels[depth:]]


class _Parser:
    def __init__(self) -> None:
        self.books: dict[str, Book] = {}

    def message(self, recv_ns: int, msg: Any) -> list[Event]:
        if isinstance(msg, dict):
            if "event" not in msg:
                raise ValueError("a JSON object that is no Kraken event")
            return []  # systemStatus, subscriptionStatus, heartbeat
        if not isinstance(msg, list) or len(msg) < 4:
            raise ValueError("expected [channelID, payload..., channelName, pair]")
        channel, pair, payloads = str(msg[-2]), str(msg[-1]), msg[1:-2]
        if channel.startswith("book-"):
            return self._book(recv_ns, pair, int(channel[5:]), payloads)
        if channel == "trade":
            return [self._trade(recv_ns, pair, raw) for raw in payloads[0]]
        return []

    def _book(self, recv_ns: int, pair: str, depth: int, payloads: list[Any]) -> list[Event]:
        merged: dict[str, Any] = {}
        for payload in payloads:
            merged.update(payload)
        if "as" in merged or "bs" in merged:
            book = self.books[pair] = Book.from_payload(
                {"bids": _levels(merged.get("bs", [])), "asks": _levels(merged.get("as", []))}
            )
            bids, asks = book.bid_levels(), book.ask_levels()
            return [Snapshot(VENUE, pair, recv_ns, tuple(bids), tuple(asks))]
        if pair not in self.books:
            raise ValueError(f"book update for {pair} before its snapshot")
        book = self.books[pair]
        bids, asks = _levels(merged.get("b", [])), _levels(merged.get("a", []))
        book.apply({"bids": bids, "asks": asks})
        # Only a side longer than the depth can have levels pushed out; len() is cheap.
        if len(book.bids) > depth:
            cut = _pushed_out(book.bid_levels(), depth)
            book.apply({"bids": cut})
            bids += cut
        if len(book.asks) > depth:
            cut = _pushed_out(book.ask_levels(), depth)
            book.apply({"asks": cut})
            asks += cut
        events: list[Event] = [BookDiff(VENUE, pair, recv_ns, tuple(bids), tuple(asks))]
        if "c" in merged:
            checksum = int(merged["c"])
            events.append(Reference(VENUE, pair, recv_ns, "checksum", checksum=checksum))
        return events

    def _trade(self, recv_ns: int, pair: str, raw: Any) -> Trade:
        price, volume, when, side = raw[0], raw[1], raw[2], raw[3]
        if side not in ("b", "s"):
            raise ValueError(f"trade side {side!r} is neither 'b' nor 's'")
        taker: Side = "buy" if side == "b" else "sell"
        return Trade(VENUE, pair, recv_ns, None, price, volume, taker, {"time": when})


def events(paths: Sequence[Path]) -> Iterator[Event]:
    """Events of Kraken recordings (book, trade and ticker files, one connection each)."""
    return cryptofeed.events(paths, lambda: _Parser().message)


def sniff(lines: Sequence[str]) -> bool:
    return cryptofeed.url(lines).startswith("wss://ws.kraken.com")
