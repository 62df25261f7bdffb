"""Normalized events: what every venue parser yields, in recorded order.

Prices and sizes are the venue's own strings (exchange checksums are computed over them).
``recv_ns`` is the local receive time the recording gives (nanoseconds since the epoch).
``ids`` carries the venue's own sequencing values for that message (update ids, seq,
exchange time), unchanged, so that a client can check continuity and references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Level = tuple[str, str]
Levels = tuple[Level, ...]
# A best bid or ask as a venue reports it: price, and the size when the venue gives one.
Quote = tuple[str, str | None]
Ids = Mapping[str, int | str]
Side = Literal["buy", "sell"]

_NO_IDS: Ids = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole book of an instrument after the venue's sync procedure (bids and asks
    best first). A later snapshot of the same instrument replaces the book."""

    venue: str
    instrument: str
    recv_ns: int
    bids: Levels
    asks: Levels
    ids: Ids = field(default_factory=lambda: _NO_IDS)


@dataclass(frozen=True, slots=True)
class BookDiff:
    """Levels to set, in the venue's order; a zero size removes the level."""

    venue: str
    instrument: str
    recv_ns: int
    bids: Levels
    asks: Levels
    ids: Ids = field(default_factory=lambda: _NO_IDS)


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade. ``side`` is the taker's side; ``id`` is None where the venue
    gives none (Kraken spot v1)."""

    venue: str
    instrument: str
    recv_ns: int
    id: str | None
    price: str
    size: str
    side: Side
    ids: Ids = field(default_factory=lambda: _NO_IDS)


@dataclass(frozen=True, slots=True)
class Reference:
    """Something the venue said that a client can check its book against.

    - ``kind="checksum"``: the venue's checksum of the book right after the Snapshot or
      BookDiff that immediately precedes this event (same instrument, same message).
    - ``kind="top"``: the venue's best bid and ask. Binance bookTicker carries its update
      id in ``ids["u"]`` (compare with the book after the diff with the largest u >= it,
      see checks.py); other venues' tops describe the book at the time they were received.
    """

    venue: str
    instrument: str
    recv_ns: int
    kind: Literal["checksum", "top"]
    checksum: int | None = None
    bid: Quote | None = None
    ask: Quote | None = None
    ids: Ids = field(default_factory=lambda: _NO_IDS)


Event = Snapshot | BookDiff | Trade | Reference


def payload(event: Snapshot | BookDiff) -> dict[str, list[Level]]:
    """An event's levels as a relay Book payload (the Book takes lists)."""
    return {"bids": list(event.bids), "asks": list(event.asks)}
