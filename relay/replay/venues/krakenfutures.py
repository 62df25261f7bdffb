"""Kraken Futures WebSocket v1 (cryptofeed recordings): book, ticker_lite, trade.

Prices and quantities are JSON numbers here; they are read as their source text so that
the book keeps the venue's own digits.

- ``book_snapshot`` is the whole book (ids: its ``seq``); each ``book`` message sets one
  level (``side`` buy/sell, ``price``, ``qty``; qty 0 deletes) and carries the product's
  ``seq``, exactly the previous one + 1 (a gap is an error).
- ``ticker_lite`` gives ``bid``/``ask``: a ``top`` Reference of the book at receipt.
- ``trade_snapshot`` (recent trades, newest first) and ``trade`` are trades (id ``uid``,
  taker side); the snapshot's trades are emitted oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.replay.events import BookDiff, Event, Level, Reference, Snapshot, Trade
from relay.replay.lines import loads_exact
from relay.replay.venues import cryptofeed

VENUE = "krakenfutures"


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((str(level["price"]), str(level["qty"])) for level in raw)


def _trade(recv_ns: int, raw: dict[str, Any]) -> Trade:
    side = raw["side"]
    if side not in ("buy", "sell"):
        raise ValueError(f"trade side {side!r} is neither buy nor sell")
    ids = {"seq": int(raw["seq"]), "time": int(raw["time"])}
    product, price, qty = raw["product_id"], raw["price"], raw["qty"]
    return Trade(VENUE, product, recv_ns, str(raw["uid"]), price, qty, side, ids)


class _Parser:
    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}

    def message(self, recv_ns: int, msg: Any) -> list[Event]:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        if "event" in msg:
            if msg["event"] in ("error", "alert"):
                raise ValueError(f"the venue answered an error: {msg.get('message')!r}")
            return []  # info, subscribed
        feed = msg["feed"]
        if feed == "book_snapshot":
            product, seq = msg["product_id"], int(msg["seq"])
            self.seqs[product] = seq
            bids, asks = _levels(msg["bids"]), _levels(msg["asks"])
            return [Snapshot(VENUE, product, recv_ns, bids, asks, {"seq": seq})]
        if feed == "book":
            return [self._delta(recv_ns, msg)]
        if feed == "ticker_lite":
            bid, ask = (str(msg["bid"]), None), (str(msg["ask"]), None)
            return [Reference(VENUE, msg["product_id"], recv_ns, "top", bid=bid, ask=ask)]
        if feed == "trade_snapshot":
            trades = sorted(msg["trades"], key=lambda raw: int(raw["seq"]))
            return [_trade(recv_ns, raw) for raw in trades]
        if feed == "trade":
            return [_trade(recv_ns, msg)]
        if feed in ("heartbeat", "ticker"):
            return []
        raise ValueError(f"unsupported Kraken Futures feed {feed!r}")

    def _delta(self, recv_ns: int, msg: dict[str, Any]) -> BookDiff:
        product, seq = msg["product_id"], int(msg["seq"])
        if product not in self.seqs:
            raise ValueError(f"book delta for {product} before its book_snapshot")
        if seq != self.seqs[product] + 1:
            raise ValueError(f"seq gap in {product}: {seq} after {self.seqs[product]}")
        self.seqs[product] = seq
        level: Level = (str(msg["price"]), str(msg["qty"]))
        side = msg["side"]
        if side not in ("buy", "sell"):
            raise ValueError(f"book side {side!r} is neither buy nor sell")
        bids, asks = ((level,), ()) if side == "buy" else ((), (level,))
        return BookDiff(VENUE, product, recv_ns, bids, asks, {"seq": seq})


def events(paths: Sequence[Path]) -> Iterator[Event]:
    return cryptofeed.events(paths, lambda: _Parser().message, loads_exact)


def sniff(lines: Sequence[str]) -> bool:
    return "futures.kraken.com" in cryptofeed.url(lines)
