"""BitMEX realtime API (cryptofeed recordings): orderBookL2, trade.

orderBookL2 rows are keyed by ``id``; ``partial`` is the whole book of a symbol, ``insert``
adds rows with their price, ``update`` gives a row's new size (without its price) and
``delete`` removes rows (without price or size). The parser keeps id -> (side, price) per
symbol to turn these into price levels; a row id it does not know is an error. Numbers
are read as their source text. Trades: ``trdMatchID`` is the id, ``side`` the taker's.
The ``quote`` table is skipped: it is not aligned with orderBookL2, so it is no strict
reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.replay.events import BookDiff, Event, Level, Side, Snapshot, Trade
from relay.replay.lines import loads_exact
from relay.replay.venues import cryptofeed

VENUE = "bitmex"
_SIDES = {"Buy": "bids", "Sell": "asks"}


def _taker(side: Any) -> Side:
    if side not in ("Buy", "Sell"):
        raise ValueError(f"side {side!r} is neither Buy nor Sell")
    return "buy" if side == "Buy" else "sell"


class _Parser:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[str, str]]] = {}  # symbol -> id -> (side, price)

    def message(self, recv_ns: int, msg: Any) -> list[Event]:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        table = msg.get("table")
        if table is None:
            if "error" in msg:
                raise ValueError(f"the venue answered an error: {msg['error']!r}")
            return []  # welcome, subscribe acknowledgements
        if table == "orderBookL2":
            return self._book(recv_ns, msg["action"], msg["data"], msg.get("filter", {}))
        if table == "trade":
            return [self._trade(recv_ns, row) for row in msg["data"]]
        if table == "quote":
            return []
        raise ValueError(f"unsupported BitMEX table {table!r}")

    def _book(
        self, recv_ns: int, action: str, rows: list[Any], filters: dict[str, Any]
    ) -> list[Event]:
        by_symbol: dict[str, dict[str, list[Level]]] = {}
        if action == "partial":  # a partial starts the symbol over, even an empty one
            symbols = [str(row["symbol"]) for row in rows]
            if filters.get("symbol"):
                symbols.append(str(filters["symbol"]))
            for symbol in symbols:
                self.rows[symbol] = {}
                by_symbol[symbol] = {"bids": [], "asks": []}
        for row in rows:
            symbol = row["symbol"]
            sides = by_symbol.setdefault(symbol, {"bids": [], "asks": []})
            sides[_SIDES[row["side"]]].append(self._level(action, symbol, row))
        events: list[Event] = []
        for symbol, sides in by_symbol.items():
            bids, asks = tuple(sides["bids"]), tuple(sides["asks"])
            if action == "partial":
                events.append(Snapshot(VENUE, symbol, recv_ns, bids, asks))
            else:
                events.append(BookDiff(VENUE, symbol, recv_ns, bids, asks))
        return events

    def _level(self, action: str, symbol: str, row: dict[str, Any]) -> Level:
        row_id = str(row["id"])
        if action in ("partial", "insert"):
            price = str(row["price"])
            self.rows.setdefault(symbol, {})[row_id] = (row["side"], price)
            return price, str(row["size"])
        known = self.rows.get(symbol, {})
        if row_id not in known:
            raise ValueError(f"{action} of unknown row id {row_id} of {symbol}")
        if action == "update":
            return known[row_id][1], str(row["size"])
        if action == "delete":
            return known.pop(row_id)[1], "0"
        raise ValueError(f"unknown orderBookL2 action {action!r}")

    def _trade(self, recv_ns: int, row: dict[str, Any]) -> Trade:
        ids = {"timestamp": row["timestamp"]}
        symbol, price, size = row["symbol"], str(row["price"]), str(row["size"])
        return Trade(
            VENUE, symbol, recv_ns, row["trdMatchID"], price, size, _taker(row["side"]), ids
        )


def events(paths: Sequence[Path]) -> Iterator[Event]:
    return cryptofeed.events(paths, lambda: _Parser().message, loads_exact)


def sniff(lines: Sequence[str]) -> bool:
    return "bitmex.com" in cryptofeed.url(lines)
