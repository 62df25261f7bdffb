"""Bybit v5 public ``orderbook.<depth>.<symbol>`` (Bybit's historical download, JSON lines).

Lines: ``{"topic", "type": "snapshot"|"delta", "ts", "cts", "data": {"s", "b", "a", "u",
"seq"}}``. A size of "0" deletes. Each delta's ``u`` is the previous ``u`` + 1 (a gap is an
error); a snapshot replaces the book (Bybit sends one again after a service restart).

These files have no local receive time: the venue's ``ts`` (ms) stands in for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.replay.errors import at_line
from relay.replay.events import BookDiff, Event, Level, Snapshot
from relay.replay.lines import loads, numbered_lines

VENUE = "bybit"


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((str(level[0]), str(level[1])) for level in raw)


class _Parser:
    def __init__(self) -> None:
        self.last_u: dict[str, int] = {}

    def message(self, msg: Any) -> list[Event]:
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        topic = str(msg["topic"])
        if not topic.startswith("orderbook."):
            raise ValueError(f"unsupported Bybit topic {topic!r}")
        data = msg["data"]
        symbol, u = data["s"], int(data["u"])
        recv_ns = int(msg["ts"]) * 1_000_000
        ids: dict[str, int | str] = {"u": u, "seq": data["seq"], "cts": msg.get("cts", 0)}
        bids, asks = _levels(data["b"]), _levels(data["a"])
        kind = msg["type"]
        if kind == "snapshot":
            self.last_u[symbol] = u
            return [Snapshot(VENUE, symbol, recv_ns, bids, asks, ids)]
        if kind != "delta":
            raise ValueError(f"unknown message type {kind!r}")
        if symbol not in self.last_u:
            raise ValueError(f"delta for {symbol} before its snapshot")
        if u != self.last_u[symbol] + 1:
            raise ValueError(f"update id gap in {symbol}: u={u} after {self.last_u[symbol]}")
        self.last_u[symbol] = u
        return [BookDiff(VENUE, symbol, recv_ns, bids, asks, ids)]


def events(paths: Sequence[Path]) -> Iterator[Event]:
    parser = _Parser()  # one state across files: a later file continues the earlier one
    for path in sorted(paths):
        for number, text in numbered_lines(path):
            with at_line(path, number):
                out = parser.message(loads(text))
            yield from out


def sniff(lines: Sequence[str]) -> bool:
    return bool(lines) and lines[0].startswith('{"topic":"orderbook.')
