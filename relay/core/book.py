"""An L2 order book keyed by price, holding the producer's own strings.

Invariants:
- ``bids`` and ``asks`` map a numeric price to the producer's ``(price, size)`` strings,
  exactly as received (contract rule 2: exchange checksums are computed over those strings).
- No level has a zero size: a diff with size zero removes the level.
- ``_bid_keys`` / ``_ask_keys`` are the sorted keys of those maps (ascending); best bid is the
  last bid key, best ask the first ask key.
"""

from __future__ import annotations

import re
from bisect import bisect_left, insort
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

Level = tuple[str, str]

_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


class BookError(ValueError):
    """A diff or snapshot that is not a well-formed book payload."""


# (numeric price, the producer's price string, its size string, whether it removes the
# level). A plain tuple: this is built for every level of every update (the hot path).
ParsedLevel = tuple[Decimal, str, str, bool]


def _parse_level(raw: Any) -> ParsedLevel:
    if not isinstance(raw, list | tuple) or len(raw) < 2:
        raise BookError(f"level must be [price, size], got {raw!r}")
    price, size = raw[0], raw[1]
    if not isinstance(price, str) or not isinstance(size, str):
        raise BookError(f"price and size must be decimal strings, got {raw!r}")
    # Decimal() alone would take "1_000", "1e3", "NaN" and non-ASCII digits, which
    # clients' number parsers reject: only plain ASCII decimals go to the wire. On ASCII
    # text isdigit() is [0-9]+, and it is three times cheaper than the regex.
    head, dot, tail = price.partition(".")
    if not (price.isascii() and head.isdigit() and (not dot or tail.isdigit())):
        raise BookError(f"not a plain decimal number in level {raw!r}")
    head, dot, tail = size.partition(".")
    if not (size.isascii() and head.isdigit() and (not dot or tail.isdigit())):
        if size.startswith("-") and _DECIMAL.fullmatch(size[1:]):
            raise BookError(f"negative size in level {raw!r}")
        raise BookError(f"not a plain decimal number in level {raw!r}")
    # A plain decimal is zero exactly when it has no digit but 0 (no Decimal needed).
    return (Decimal(price), price, size, not size.strip("0."))


def parse_side(payload: dict[str, Any], side: str) -> list[ParsedLevel]:
    raw = payload.get(side, [])
    if not isinstance(raw, list):
        raise BookError(f"{side!r} must be a list of levels")
    return [_parse_level(level) for level in raw]


class Book:
    """Both sides of one instrument's book. Pure data structure, no I/O."""

    __slots__ = ("_ask_keys", "_bid_keys", "asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[Decimal, Level] = {}
        self.asks: dict[Decimal, Level] = {}
        self._bid_keys: list[Decimal] = []
        self._ask_keys: list[Decimal] = []

    @classmethod
    def from_payload(cls, payload: Any) -> Book:
        book = cls()
        book.apply(payload)
        return book

    def apply(self, payload: Any) -> None:
        """Apply a diff (``{"bids": [...], "asks": [...]}``); validates everything first.

        Raises BookError without touching the book when any level is malformed, so a bad
        entry never leaves a half-applied diff behind.
        """
        if not isinstance(payload, dict):
            raise BookError("book payload must be a JSON object")
        bids = parse_side(payload, "bids")
        asks = parse_side(payload, "asks")
        _apply_side(self.bids, self._bid_keys, bids)
        _apply_side(self.asks, self._ask_keys, asks)

    def bid_levels(self, depth: int | None = None) -> list[Level]:
        """Bids best first (descending price)."""
        keys = self._bid_keys if depth is None else self._bid_keys[-depth:] if depth else []
        return list(map(self.bids.__getitem__, reversed(keys)))

    def ask_levels(self, depth: int | None = None) -> list[Level]:
        """Asks best first (ascending price)."""
        keys = self._ask_keys if depth is None else self._ask_keys[:depth]
        return list(map(self.asks.__getitem__, keys))

    def best_bid(self) -> Level | None:
        return self.bids[self._bid_keys[-1]] if self._bid_keys else None

    def best_ask(self) -> Level | None:
        return self.asks[self._ask_keys[0]] if self._ask_keys else None

    def is_crossed(self) -> bool:
        return bool(self._bid_keys and self._ask_keys and self._bid_keys[-1] >= self._ask_keys[0])

    def to_payload(self) -> dict[str, list[list[str]]]:
        return {
            "bids": [list(level) for level in self.bid_levels()],
            "asks": [list(level) for level in self.ask_levels()],
        }

    def copy(self) -> Book:
        other = Book()
        other.bids = dict(self.bids)
        other.asks = dict(self.asks)
        other._bid_keys = list(self._bid_keys)
        other._ask_keys = list(self._ask_keys)
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Book):
            return NotImplemented
        return self.bids == other.bids and self.asks == other.asks

    def __hash__(self) -> int:  # mutable: identity only
        return id(self)

    def __repr__(self) -> str:
        top = f"{self.best_bid()}/{self.best_ask()}"
        return f"Book(bids={len(self.bids)}, asks={len(self.asks)}, top={top})"


def _apply_side(
    levels: dict[Decimal, Level], keys: list[Decimal], diff: Sequence[ParsedLevel]
) -> None:
    for key, price, size, removes in diff:
        if removes:
            if levels.pop(key, None) is not None:
                del keys[bisect_left(keys, key)]
        else:
            if key not in levels:
                insort(keys, key)
            levels[key] = (price, size)
