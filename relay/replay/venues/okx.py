"""OKX (OKEx) v5 public WebSocket (cryptofeed recordings): books / books-l2-tbt, trades.

Book messages: ``{"arg": {"channel", "instId"}, "action": "snapshot"|"update",
"data": [{"asks": [[px, sz, "0", nOrders]], "bids": [...], "ts", "checksum"}]}``. A size
of "0" deletes the level. Each Snapshot or BookDiff is followed by a ``checksum``
Reference (signed CRC32 over the top 25, see checks.py). Trades carry ``tradeId`` and
the taker side. Tickers are skipped: they are not sent in step with the book.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.replay.events import BookDiff, Event, Levels, Reference, Snapshot, Trade
from relay.replay.venues import cryptofeed

VENUE = "okx"
_BOOK_CHANNELS = {"books", "books5", "books50-l2-tbt", "books-l2-tbt", "bbo-tbt"}
_SKIPPED = {"tickers"}


def _levels(raw: Any) -> Levels:
    return tuple((str(level[0]), str(level[1])) for level in raw)


def _book(recv_ns: int, inst: str, action: str, item: dict[str, Any]) -> list[Event]:
    bids, asks = _levels(item.get("bids", [])), _levels(item.get("asks", []))
    ids: dict[str, int | str] = {"ts": int(item["ts"])}
    if "seqId" in item:  # OKX added seqId/prevSeqId after this recording's time
        ids |= {"seqId": item["seqId"], "prevSeqId": item["prevSeqId"]}
    events: list[Event]
    if action == "snapshot":
        events = [Snapshot(VENUE, inst, recv_ns, bids, asks, ids)]
    elif action == "update":
        events = [BookDiff(VENUE, inst, recv_ns, bids, asks, ids)]
    else:
        raise ValueError(f"unknown book action {action!r}")
    if "checksum" in item:
        checksum = int(item["checksum"])
        events.append(Reference(VENUE, inst, recv_ns, "checksum", checksum=checksum))
    return events


def _trade(recv_ns: int, inst: str, item: dict[str, Any]) -> Trade:
    side = item["side"]
    if side not in ("buy", "sell"):
        raise ValueError(f"trade side {side!r} is neither buy nor sell")
    ids = {"ts": int(item["ts"])}
    return Trade(VENUE, inst, recv_ns, str(item["tradeId"]), item["px"], item["sz"], side, ids)


def message(recv_ns: int, msg: Any) -> list[Event]:
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    if "event" in msg:
        return []  # subscribe acknowledgements, errors of subscriptions
    arg = msg["arg"]
    channel, inst = arg["channel"], arg["instId"]
    if channel in _BOOK_CHANNELS:
        action = msg.get("action", "snapshot")  # books5 / bbo-tbt send whole books only
        return [event for item in msg["data"] for event in _book(recv_ns, inst, action, item)]
    if channel == "trades":
        return [_trade(recv_ns, inst, item) for item in msg["data"]]
    if channel in _SKIPPED:
        return []
    raise ValueError(f"unsupported OKX channel {channel!r}")


def events(paths: Sequence[Path]) -> Iterator[Event]:
    return cryptofeed.events(paths, lambda: message)


def sniff(lines: Sequence[str]) -> bool:
    return cryptofeed.url(lines).startswith(("wss://ws.okex.com", "wss://ws.okx.com"))
