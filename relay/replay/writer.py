"""Normalized events to contract Publications, and ``replay``: paced, batched publishing.

Channels (per venue instrument; the symbol is the instrument with every character outside
``[A-Za-z0-9_-]`` turned into "-", e.g. "XBT/CHF" -> "XBT-CHF", optionally prefixed with
the venue, "kraken_XBT-CHF", when several venues share instrument names):

- ``book.<SYMBOL>``: one entry per Snapshot or BookDiff, seq from 1, ts = the recorded
  receive time in microseconds. Entry data::

      {"bids": [[px, sz], ...], "asks": [[px, sz], ...],
       "venue": {"name": "<venue>", <the venue's ids for this update, e.g. "U", "u", "pu",
                 "seq", "ts">, "snapshot": true (only on a venue snapshot),
                 "refs": [<references received since the previous entry>],
                 "checksum": <the venue's checksum of the book after this entry>}}

  The first entry of a channel is the whole venue snapshot, and the snapshot hash points
  at it. A later venue snapshot becomes a diff that turns the current book into it
  (removals first, then every level) with the snapshot hash refreshed at that entry. The
  snapshot hash is also refreshed every K entries (``snapshot_every``); its data is
  ``{"bids", "asks"}`` only.

- ``trades.<SYMBOL>``: one entry per trade, seq from 1, data
  ``{"id", "price", "size", "side", "venue": {"name", <venue ids, e.g. exchange time>}}``.
  Where the venue gives no trade id (Kraken spot), the id is the entry's seq.

References. A ``checksum`` Reference belongs to the update it follows (same message):
its value goes in that entry's ``venue.checksum``. A ``top`` Reference (Binance bookTicker,
Coinbase ticker, Kraken Futures ticker_lite) is attached to the *next* book entry of its
instrument, in ``venue.refs``, as ``{"kind": "top", "ts": <receive time us>,
"bid": [px, sz|null], "ask": [px, sz|null], <venue ids, e.g. "u">}``: it was received
while the book was at that entry's seq - 1, so a client checks it against its book just
before applying the entry (Binance: by update id, see checks.py). References that arrive
before an instrument's first book entry are dropped, as they describe no book the client
will hold, except those matched by update id (Binance's ``u``): the first entry carries
them, since the diffs after the snapshot are checked against the latest of them. Those
after the last entry go out at the end on an empty entry (``{"bids": [], "asks": []}``).
Putting them on the book channel keeps them in step with the book they describe, which a
separate channel could not promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.trace import Tracer, TracerProvider

from relay import telemetry
from relay.backoff import Backoff
from relay.core.book import Book, Level
from relay.producer import Publication, Publisher, traced
from relay.replay.errors import ReplayFormatError
from relay.replay.events import BookDiff, Event, Reference, Snapshot, Trade, payload
from relay.replay.recordings import aligned, recordings
from relay.source.base import SourceUnavailable

log = logging.getLogger("relay.replay")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_SYMBOL = 40
_REMOVE = "0"

Key = tuple[str, str]  # (venue, instrument)


class ChannelCollision(ValueError):
    """Two instruments (of different venues) would write the same channel."""


def symbol_of(venue: str, instrument: str, venue_prefix: bool = False) -> str:
    raw = f"{venue}_{instrument}" if venue_prefix else instrument
    symbol = _UNSAFE.sub("-", raw)
    if not symbol or len(symbol) > _MAX_SYMBOL:
        raise ValueError(f"instrument {instrument!r} makes no valid channel symbol: {symbol!r}")
    return symbol


@dataclass
class _BookChannel:
    name: str
    seq: int = 0
    book: Book = field(default_factory=Book)
    refs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _TradeChannel:
    name: str
    seq: int = 0


def _replacement(book: Book, snapshot: Snapshot) -> tuple[Book, list[Level], list[Level]]:
    """The new book, and the diff that turns ``book`` into it (removals first)."""
    new = Book.from_payload(payload(snapshot))
    bids = [(price, _REMOVE) for key, (price, _) in book.bids.items() if key not in new.bids]
    asks = [(price, _REMOVE) for key, (price, _) in book.asks.items() if key not in new.asks]
    return new, bids + new.bid_levels(), asks + new.ask_levels()


def _ref_data(ref: Reference) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": ref.kind, "ts": ref.recv_ns // 1000}
    if ref.bid is not None:
        data["bid"] = list(ref.bid)
    if ref.ask is not None:
        data["ask"] = list(ref.ask)
    data.update(ref.ids)
    return data


class Writer:
    """Turns events into Publications; pure (no I/O), one instance per replay epoch."""

    def __init__(self, snapshot_every: int = 100, venue_prefix: bool = False) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.snapshot_every = snapshot_every
        self.venue_prefix = venue_prefix
        self._books: dict[Key, _BookChannel] = {}
        self._trades: dict[Key, _TradeChannel] = {}
        self._owners: dict[str, Key] = {}
        self.new_channels: list[str] = []  # appeared since the caller last cleared it
        self.dropped_refs = 0

    def channels(self) -> list[str]:
        return list(self._owners)

    def _channel(self, kind: str, key: Key) -> str:
        name = f"{kind}.{symbol_of(*key, venue_prefix=self.venue_prefix)}"
        owner = self._owners.setdefault(name, key)
        if owner != key:
            hint = "; replay them with venue prefixes" if owner[0] != key[0] else ""
            raise ChannelCollision(
                f"{key[0]} {key[1]!r} and {owner[0]} {owner[1]!r} both map to channel {name}{hint}"
            )
        self.new_channels.append(name)
        return name

    def feed(self, event: Event, checksum: int | None = None) -> list[Publication]:
        """Publications for one event; ``checksum`` is the venue's checksum that came with
        a Snapshot or BookDiff (see ``with_checksums``)."""
        key = (event.venue, event.instrument)
        if isinstance(event, Snapshot | BookDiff):
            return [self._book_entry(key, event, checksum)]
        if isinstance(event, Trade):
            return [self._trade_entry(key, event)]
        channel = self._books.get(key)
        if event.kind == "checksum" or (
            (channel is None or channel.seq == 0) and "u" not in event.ids
        ):
            self.dropped_refs += 1  # a checksum without its diff / nothing yet to describe
            return []
        if channel is None:
            channel = self._books[key] = _BookChannel(self._channel("book", key))
        channel.refs.append(_ref_data(event))
        return []

    def _book_entry(
        self, key: Key, event: Snapshot | BookDiff, checksum: int | None
    ) -> Publication:
        channel = self._books.get(key)
        if channel is None:
            channel = self._books[key] = _BookChannel(self._channel("book", key))
        venue: dict[str, Any] = {"name": event.venue, **event.ids}
        if isinstance(event, Snapshot):
            channel.book, bids, asks = _replacement(channel.book, event)
            venue["snapshot"] = True
        else:
            bids, asks = list(event.bids), list(event.asks)
            channel.book.apply({"bids": bids, "asks": asks})
        if channel.refs:
            venue["refs"] = channel.refs
            channel.refs = []
        if checksum is not None:
            venue["checksum"] = checksum
        channel.seq += 1
        data = orjson.dumps({"bids": bids, "asks": asks, "venue": venue})
        snapshot = None
        # Seq 1 always gets the snapshot hash, even when a venue's first book message
        # is not a snapshot: a subscriber must be able to start from the first entry.
        if (
            isinstance(event, Snapshot)
            or channel.seq == 1
            or channel.seq % self.snapshot_every == 0
        ):
            snapshot = orjson.dumps(channel.book.to_payload())
        return Publication(channel.name, channel.seq, event.recv_ns // 1000, data, snapshot)

    def finish(self) -> list[Publication]:
        """At the end of the recordings: an empty entry for each book whose last
        references found no entry after them to ride on."""
        items = []
        for (venue, _), channel in self._books.items():
            if channel.refs:
                ts = channel.refs[-1]["ts"]
                data = {"bids": [], "asks": [], "venue": {"name": venue, "refs": channel.refs}}
                channel.refs = []
                channel.seq += 1
                snapshot = None
                if channel.seq % self.snapshot_every == 0:
                    snapshot = orjson.dumps(channel.book.to_payload())
                items.append(
                    Publication(channel.name, channel.seq, ts, orjson.dumps(data), snapshot)
                )
        return items

    def _trade_entry(self, key: Key, trade: Trade) -> Publication:
        channel = self._trades.get(key)
        if channel is None:
            channel = self._trades[key] = _TradeChannel(self._channel("trades", key))
        channel.seq += 1
        data = {
            "id": trade.id if trade.id is not None else str(channel.seq),
            "price": trade.price,
            "size": trade.size,
            "side": trade.side,
            "venue": {"name": trade.venue, **trade.ids},
        }
        return Publication(channel.name, channel.seq, trade.recv_ns // 1000, orjson.dumps(data))


def with_checksums(
    events: Iterable[tuple[int, Event]],
) -> Iterator[tuple[int, Event, int | None]]:
    """(offset, event, checksum): a checksum Reference that directly follows its Snapshot
    or BookDiff (same venue and instrument) is folded into that event. One event of
    lookahead, read straight from the parser, so no wall-clock time passes in between."""
    held: tuple[int, Event] | None = None
    try:
        for offset, event in events:
            if held is not None:
                held_offset, held_event = held
                held = None
                if (
                    isinstance(event, Reference)
                    and event.kind == "checksum"
                    and (event.venue, event.instrument) == (held_event.venue, held_event.instrument)
                ):
                    yield held_offset, held_event, event.checksum
                    continue
                yield held_offset, held_event, None
            if isinstance(event, Snapshot | BookDiff):
                held = (offset, event)
            else:
                yield offset, event, None
    except ReplayFormatError:
        if held is not None:  # a bad line after it does not take the good event with it
            yield held[0], held[1], None
        raise
    if held is not None:
        yield held[0], held[1], None


# -- replay -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    events: int  # events read so far (a venue checksum counts with its update)
    publications: int  # entries handed to the publisher
    elapsed: float  # wall seconds since the start
    rate: float  # events per second since the previous report
    position_ns: int  # recorded receive time of the last event read
    done: bool


@dataclass
class ReplayStats:
    epoch: str
    events: int = 0
    publications: int = 0
    elapsed: float = 0.0
    channels: list[str] = field(default_factory=list)
    dropped_refs: int = 0


@dataclass(frozen=True, slots=True)
class _Step:
    """One event, ready: when it is due, and the entries (and new channels) it makes."""

    offset_ns: int
    recv_ns: int
    channels: tuple[str, ...]
    items: tuple[Publication, ...]
    events: int = 1  # 0 for the entries made at the end (Writer.finish)


class _Steps:
    """Reads events and runs the Writer; called from a worker thread, one call at a time,
    so that parsing the next chunk overlaps with publishing the current one."""

    def __init__(self, events: Iterator[tuple[int, Event, int | None]], writer: Writer) -> None:
        self._events = events
        self._writer = writer
        self._error: ReplayFormatError | None = None
        self._finished = False
        self._last = _Step(0, 0, (), ())

    def take(self, count: int) -> list[_Step]:
        """Up to ``count`` steps; [] at the end. A recording error is raised only after
        the steps before it were handed out, so that everything before it is published."""
        if self._error is not None:
            raise self._error
        steps: list[_Step] = []
        writer = self._writer
        try:
            for offset_ns, event, checksum in self._events:
                items = writer.feed(event, checksum)
                channels = tuple(writer.new_channels)
                writer.new_channels.clear()
                self._last = _Step(offset_ns, event.recv_ns, channels, tuple(items))
                steps.append(self._last)
                if len(steps) >= count:
                    return steps
            if not self._finished:  # the end: the entries that only the end makes
                self._finished = True
                last = self._last
                steps.append(_Step(last.offset_ns, last.recv_ns, (), tuple(writer.finish()), 0))
        except ReplayFormatError as exc:
            if not steps:
                raise
            self._error = exc
        return steps


class _Sender:
    """At most one publish in flight, in order; a batch's new channels are reset (epoch
    set, old stream and snapshot gone) before its entries go out. Redis outages are
    retried with backoff, so an outage delays the replay but never makes a seq gap, and
    never writes a seq twice."""

    def __init__(
        self,
        publisher: Publisher,
        epoch: str,
        sleep: Callable[[float], Awaitable[None]],
        tracer: Tracer | None = None,
    ) -> None:
        self.publisher = publisher
        self.epoch = epoch
        self.sleep = sleep
        self.tracer = tracer
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def send(self, channels: list[str], items: list[Publication]) -> None:
        await self.wait()
        if channels or items:
            self.sent += len(items)
            self._task = asyncio.create_task(self._traced_write(list(channels), list(items)))

    async def _traced_write(self, channels: list[str], items: list[Publication]) -> None:
        """One relay.publish span per batch; its traceparent goes on the batch's entries
        when it is sampled (nothing is written when tracing is off)."""
        with telemetry.publish_span(self.tracer, len(items)) as parent:
            await self._write(channels, traced(items, parent) if parent else items)

    async def wait(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _write(self, channels: list[str], items: list[Publication]) -> None:
        backoff = Backoff(0.05, 2.0)
        retried = False
        while True:
            try:
                if channels:
                    await self.publisher.reset(channels, self.epoch)
                    channels = []
                if retried and items:
                    # A failed pipeline may have been partly applied (the connection died
                    # after the server ran some commands): skip what the streams hold.
                    written = await self.publisher.last_seqs(sorted({i.channel for i in items}))
                    items = [item for item in items if item.seq > written[item.channel]]
                    retried = False
                if items:
                    await self.publisher.publish(items)
                return
            except SourceUnavailable as exc:
                retried = True
                delay = backoff.next_delay()
                log.warning(
                    "publish failed, retrying", extra={"error": str(exc), "retry_in": delay}
                )
                await self.sleep(delay)


def new_epoch() -> str:
    return f"replay-{int(time.time())}-{secrets.token_hex(3)}"


async def replay(
    paths: Sequence[Path | str],
    publisher: Publisher,
    speed: float | None = 1.0,
    *,
    snapshot_every: int = 100,
    venue: str | None = None,
    venue_prefix: bool = False,
    batch_size: int = 1000,
    epoch: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    tracer_provider: TracerProvider | None = None,
) -> ReplayStats:
    """Publish the recordings under ``paths`` (files or directories) as contract streams.

    ``speed``: 1 replays at the recorded pace, 10 ten times faster, None as fast as
    possible. Entries go out in batches of up to ``batch_size`` (one pipeline each, one
    batch in flight while the next is parsed); when paced, every batch that is due goes
    out before waiting for the next event's time. Venues recorded at different times start
    together (recordings.aligned). ``progress`` is called about every ``progress_every``
    seconds and once at the end. Tracing (``tracer_provider``, else the ``OTEL_*``
    environment, relay.telemetry): a span per batch, its traceparent on the entries.
    Raises ReplayFormatError (file and line) for a recording
    that cannot be replayed; entries before that point are already published.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (or None for as fast as possible)")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    streams = [recording.events() for recording in recordings(paths, venue)]
    writer = Writer(snapshot_every, venue_prefix)
    steps = _Steps(with_checksums(aligned(streams)), writer)
    stats = ReplayStats(epoch or new_epoch())
    tracer = telemetry.producer_tracer(tracer_provider, "relay-replay")
    sender = _Sender(publisher, stats.epoch, sleep, tracer)
    started = last_report = clock()
    reported_events = 0
    position_ns = 0
    channels: list[str] = []
    items: list[Publication] = []

    def report(done: bool) -> None:
        nonlocal last_report, reported_events
        if progress is None:
            return
        now = clock()
        rate = (stats.events - reported_events) / max(now - last_report, 1e-9)
        progress(Progress(stats.events, sender.sent, now - started, rate, position_ns, done))
        last_report, reported_events = now, stats.events

    async def flush() -> None:
        nonlocal channels, items
        await sender.send(channels, items)
        channels, items = [], []

    chunk = max(batch_size, 100)
    ahead = asyncio.ensure_future(asyncio.to_thread(steps.take, chunk))
    try:
        while batch := await ahead:
            ahead = asyncio.ensure_future(asyncio.to_thread(steps.take, chunk))
            for step in batch:
                if speed is not None:
                    wait = started + step.offset_ns / 1e9 / speed - clock()
                    if wait > 0:
                        await flush()
                        await sleep(wait)
                channels.extend(step.channels)
                items.extend(step.items)
                stats.events += step.events
                position_ns = step.recv_ns
                if len(items) >= batch_size:
                    await flush()
                if progress is not None and clock() - last_report >= progress_every:
                    report(False)
        await flush()
        await sender.wait()
    except ReplayFormatError:
        await flush()  # what came before the bad line still goes out
        await sender.wait()
        raise
    except BaseException:
        ahead.cancel()
        await sender.cancel()
        raise
    stats.publications = sender.sent
    stats.elapsed = clock() - started
    stats.channels = writer.channels()
    stats.dropped_refs = writer.dropped_refs
    report(True)
    return stats
