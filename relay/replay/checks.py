"""What a client can check its rebuilt book against, as pure functions over a relay Book,
and a ``Verifier`` that rebuilds every book from an event stream and tallies the checks.

Checksums (computed over the producer's strings, which the Book keeps as received):
- Kraken: top 10 asks (ascending) then top 10 bids (descending); per level the price then
  the size, each with "." removed and leading zeros stripped; CRC32, unsigned.
- OKX: top 25 bids and asks interleaved ``bidPx:bidSz:askPx:askSz:...`` (the longer
  side goes on alone); CRC32 as a signed 32-bit integer.

Tops: a ``top`` Reference matches when the best bid and ask prices (and sizes, where the
venue gives them) are numerically equal. Binance bookTicker carries its update id ``u``:
after applying the diff whose last id is u, the book's top must equal the bookTicker with
the largest ``u' <= u`` (the Verifier checks each diff against all bookTickers of the
recording, since a bookTicker may be received before or after the diff it matches).
"""

from __future__ import annotations

import bisect
import functools
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from relay.core.book import Book, Level
from relay.replay.events import BookDiff, Event, Quote, Reference, Snapshot, Trade, payload
from relay.replay.venues import binance

_KRAKEN_DEPTH = 10
_OKX_DEPTH = 25


def _kraken_part(level: Level) -> str:
    price, size = level
    return price.replace(".", "").lstrip("0") + size.replace(".", "").lstrip("0")


def kraken_checksum(book: Book) -> int:
    asks = "".join(_kraken_part(level) for level in book.ask_levels(_KRAKEN_DEPTH))
    bids = "".join(_kraken_part(level) for level in book.bid_levels(_KRAKEN_DEPTH))
    return zlib.crc32((asks + bids).encode())


def okx_checksum(book: Book) -> int:
    bids, asks = book.bid_levels(_OKX_DEPTH), book.ask_levels(_OKX_DEPTH)
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


CHECKSUMS: dict[str, Callable[[Book], int]] = {"kraken": kraken_checksum, "okx": okx_checksum}


def checksum_matches(book: Book, ref: Reference) -> bool:
    """Whether the venue's checksum in ``ref`` is the book's; ValueError for a venue
    whose checksum is not known here."""
    compute = CHECKSUMS.get(ref.venue)
    if compute is None:
        raise ValueError(f"no checksum algorithm for venue {ref.venue!r}")
    return compute(book) == ref.checksum


def quote_matches(level: Level | None, quote: Quote | None) -> bool:
    """A book level against a venue quote (price, and size when the quote has one)."""
    if quote is None:
        return True
    if level is None:
        return False
    price, size = quote
    if Decimal(level[0]) != Decimal(price):
        return False
    return size is None or Decimal(level[1]) == Decimal(size)


def top_matches(book: Book, ref: Reference) -> bool:
    return quote_matches(book.best_bid(), ref.bid) and quote_matches(book.best_ask(), ref.ask)


@dataclass
class Tally:
    made: int = 0
    passed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, for messages

    def add(self, ok: bool, detail: Callable[[], str]) -> None:
        self.made += 1
        if ok:
            self.passed += 1
        elif len(self.failures) < 20:
            self.failures.append(detail())

    def __str__(self) -> str:
        return f"{self.passed}/{self.made}"


Key = tuple[str, str]  # (venue, instrument)


@dataclass
class _State:
    book: Book = field(default_factory=Book)
    last_ids: dict[str, int | str] = field(default_factory=dict)  # of the last book event
    after_snapshot: bool = True
    min_depth: tuple[int, int] | None = None
    max_depth: tuple[int, int] = (0, 0)
    # Binance: (u, best bid, best ask) after each diff, and the bookTickers.
    tops_by_u: list[tuple[int, Level | None, Level | None]] = field(default_factory=list)
    tickers: list[Reference] = field(default_factory=list)
    last_trade_id: int | None = None


class Verifier:
    """Feed it a recording's events; it rebuilds each book with relay.core.book.Book."""

    def __init__(self) -> None:
        self.states: dict[Key, _State] = {}
        self.counts: Counter[str] = Counter()
        self.checksums = Tally()
        self.tops = Tally()
        self.update_ids = Tally()  # continuity of the venue's book update ids / seq
        self.trade_ids = Tally()  # numeric trade ids, each the previous + 1
        self.crossed = Tally()  # "passed" = not crossed after a book event
        self.unchecked_refs = 0  # references with no book to check against yet
        self._finished = False

    def feed_all(self, events: Iterable[Event]) -> Verifier:
        for event in events:
            self.feed(event)
        self.finish()
        return self

    def feed(self, event: Event) -> None:
        key = (event.venue, event.instrument)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = _State()
        self.counts[type(event).__name__] += 1
        if isinstance(event, Snapshot):
            state.book = Book.from_payload(payload(event))
            state.after_snapshot = True
            state.last_ids = dict(event.ids)
            self._after_book(key, state)
        elif isinstance(event, BookDiff):
            self._continuity(key, state, event)
            state.book.apply(payload(event))
            state.after_snapshot = False
            state.last_ids = dict(event.ids)
            self._after_book(key, state)
            if event.venue in binance.VENUES:
                u = int(event.ids["u"])
                state.tops_by_u.append((u, state.book.best_bid(), state.book.best_ask()))
        elif isinstance(event, Reference):
            self._reference(key, state, event)
        else:
            self._trade(state, event)

    def _after_book(self, key: Key, state: _State) -> None:
        book = state.book
        self.crossed.add(not book.is_crossed(), lambda: f"{key} crossed: {book!r}")
        depth = (len(book.bids), len(book.asks))
        low = state.min_depth or depth
        state.min_depth = (min(low[0], depth[0]), min(low[1], depth[1]))
        state.max_depth = (max(state.max_depth[0], depth[0]), max(state.max_depth[1], depth[1]))

    def _continuity(self, key: Key, state: _State, diff: BookDiff) -> None:
        prev, ids = state.last_ids, diff.ids
        ok = ids_continue(diff.venue, prev, ids, after_snapshot=state.after_snapshot)
        if ok is not None:
            self.update_ids.add(ok, lambda: f"{key}: {dict(ids)} after {prev}")

    def _reference(self, key: Key, state: _State, ref: Reference) -> None:
        if ref.kind == "top" and "u" in ref.ids:
            state.tickers.append(ref)  # matched by update id in finish()
            return
        if not state.book.bids and not state.book.asks:
            self.unchecked_refs += 1
            return
        book = state.book
        if ref.kind == "checksum":
            self.checksums.add(
                checksum_matches(book, ref),
                lambda: f"{key} checksum {ref.checksum} at {ref.recv_ns}: {book!r}",
            )
        else:
            self.tops.add(
                top_matches(book, ref),
                lambda: f"{key} top {ref.bid}/{ref.ask} at {ref.recv_ns}: {book!r}",
            )

    def _trade(self, state: _State, trade: Trade) -> None:
        if trade.id is None or not trade.id.isdigit():
            return
        trade_id = int(trade.id)
        if state.last_trade_id is not None:
            prev = state.last_trade_id
            self.trade_ids.add(
                trade_id == prev + 1, lambda: f"{trade.instrument}: trade {trade_id} after {prev}"
            )
        state.last_trade_id = trade_id

    def finish(self) -> None:
        """Match Binance bookTickers to diffs by update id (needs the whole recording)."""
        if self._finished:
            return
        self._finished = True
        for key, state in self.states.items():
            if not state.tickers:
                continue
            tickers = sorted(state.tickers, key=lambda ref: int(ref.ids["u"]))
            ids = [int(ref.ids["u"]) for ref in tickers]
            for u, bid, ask in state.tops_by_u:
                i = bisect.bisect_right(ids, u) - 1
                if i < 0:
                    continue
                ref = tickers[i]
                ok = quote_matches(bid, ref.bid) and quote_matches(ask, ref.ask)
                self.tops.add(ok, functools.partial(_binance_miss, key, u, bid, ask, ref))

    def depth(self, venue: str, instrument: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """(fewest, most) (bids, asks) levels seen after any book event of an instrument."""
        state = self.states[(venue, instrument)]
        return state.min_depth or (0, 0), state.max_depth


def _binance_miss(key: Key, u: int, bid: Level | None, ask: Level | None, ref: Reference) -> str:
    return f"{key} diff u={u}: top {bid}/{ask}, bookTicker u={ref.ids['u']}: {ref.bid}/{ref.ask}"


def ids_continue(
    venue: str, prev: Mapping[str, Any], ids: Mapping[str, Any], *, after_snapshot: bool
) -> bool | None:
    """Whether a diff's venue update ids follow on from the previous ones (the venue's
    documented rule), or None where the venue has no such ids or nothing precedes them."""
    if not prev:
        return None  # no snapshot ids to continue from
    if venue in binance.VENUES:
        futures = venue != binance.SPOT
        first_id, last_id = int(ids["U"]), int(ids["u"])
        if after_snapshot and "u" not in prev:
            snap = int(prev["lastUpdateId"])
            want = snap if futures else snap + 1
            return first_id <= want <= last_id
        if futures:
            return bool(ids["pu"] == prev["u"])
        return first_id == int(prev["u"]) + 1
    if venue == "krakenfutures":
        return int(ids["seq"]) == int(prev["seq"]) + 1
    if venue == "bybit":
        return int(ids["u"]) == int(prev["u"]) + 1
    return None
