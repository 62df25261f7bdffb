"""A simulated market: one instrument's L2 book around a random-walk mid, and its trades.

Pure and deterministic for a given seed. Prices live on an integer tick grid and are
formatted the same way every time (contract: one level, one string). Invariants kept
after every step: best bid < best ask, every size > 0, at most ``depth`` levels a side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

DEFAULT_SYMBOLS = (
    ("BTC-USD", 43000.0, 0.5),
    ("ETH-USD", 2300.0, 0.05),
    ("SOL-USD", 95.0, 0.01),
)


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    price: float
    tick: float

    @property
    def decimals(self) -> int:
        text = f"{self.tick:.8f}".rstrip("0")
        return len(text.split(".")[1]) if "." in text else 0


def instruments(count: int) -> list[Instrument]:
    """The first ``count`` symbols: BTC, ETH, SOL, then SYM4-USD, SYM5-USD..."""
    chosen = [Instrument(*spec) for spec in DEFAULT_SYMBOLS[:count]]
    for i in range(len(chosen), count):
        chosen.append(Instrument(f"SYM{i + 1}-USD", 10.0 + i, 0.001))
    return chosen


class Market:
    def __init__(self, instrument: Instrument, rng: random.Random, depth: int = 200) -> None:
        self.instrument = instrument
        self.rng = rng
        self.depth = depth
        self._scale = 10**instrument.decimals
        self._tick_units = round(instrument.tick * self._scale)
        mid = round(instrument.price / instrument.tick)
        self.bids: dict[int, str] = {}
        self.asks: dict[int, str] = {}
        for k in range(depth):
            self.bids[mid - 1 - k] = self._size(k)
            self.asks[mid + 1 + k] = self._size(k)
        self.trade_id = 0

    # -- formatting: one level, one string ---------------------------------------------

    def price(self, ticks: int) -> str:
        units = ticks * self._tick_units
        if not self.instrument.decimals:
            return str(units)
        whole, frac = divmod(units, self._scale)
        return f"{whole}.{frac:0{self.instrument.decimals}d}"

    def _size(self, distance: int) -> str:
        # Deeper levels hold more, as real books do; 4 decimals like a lot size.
        mean = 0.5 + distance * 0.05
        return f"{self.rng.uniform(0.0001, 2 * mean):.4f}"

    def book_payload(self) -> dict[str, Any]:
        return {
            "bids": [[self.price(t), self.bids[t]] for t in sorted(self.bids, reverse=True)],
            "asks": [[self.price(t), self.asks[t]] for t in sorted(self.asks)],
        }

    # -- steps ---------------------------------------------------------------------------

    def step(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One event: a book diff, and the trade that caused it, if any."""
        roll = self.rng.random()
        if roll < 0.15:
            return self._trade()
        if roll < 0.25:
            return self._quote_inside(), None
        return self._resize(), None

    def _diff(self, bids: dict[int, str], asks: dict[int, str]) -> dict[str, Any]:
        return {
            "bids": [[self.price(t), s] for t, s in sorted(bids.items(), reverse=True)],
            "asks": [[self.price(t), s] for t, s in sorted(asks.items())],
        }

    def _resize(self) -> dict[str, Any]:
        side, book = ("bids", self.bids) if self.rng.random() < 0.5 else ("asks", self.asks)
        ordered = sorted(book, reverse=side == "bids")
        distance = min(int(self.rng.expovariate(0.1)), len(ordered) - 1)
        tick = ordered[distance]
        if self.rng.random() < 0.1 and len(book) > self.depth // 2:
            del book[tick]
            size = "0"
        else:
            size = book[tick] = self._size(distance)
        changes = {tick: size}
        return self._diff(changes, {}) if side == "bids" else self._diff({}, changes)

    def _quote_inside(self) -> dict[str, Any]:
        """A new best bid or ask inside the spread, or a level filled in behind it."""
        best_bid, best_ask = max(self.bids), min(self.asks)
        bids: dict[int, str] = {}
        asks: dict[int, str] = {}
        if best_ask - best_bid > 1:
            if self.rng.random() < 0.5:
                bids[best_bid + 1] = self.bids[best_bid + 1] = self._size(0)
            else:
                asks[best_ask - 1] = self.asks[best_ask - 1] = self._size(0)
        else:
            bids[best_bid - 1] = self.bids[best_bid - 1] = self._size(1)
        self._trim(bids, asks)
        return self._diff(bids, asks)

    def _trade(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A taker order eats into the best level of the other side."""
        side = "buy" if self.rng.random() < 0.5 else "sell"
        book = self.asks if side == "buy" else self.bids
        tick = min(book) if side == "buy" else max(book)
        available = float(book[tick])
        take = min(available, round(self.rng.uniform(0.0001, available * 1.2), 4))
        remaining = round(available - take, 4)
        if remaining <= 0 or len(book) <= 2:
            remaining = 0.0 if len(book) > 2 else available
        size = f"{remaining:.4f}" if remaining > 0 else "0"
        if remaining > 0:
            book[tick] = size
        else:
            del book[tick]
        self.trade_id += 1
        trade = {
            "id": str(self.trade_id),
            "price": self.price(tick),
            "size": f"{max(take, 0.0001):.4f}",
            "side": side,
        }
        changes = {tick: size}
        diff = self._diff({}, changes) if side == "buy" else self._diff(changes, {})
        return diff, trade

    def _trim(self, bids: dict[int, str], asks: dict[int, str]) -> None:
        """Keep at most ``depth`` levels a side; the deepest go, announced with size 0."""
        while len(self.bids) > self.depth:
            deepest = min(self.bids)
            del self.bids[deepest]
            bids[deepest] = "0"
        while len(self.asks) > self.depth:
            deepest = max(self.asks)
            del self.asks[deepest]
            asks[deepest] = "0"
