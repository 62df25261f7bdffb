"""Coinbase Pro legacy ws-feed (cryptofeed recordings): level2, ticker, matches.

- ``snapshot`` (whole book) and ``l2update`` (``changes: [[side, price, new_size]]``, side
  ``buy`` = bid; size "0" removes) give the book.
- ``ticker`` gives best_bid/best_ask after each trade: a ``top`` Reference describing the
  book at the time it is received. The first ticker of each product is sent at subscribe
  time and may be stale (older than the book snapshot), so it is skipped.
- ``match`` and ``last_match`` (the trade just before subscribing) are trades. Their
  ``side`` is the maker's side, so the taker side is the other one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from relay.replay.events import BookDiff, Event, Level, Reference, Snapshot, Trade
from relay.replay.venues import cryptofeed

VENUE = "coinbase"
_SKIPPED = {"subscriptions", "heartbeat", "status"}
_TAKER: dict[str, Literal["buy", "sell"]] = {"buy": "sell", "sell": "buy"}


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((str(level[0]), str(level[1])) for level in raw)


class _Parser:
    def __init__(self) -> None:
        self.tickers_seen: set[str] = set()

    def message(self, recv_ns: int, msg: Any) -> list[Event]:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        kind = msg["type"]
        if kind == "snapshot":
            bids, asks = _levels(msg["bids"]), _levels(msg["asks"])
            return [Snapshot(VENUE, msg["product_id"], recv_ns, bids, asks)]
        if kind == "l2update":
            return [self._update(recv_ns, msg)]
        if kind == "ticker":
            return self._ticker(recv_ns, msg)
        if kind in ("match", "last_match"):
            return [self._match(recv_ns, msg)]
        if kind in _SKIPPED:
            return []
        if kind == "error":
            raise ValueError(f"the venue answered an error: {msg.get('message')!r}")
        raise ValueError(f"unsupported Coinbase message type {kind!r}")

    def _update(self, recv_ns: int, msg: dict[str, Any]) -> BookDiff:
        bids: list[Level] = []
        asks: list[Level] = []
        for side, price, size in msg["changes"]:
            if side == "buy":
                bids.append((price, size))
            elif side == "sell":
                asks.append((price, size))
            else:
                raise ValueError(f"change side {side!r} is neither buy nor sell")
        return BookDiff(VENUE, msg["product_id"], recv_ns, tuple(bids), tuple(asks))

    def _ticker(self, recv_ns: int, msg: dict[str, Any]) -> list[Event]:
        product = msg["product_id"]
        if product not in self.tickers_seen:
            self.tickers_seen.add(product)
            return []
        ids = {"sequence": msg["sequence"]}
        bid, ask = (msg["best_bid"], None), (msg["best_ask"], None)
        return [Reference(VENUE, product, recv_ns, "top", bid=bid, ask=ask, ids=ids)]

    def _match(self, recv_ns: int, msg: dict[str, Any]) -> Trade:
        taker = _TAKER[msg["side"]]
        trade_id = str(msg["trade_id"])
        ids = {"sequence": msg["sequence"], "time": msg["time"]}
        product, price, size = msg["product_id"], msg["price"], msg["size"]
        return Trade(VENUE, product, recv_ns, trade_id, price, size, taker, ids)


def events(paths: Sequence[Path]) -> Iterator[Event]:
    return cryptofeed.events(paths, lambda: _Parser().message)


def sniff(lines: Sequence[str]) -> bool:
    return "coinbase.com" in cryptofeed.url(lines)
