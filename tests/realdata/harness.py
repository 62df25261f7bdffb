"""Replay a real exchange recording through redis-server, a running relay and the SDK, and
check what the SDK's books say against what the exchange said.

The path of every entry: ``relay.replay.writer.replay`` (as fast as possible) -> a real
redis-server -> the relay (in-process, ``support.relay.running_relay``) -> WebSocket ->
``relay.client.Client`` -> the checks here, which read only the SDK's events and books.

Seeing every entry. The relay answers a subscribe with a snapshot at its current seq, and
only knows channels it discovered. So that the client applies *every* entry of a channel
as an update, including seq 1 (the venue snapshot, whose ``venue`` ids and checksum are
needed: OKX checksums it, Binance's first diff continues from its ``lastUpdateId``), the
publisher is wrapped (``GatedPublisher``): the replay calls ``reset`` for a batch's new
channels before that batch's entries go out, and the wrapper then, after the real reset
(old stream and snapshot gone, the replay's epoch set):

1. writes seq 0 of the epoch: for a book an empty book entry with the snapshot hash on it,
   for trades an empty stream (so the relay starts the channel at seq 0);
2. waits until the relay has discovered the channels and has them live at seq 0;
3. subscribes the client and waits until each channel is live in the SDK at (epoch, 0);

and only then returns, so the replay writes seq 1 onwards to channels the client is
already subscribed to: the relay sends it every entry, in order, as an update. The relay
sees a contract-correct producer throughout: one epoch, seqs 0, 1, 2, ... with no gap.

The checks, per book update (``BookUpdate``: the SDK's book with that entry applied):

- the venue checksum in ``data["venue"]["checksum"]`` (Kraken, OKX) against
  ``relay.replay.checks`` computed over the SDK's book after the entry;
- each ``top`` reference in ``data["venue"]["refs"]`` against the SDK's best bid/ask
  *before* the entry (the book as of the previous event of the channel), as the writer
  documents; Binance bookTickers instead by update id, as ``checks.Verifier`` does: after
  each diff (id ``u``), the book's top must equal the bookTicker with the largest
  ``u' <= u`` (matched once the whole recording went through);
- update-id continuity of ``data["venue"]`` (Binance ``U``/``u``/``pu``, Kraken Futures
  ``seq``), by the rules of ``checks.Verifier``;
- the relay's checksum of every book frame (snapshot and update) against the client's own
  computation over its book; the SDK verifies it too and counts it.

Trades: numeric venue trade ids (every venue but Kraken spot, whose ids are the writer's
seqs) must each be the previous + 1 per channel.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.relay import RunningRelay, redis_source, running_relay

from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelCounters,
    ChannelStatus,
    Client,
    Disconnected,
    Event,
    StatusChanged,
    TradesSnapshot,
    TradeUpdate,
)
from relay.core.book import Level
from relay.producer import Publication, RedisPublisher
from relay.replay.checks import CHECKSUMS, Tally, ids_continue, quote_matches
from relay.replay.events import Quote
from relay.replay.venues import binance, kraken, krakenfutures
from relay.replay.writer import replay
from relay.source.base import stream_key

_DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "market"
MARKET = Path(os.environ.get("RELAY_MARKET_DATA", _DEFAULT))

PREFIX = "md:"
EMPTY_BOOK = b'{"bids":[],"asks":[]}'
# Keys of data["venue"] that are not the venue's ids.
_NOT_IDS = frozenset({"name", "refs", "checksum", "snapshot"})
# Venues whose trade ids are not the venue's (the writer numbers them by seq).
_NO_TRADE_IDS = frozenset({kraken.VENUE})

# Relay settings for a replay at full speed. Reads of many entries at a time; history to
# resume from should the connection drop (it is asserted not to). The client runs in the
# relay's own process and event loop, so it can fall seconds behind the relay's writes:
# the send buffer may hold the whole replay, and WebSocket pings (on both sides) are off,
# since a ping answered behind seconds of queued frames would drop the connection (1006).
RELAY_SETTINGS: dict[str, Any] = {
    "read_count": 10_000,
    "history": 100_000,
    "discovery_interval": 0.05,
    "slow_consumer_bytes": 1024 * 1024 * 1024,
    "ping_interval": 3600.0,
}
# Streams keep the whole recording: the relay never has to rebuild from a trimmed stream.
STREAM_MAXLEN = 1_000_000


def recording(*parts: str) -> Path:
    """A recording under the market data directory. Skips when the directory is absent;
    a recording missing from a present directory is a failure, not a skip."""
    if not MARKET.is_dir():
        pytest.skip(f"market recordings not found at {MARKET} (set RELAY_MARKET_DATA)")
    path = MARKET.joinpath(*parts)
    assert path.exists(), f"recording {path} is missing from {MARKET}"
    return path


def now_us() -> int:
    return time.time_ns() // 1000


# -- the checks ---------------------------------------------------------------------------


@dataclass
class _BookLog:
    """What the checks remember of one book channel."""

    seq: int = -1
    epoch: str = ""
    top: tuple[Level | None, Level | None] = (None, None)  # as of ``seq``
    ids: dict[str, Any] = field(default_factory=dict)  # of the last venue book event
    after_snapshot: bool = True
    # Binance: (u, best bid, best ask) after each diff, and the bookTickers (u, bid, ask).
    tops_by_u: list[tuple[int, Level | None, Level | None]] = field(default_factory=list)
    tickers: list[tuple[int, Quote | None, Quote | None]] = field(default_factory=list)


@dataclass
class _TradesLog:
    seq: int = -1
    last_id: int | None = None


def _quote(raw: Any) -> Quote | None:
    if raw is None:
        return None
    price, size = raw
    return (str(price), None if size is None else str(size))


class Checks:
    """Fed every SDK event, in order; tallies the checks (``checks.Tally``)."""

    def __init__(self, relay_checksum_depth: int) -> None:
        self.depth = relay_checksum_depth
        self.books: dict[str, _BookLog] = {}
        self.trades: dict[str, _TradesLog] = {}
        self.checksums = Tally()  # the venue's checksum after an entry
        self.tops = Tally()  # the venue's best bid/ask
        self.update_ids = Tally()  # the venue's book update ids
        self.trade_ids = Tally()  # the venue's trade ids
        self.relay_checksums = Tally()  # the relay's checksum of a frame vs our computation
        self.unchecked_refs = 0  # references on an empty book: nothing to compare
        self.unmatched_diffs: list[int] = []  # Binance diffs (u) with no bookTicker u' <= u
        self.book_updates = 0
        self.trade_updates = 0
        self.problems: list[str] = []  # anything the SDK should never have shown us
        self.targets: dict[str, int] | None = None  # last seq per channel, once known
        self.reached = asyncio.Event()

    # -- events --

    def feed(self, event: Event) -> None:
        if isinstance(event, BookUpdate):
            self._book_update(event)
        elif isinstance(event, TradeUpdate):
            self._trade_update(event)
        elif isinstance(event, BookSnapshot):
            self._book_snapshot(event)
        elif isinstance(event, TradesSnapshot):
            self._trades_snapshot(event)
        elif isinstance(event, StatusChanged):
            if event.status not in (ChannelStatus.LIVE, ChannelStatus.SUBSCRIBING):
                self._problem(f"{event.channel} turned {event.status} ({event.reason})")
            elif event.status is ChannelStatus.LIVE and event.reason != "snapshot":
                self._problem(f"{event.channel} live again by {event.reason}")
        elif isinstance(event, Disconnected):
            self._problem(f"disconnected from {event.url}: {event.code} {event.reason}")
        self._check_reached()

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def _book_snapshot(self, event: BookSnapshot) -> None:
        book = event.book
        if event.channel in self.books or event.seq != 0 or book.bid_count or book.ask_count:
            self._problem(f"{event.channel}: snapshot at seq {event.seq}: {event.book!r}")
        self.books[event.channel] = _BookLog(seq=event.seq, epoch=event.epoch)
        self._relay_checksum(event.channel, event.seq, event.book.checksum(self.depth), event)

    def _trades_snapshot(self, event: TradesSnapshot) -> None:
        if event.channel in self.trades or event.seq != 0 or event.trades:
            self._problem(f"{event.channel}: trades snapshot at seq {event.seq}")
        self.trades[event.channel] = _TradesLog(seq=event.seq)

    def _relay_checksum(
        self, channel: str, seq: int, ours: int, event: BookSnapshot | BookUpdate
    ) -> None:
        relay = event.checksum
        self.relay_checksums.add(
            relay is not None and relay == ours,
            lambda: f"{channel} seq {seq}: relay checksum {relay}, client's {ours}",
        )

    def _book_update(self, event: BookUpdate) -> None:
        name, seq = event.channel, event.seq
        log = self.books[name]
        if seq != log.seq + 1:
            self._problem(f"{name}: update {seq} after {log.seq}")
        self.book_updates += 1
        book = event.book
        self._relay_checksum(name, seq, book.checksum(self.depth), event)
        data: Mapping[str, Any] = event.diff
        venue: Mapping[str, Any] = data["venue"]
        where = f"{name} seq {seq}"
        # References received while the book was at seq - 1: the book before this entry.
        for ref in venue.get("refs", ()):
            self._reference(log, where, ref)
        ids = {key: value for key, value in venue.items() if key not in _NOT_IDS}
        if venue.get("snapshot"):
            log.ids, log.after_snapshot = ids, True
        elif data["bids"] or data["asks"]:
            self._continuity(venue["name"], log, ids, where)
            log.ids, log.after_snapshot = ids, False
            if venue["name"] in binance.VENUES:
                log.tops_by_u.append((int(ids["u"]), book.best_bid(), book.best_ask()))
        if "checksum" in venue:
            compute = CHECKSUMS[venue["name"]]
            theirs, local = venue["checksum"], book.to_book()
            mine = compute(local)
            self.checksums.add(
                mine == theirs, lambda: f"{where}: venue checksum {theirs}, book's {mine}"
            )
        log.seq, log.top = seq, (book.best_bid(), book.best_ask())

    def _reference(self, log: _BookLog, where: str, ref: Mapping[str, Any]) -> None:
        if ref["kind"] != "top":
            self._problem(f"{where}: unexpected reference {ref}")
            return
        bid, ask = _quote(ref.get("bid")), _quote(ref.get("ask"))
        if "u" in ref:  # Binance bookTicker: matched by update id at the end
            log.tickers.append((int(ref["u"]), bid, ask))
            return
        best_bid, best_ask = log.top
        if best_bid is None and best_ask is None:
            self.unchecked_refs += 1
            return
        self.tops.add(
            quote_matches(best_bid, bid) and quote_matches(best_ask, ask),
            lambda: f"{where}: top {bid}/{ask} before it, book {best_bid}/{best_ask}",
        )

    def _continuity(self, venue: str, log: _BookLog, ids: Mapping[str, Any], where: str) -> None:
        if venue not in binance.VENUES and venue != krakenfutures.VENUE:
            return
        prev = log.ids
        ok = ids_continue(venue, prev, ids, after_snapshot=log.after_snapshot)
        if ok is not None:
            self.update_ids.add(ok, lambda: f"{where}: ids {dict(ids)} after {prev}")

    def _trade_update(self, event: TradeUpdate) -> None:
        name, seq = event.channel, event.seq
        log = self.trades[name]
        if seq != log.seq + 1:
            self._problem(f"{name}: trade {seq} after {log.seq}")
        log.seq = seq
        self.trade_updates += 1
        trade = event.trade
        venue = trade.data.get("venue", {}).get("name")
        if venue in _NO_TRADE_IDS or not trade.id.isdigit():
            return
        trade_id = int(trade.id)
        prev = log.last_id
        if prev is not None:
            self.trade_ids.add(
                trade_id == prev + 1, lambda: f"{name} seq {seq}: trade {trade_id} after {prev}"
            )
        log.last_id = trade_id

    # -- the end --

    def expect(self, targets: dict[str, int]) -> None:
        """The last seq of every channel: ``reached`` is set once the client applied them."""
        self.targets = targets
        self._check_reached()

    def lagging(self) -> dict[str, str]:
        """Channels short of their last seq: "<seq applied> of <last>" (or "?")."""
        behind: dict[str, str] = {}
        names = list(self.targets or [*self.books, *self.trades])
        for name in names:
            log = self.books.get(name) or self.trades.get(name)
            seq = "none" if log is None else str(log.seq)
            last = "?" if self.targets is None else str(self.targets[name])
            if log is None or self.targets is None or log.seq < self.targets[name]:
                behind[name] = f"{seq} of {last}"
        return behind

    def _check_reached(self) -> None:
        targets = self.targets
        if targets is None or self.reached.is_set():
            return
        for name, last in targets.items():
            log = self.books.get(name) or self.trades.get(name)
            if log is None or log.seq < last:
                return
        self.reached.set()

    def finish(self) -> None:
        """Binance: each diff's top against the bookTicker with the largest u' <= u."""
        for name, log in self.books.items():
            if not log.tickers:
                continue
            tickers = sorted(log.tickers, key=lambda ticker: ticker[0])
            ids = [ticker[0] for ticker in tickers]
            for u, bid, ask in log.tops_by_u:
                i = bisect.bisect_right(ids, u) - 1
                if i < 0:
                    self.unmatched_diffs.append(u)
                    continue
                ticker_u, ticker_bid, ticker_ask = tickers[i]
                self.tops.add(
                    quote_matches(bid, ticker_bid) and quote_matches(ask, ticker_ask),
                    _BinanceMiss(name, u, bid, ask, ticker_u, ticker_bid, ticker_ask),
                )


@dataclass(frozen=True, slots=True)
class _BinanceMiss:
    name: str
    u: int
    bid: Level | None
    ask: Level | None
    ticker_u: int
    ticker_bid: Quote | None
    ticker_ask: Quote | None

    def __call__(self) -> str:
        return (
            f"{self.name} diff u={self.u}: top {self.bid}/{self.ask}, "
            f"bookTicker u={self.ticker_u}: {self.ticker_bid}/{self.ticker_ask}"
        )


# -- the replay ---------------------------------------------------------------------------


class GatedPublisher:
    """The replay's RedisPublisher, holding back each new channel's first entry until the
    client is subscribed to the channel at seq 0 (see the module docstring)."""

    def __init__(
        self, inner: RedisPublisher, relay: RunningRelay, client: Client, timeout: float = 20.0
    ) -> None:
        self.inner = inner
        self.relay = relay
        self.client = client
        self.timeout = timeout
        self.channels: list[str] = []
        self.gates = 0

    async def reset(self, channels: Sequence[str], epoch: str) -> None:
        await self.inner.reset(channels, epoch)
        books = [name for name in channels if name.startswith("book.")]
        trades = [name for name in channels if not name.startswith("book.")]
        # Seq 0 of a book: an empty book, with the snapshot hash pointing at it.
        await self.inner.publish(
            [Publication(name, 0, now_us(), EMPTY_BOOK, EMPTY_BOOK) for name in books]
        )
        # Seq 0 of trades: an empty stream (made atomically: the relay never sees the
        # placeholder entry), which the relay starts at seq 0 with no trades.
        pipe = self.inner.client.pipeline(transaction=True)
        for name in trades:
            key = stream_key(PREFIX, name)
            pipe.xadd(key, {"seq": "0"}, id="0-1")
            pipe.xdel(key, "0-1")
        await pipe.execute()
        try:
            await self.relay.wait_live(*channels, timeout=self.timeout)
            self.client.subscribe(*channels)
            async with asyncio.timeout(self.timeout):
                while not all(self.client.position(name) == (epoch, 0) for name in channels):
                    await asyncio.sleep(0.005)
        except TimeoutError:
            hub = self.relay.relay.hub.channels
            relay = {
                name: (hub[name].live, hub[name].seq) if name in hub else None for name in channels
            }
            client = {
                name: (self.client.status(name), self.client.position(name)) for name in channels
            }
            raise AssertionError(
                f"channels not ready at (epoch {epoch!r}, seq 0) within {self.timeout}s: "
                f"relay (live, seq) {relay}, client (status, position) {client}"
            ) from None
        self.channels.extend(channels)
        self.gates += 1

    async def publish(self, items: Sequence[Publication]) -> None:
        await self.inner.publish(items)

    async def last_seqs(self, channels: Sequence[str]) -> dict[str, int]:
        return await self.inner.last_seqs(channels)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Outcome:
    """What one replay through the relay and the SDK gave."""

    checks: Checks
    last_seqs: dict[str, int]  # per channel, as the replay wrote them
    counters: dict[str, ChannelCounters]  # the SDK's ChannelCounters per channel
    gates: int
    replay_seconds: float
    total_seconds: float

    def entries(self, kind: str) -> int:
        return sum(seq for name, seq in self.last_seqs.items() if name.startswith(kind + "."))

    def total(self, counter: str) -> int:
        return sum(getattr(counters, counter) for counters in self.counters.values())

    def summary(self) -> str:
        checks = self.checks
        return (
            f"venue checksums {checks.checksums}, tops {checks.tops}, "
            f"update ids {checks.update_ids}, trade ids {checks.trade_ids}, "
            f"relay checksums {checks.relay_checksums}, "
            f"Binance diffs with no bookTicker {len(checks.unmatched_diffs)}; "
            f"book entries {self.entries('book')}, trade entries {self.entries('trades')}, "
            f"{len(self.last_seqs)} channels, {self.gates} gates; "
            f"replay {self.replay_seconds:.1f}s, total {self.total_seconds:.1f}s; "
            f"first failures: {checks.checksums.failures[:3]} {checks.tops.failures[:3]} "
            f"{checks.update_ids.failures[:3]} {checks.trade_ids.failures[:3]} "
            f"{checks.relay_checksums.failures[:3]}; problems: {checks.problems[:5]}"
        )


async def replay_through_relay(
    redis_url: str, paths: Sequence[Path], *, timeout: float = 100.0
) -> Outcome:
    """Replay ``paths`` through the relay to one SDK client, checking every event.

    Fails (AssertionError, saying what the client saw) when the client has not applied
    every channel's last entry within ``timeout`` seconds of the start."""
    started = time.monotonic()
    deadline = started + timeout
    async with running_relay(redis_source(redis_url), **RELAY_SETTINGS) as relay:
        depth = relay.config.checksum_depth
        checks = Checks(depth)
        client = Client(relay.ws_url, checksum_depth=depth, heartbeat=None)
        await client.start()
        events = aiter(client)  # opened before any subscribe: it sees every event

        async def consume() -> None:
            async for event in events:
                checks.feed(event)

        consumer = asyncio.create_task(consume())
        publisher = GatedPublisher(
            RedisPublisher(aioredis.Redis.from_url(redis_url), PREFIX, STREAM_MAXLEN),
            relay,
            client,
        )
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                replayed = time.monotonic()
                stats = await replay(paths, publisher, speed=None)
                replay_seconds = time.monotonic() - replayed
                assert sorted(stats.channels) == sorted(publisher.channels)
                last_seqs = await publisher.last_seqs(stats.channels)
                checks.expect(last_seqs)
                reached = asyncio.create_task(checks.reached.wait())
                try:
                    await asyncio.wait([reached, consumer], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reached.cancel()
            if consumer.done():
                consumer.result()  # raises what stopped it
                raise AssertionError(f"the client stopped early: {checks.lagging()}")
            counters = {name: client.counters(name) for name in last_seqs}
        except TimeoutError:
            hub = relay.relay.hub.channels
            behind = {
                name: f"client {seq}, relay {'live' if hub[name].live else 'stale'} {hub[name].seq}"
                for name, seq in checks.lagging().items()
            }
            raise AssertionError(
                f"not done within {timeout:.0f}s: {publisher.gates} gates passed, "
                f"channels behind: {behind}, problems: {checks.problems}"
            ) from None
        finally:
            await publisher.close()
            await client.close()
            await asyncio.wait([consumer])
    checks.finish()
    return Outcome(
        checks,
        last_seqs,
        counters,
        publisher.gates,
        replay_seconds,
        time.monotonic() - started,
    )


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + deadline - time.monotonic()
