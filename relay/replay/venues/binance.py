"""Binance spot, USD-M and COIN-M (hftbacktest collector recordings).

Line format: ``<local receive time, ns> <JSON>``, gzip, where the JSON is a combined-stream
message ``{"stream": "<sym>@depth@100ms" | "<sym>@trade" | "<sym>@bookTicker", "data": ...}``
or the REST depth snapshot ``{"lastUpdateId": N, "bids": ..., "asks": ...}``.

Sync (Binance's documented procedure): diffs that arrive before the snapshot are buffered.
Spot drops diffs with ``u <= lastUpdateId``, the first one applied has
``U <= lastUpdateId + 1 <= u`` and each next one ``U == previous u + 1``. Futures drop
``u < lastUpdateId``, the first one applied has ``U <= lastUpdateId <= u`` and each next
one ``pu == previous u``. The Snapshot event is the REST book with the buffered diffs
already applied (ids: ``lastUpdateId``, and ``u`` of the last diff folded in, if any).

Files of one symbol are one stream: a later file (``_20240809``) continues the earlier one
with no new snapshot, so the sync state carries over. A REST snapshot that arrives while
already in sync is ignored: the diffs already carry the book further than it does.
A gap in the update ids is an error: the recording cannot rebuild the book past it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.core.book import Book
from relay.replay.errors import ReplayFormatError, at_line
from relay.replay.events import BookDiff, Event, Levels, Reference, Side, Snapshot, Trade
from relay.replay.lines import loads, numbered_lines

SPOT, USDM, COINM = "binance-spot", "binance-usdm", "binance-coinm"
VENUES = (SPOT, USDM, COINM)


def _levels(raw: Any) -> Levels:
    return tuple((str(level[0]), str(level[1])) for level in raw)


def _parse(text: str) -> tuple[int, Any]:
    stamp, _, body = text.partition(" ")
    if not stamp.isdigit():
        raise ValueError("expected '<receive time ns> <JSON>'")
    return int(stamp), loads(body)


class _Sync:
    """Book sync state of one symbol, across its files."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.futures = venue != SPOT
        self.symbol = ""
        self.buffer: list[tuple[int, dict[str, Any]]] = []
        self.snapshot_id: int | None = None  # lastUpdateId once the snapshot is in
        self.last_u: int | None = None  # u of the last diff applied; None before the first

    def line(self, text: str) -> list[Event]:
        recv_ns, msg = _parse(text)
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        if "lastUpdateId" in msg:
            return self._snapshot(recv_ns, msg)
        stream = msg["stream"]
        data = msg["data"]
        self.symbol = data["s"]
        if "@depth" in stream:
            return self._diff(recv_ns, data)
        if stream.endswith("@trade"):
            side: Side = "sell" if data["m"] else "buy"  # m: the buyer is the maker
            trade_id = str(data["t"])
            ids = {"T": data["T"]}
            return [
                Trade(self.venue, self.symbol, recv_ns, trade_id, data["p"], data["q"], side, ids)
            ]
        if stream.endswith("@bookTicker"):
            bid, ask = (data["b"], data["B"]), (data["a"], data["A"])
            ids = {"u": data["u"]}
            return [Reference(self.venue, self.symbol, recv_ns, "top", bid=bid, ask=ask, ids=ids)]
        raise ValueError(f"unsupported stream {stream!r}")

    def _stale(self, data: dict[str, Any]) -> bool:
        """Diffs the snapshot already holds."""
        assert self.snapshot_id is not None
        u: int = data["u"]
        return u < self.snapshot_id if self.futures else u <= self.snapshot_id

    def _check(self, data: dict[str, Any]) -> None:
        """Continuity of a diff about to be applied (after the staleness filter)."""
        assert self.snapshot_id is not None
        first_id, last_id = data["U"], data["u"]
        if self.last_u is None:
            want = self.snapshot_id if self.futures else self.snapshot_id + 1
            if not first_id <= want <= last_id:
                raise ValueError(
                    f"first diff after the snapshot (U={first_id}, u={last_id}) does not "
                    f"cover lastUpdateId {self.snapshot_id}"
                )
        elif self.futures and data["pu"] != self.last_u:
            raise ValueError(f"update id gap: pu={data['pu']} after u={self.last_u}")
        elif not self.futures and first_id != self.last_u + 1:
            raise ValueError(f"update id gap: U={first_id} after u={self.last_u}")

    def _ids(self, data: dict[str, Any]) -> dict[str, int | str]:
        ids: dict[str, int | str] = {"U": data["U"], "u": data["u"]}
        if self.futures:
            ids["pu"] = data["pu"]
        return ids

    def _diff(self, recv_ns: int, data: dict[str, Any]) -> list[Event]:
        if self.snapshot_id is None:
            self.buffer.append((recv_ns, data))
            return []
        if self.last_u is None and self._stale(data):
            return []
        self._check(data)
        self.last_u = data["u"]
        bids, asks = _levels(data["b"]), _levels(data["a"])
        return [BookDiff(self.venue, self.symbol, recv_ns, bids, asks, self._ids(data))]

    def _snapshot(self, recv_ns: int, msg: dict[str, Any]) -> list[Event]:
        if self.snapshot_id is not None:
            return []
        self.snapshot_id = int(msg["lastUpdateId"])
        self.symbol = msg.get("symbol", self.symbol)
        book = Book.from_payload({"bids": msg["bids"], "asks": msg["asks"]})
        for _, data in self.buffer:
            if self.last_u is None and self._stale(data):
                continue
            self._check(data)
            book.apply({"bids": data["b"], "asks": data["a"]})
            self.last_u = data["u"]
        self.buffer.clear()
        ids: dict[str, int | str] = {"lastUpdateId": self.snapshot_id}
        if self.last_u is not None:
            ids["u"] = self.last_u
        if not self.symbol:
            raise ValueError("depth snapshot before any message naming the symbol")
        levels = (tuple(book.bid_levels()), tuple(book.ask_levels()))
        return [Snapshot(self.venue, self.symbol, recv_ns, *levels, ids=ids)]


def _symbol_stream(venue: str, files: Sequence[Path]) -> Iterator[Event]:
    sync = _Sync(venue)
    for path in files:
        number = 0
        for number, text in numbered_lines(path):
            with at_line(path, number):
                out = sync.line(text)
            yield from out
        if sync.buffer:
            raise ReplayFormatError(
                path, number, f"{len(sync.buffer)} depth diffs but no REST depth snapshot yet"
            )


def _first(path: Path) -> tuple[str, int]:
    """(stream symbol, first receive time) of a file, to group and order files."""
    first_ns = 0
    for number, text in numbered_lines(path):
        with at_line(path, number):
            recv_ns, msg = _parse(text)
            first_ns = first_ns or recv_ns
            if isinstance(msg, dict) and "stream" in msg:
                return str(msg["stream"]).split("@", 1)[0], first_ns
    return "", first_ns


def events(paths: Sequence[Path], venue: str = SPOT) -> Iterator[Event]:
    """Events of Binance recordings of one market, files of a symbol chained in time order
    and symbols merged by receive time."""
    by_symbol: dict[str, list[tuple[int, Path]]] = {}
    for path in paths:
        symbol, first_ns = _first(path)
        by_symbol.setdefault(symbol, []).append((first_ns, path))
    streams = [
        _symbol_stream(venue, [path for _, path in sorted(files)]) for files in by_symbol.values()
    ]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda event: event.recv_ns)


def sniff(lines: Sequence[str]) -> str | None:
    """Which Binance market a file's first lines come from, or None."""
    for text in lines:
        try:
            _, msg = _parse(text)
        except ValueError:
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("data"), dict):
            continue
        data = msg["data"]
        if "@" not in str(msg.get("stream", "")) or "s" not in data:
            return None
        if "ps" in data or "_" in str(data["s"]):
            return COINM
        kind = data.get("e")
        if kind == "depthUpdate":
            futures = "pu" in data
        elif kind == "trade":
            futures = "M" not in data  # spot trades carry M ("best match"), futures X
        else:
            futures = kind is not None  # spot bookTicker has no "e" at all
        return USDM if futures else SPOT
    return None
