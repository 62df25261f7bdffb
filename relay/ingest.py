"""The ingest loop: cold start, one blocking read loop over all streams, and rebuilds.

Per channel (DESIGN.md, "State and recovery"):
- book: read the snapshot hash, then the stream from the snapshot's id on; apply what
  follows its seq. trades: read the last N entries.
- then one XREAD BLOCK over every live channel's last id, with a large COUNT.
- a gap, a backwards seq, a malformed entry or a new epoch marks the channel stale; it is
  rebuilt from the snapshot before the next read and its subscribers get a fresh snapshot.
  A channel that cannot be rebuilt yet (no snapshot, or the snapshot's successors were
  trimmed) is retried on the next discovery tick. Never guessed.
- a source error keeps every client connected: the loop backs off (capped, jittered) and
  continues from the ids it holds, so nothing the stream still holds is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Tracer

from relay import telemetry
from relay.backoff import Backoff
from relay.config import ServeConfig
from relay.core.channel import Kind, ResyncReason, parse_channel_name
from relay.core.entry import MalformedEntry, StreamEntry, parse_entry
from relay.hub import Hub
from relay.metrics import Metrics
from relay.source.base import Source, SourceUnavailable

log = logging.getLogger("relay.ingest")

_XRANGE_PAGE = 5000
_REBUILD_RETRY = 1.0  # seconds: the longest wait before another try of a failed rebuild


class Ingestor:
    def __init__(
        self,
        source: Source,
        hub: Hub,
        config: ServeConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer | None = None,
    ) -> None:
        self.source = source
        self.hub = hub
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.tracer = tracer  # None: tracing off
        self.positions: dict[str, str] = {}
        self.synced_once = False
        self.last_contact: float | None = None
        self._backoff = Backoff(config.backoff_base, config.backoff_max)
        self._next_discovery = 0.0
        # A channel whose rebuild failed waits before the next try, so a channel stuck on
        # a bad entry costs Redis about one snapshot read per second, not one per read
        # batch. The wait grows from backoff_base to 1 s: a producer that is just opening
        # a new epoch (a Redis that restarted empty) is caught within a few read blocks.
        self._retry_at: dict[str, float] = {}
        self._rebuild_failures: dict[str, int] = {}
        self._rng = random.Random()
        # Why each channel waits for a rebuild (the relay.resync span's reason).
        self._stale_reasons: dict[str, str] = {}
        # Since when the source has been failing (None while it answers), and how often.
        self._down_since: float | None = None
        self._failed_reads = 0
        # The last failure of an outage: the warnings are rate-limited, so the recovery
        # line says how the outage ended (refused, timed out, LOADING, ...).
        self._last_error = ""

    def ready(self) -> bool:
        """Initial state loaded and the source answered recently."""
        if not self.synced_once or self.last_contact is None:
            return False
        return self.clock() - self.last_contact <= self.config.ready_grace

    def source_up(self) -> bool:
        """The source answered and has not failed since."""
        return self._down_since is None and self.last_contact is not None

    def contact_age(self) -> float:
        """Seconds since the source last answered; -1 before it ever did."""
        return -1.0 if self.last_contact is None else self.clock() - self.last_contact

    async def run(self) -> None:
        # No client spans for the reader's own Redis commands (one per blocking XREAD)
        # should a Redis instrumentation be installed: ingest batches are traced instead.
        with suppress_instrumentation():
            await self._run()

    async def _run(self) -> None:
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A cancellation that something below swallowed (seen once in ~12
                # shutdowns, inside redis-py's blocking XREAD): stop at the next turn
                # instead of reading on and holding the shutdown for its 5 s bound.
                raise asyncio.CancelledError
            try:
                await self.step()
                self._backoff.reset()
                if self._down_since is not None:
                    self._recovered()
            except SourceUnavailable as exc:
                self.metrics.redis_errors.inc()
                if self._down_since is None:
                    self._down_since = self.clock()
                self._failed_reads += 1
                self._last_error = str(exc)
                delay = self._backoff.next_delay()
                log.warning(
                    "source unavailable, retrying",
                    extra={"error": str(exc), "retry_in": round(delay, 3)},
                )
                await asyncio.sleep(delay)
            except Exception:
                # A bug, not an outage. Keep serving, but trust no state built so far:
                # every channel is rebuilt from its snapshot (never guess).
                self.metrics.ingest_failures.inc()
                delay = self._backoff.next_delay()
                log.exception("ingest failed, rebuilding every channel", extra={"retry_in": delay})
                self.hub.mark_all_stale(ResyncReason.INTERNAL, "ingest failure")
                for name in self.hub.channels:
                    self._stale_reasons[name] = ResyncReason.INTERNAL.value
                self.positions.clear()
                await asyncio.sleep(delay)

    def _recovered(self) -> None:
        """The first good turn after the source failed: a reconnect."""
        assert self._down_since is not None
        self.metrics.redis_reconnects.inc()
        log.info(
            "source recovered",
            extra={
                "down_for": round(self.clock() - self._down_since, 3),
                "failed_reads": self._failed_reads,
                "last_error": self._last_error,
            },
        )
        self._down_since = None
        self._failed_reads = 0

    async def step(self) -> None:
        """One turn: discovery when due, rebuilds when needed, then one blocking read."""
        now = self.clock()
        if now >= self._next_discovery:
            await self.discover()
            self._next_discovery = now + self.config.discovery_interval
            self.last_contact = self.clock()
        await self.sync_stale()
        self.synced_once = True
        if not self.positions:
            await asyncio.sleep(self.config.read_block_ms / 1000)
            return
        batch = await self.source.read(
            self.positions, self.config.read_block_ms, self.config.read_count
        )
        self.last_contact = self.clock()
        if batch:
            self.apply(batch)

    def apply(self, batch: list[tuple[str, list[StreamEntry]]]) -> None:
        for name, entries in batch:
            if entries and name in self.positions:
                self.positions[name] = entries[-1].id
        tracer = self.tracer
        if tracer is None:
            resyncs = self.hub.ingest(batch)
        else:
            span = telemetry.start_ingest_span(tracer, batch)
            with trace.use_span(span, end_on_exit=True):
                resyncs = self.hub.ingest(batch)
                if resyncs:
                    span.set_attribute("relay.resyncs", len(resyncs))
        for name, resync in resyncs:
            self.positions.pop(name, None)
            self._stale_reasons[name] = resync.reason.value

    async def discover(self) -> None:
        names = list(self.config.channels) or await self.source.discover()
        for name in names:
            kind = parse_channel_name(name)
            if kind is None:
                continue
            if name not in self.hub.channels:
                self.hub.add_channel(name, kind)
                log.info("channel discovered", extra={"channel": name})
        live = [name for name, ch in self.hub.channels.items() if ch.live]
        if not live:
            return
        for name, epoch in (await self.source.epochs(live)).items():
            channel = self.hub.channels[name]
            if channel.live and (epoch or "") != channel.epoch:
                self.hub.mark_stale(
                    name, ResyncReason.EPOCH, f"epoch {channel.epoch!r} -> {epoch!r}"
                )
                self._stale_reasons[name] = ResyncReason.EPOCH.value
                self.positions.pop(name, None)
        self._count_channels()

    def _count_channels(self) -> None:
        live = sum(1 for ch in self.hub.channels.values() if ch.live)
        self.metrics.channels.labels("live").set(live)
        self.metrics.channels.labels("stale").set(len(self.hub.channels) - live)

    async def sync_stale(self) -> None:
        # Once per read: a list of the stale channels (usually none) before any await.
        stale = [name for name, channel in self.hub.channels.items() if not channel.live]
        if not stale:
            return
        now = self.clock()
        for name in stale:
            channel = self.hub.channels[name]
            if channel.live or self._retry_at.get(name, 0.0) > now:
                continue
            reason = self._stale_reasons.get(name, "cold_start")
            with telemetry.resync_span(self.tracer, name, channel.kind.value, reason):
                if channel.kind is Kind.BOOK:
                    await self._sync_book(name)
                else:
                    await self._sync_trades(name)
        self._count_channels()

    async def _sync_book(self, name: str) -> None:
        # The epoch is read before and after: a producer restarting in between would
        # otherwise pair one epoch's name with the other epoch's book.
        epoch = (await self.source.epochs([name]))[name] or ""
        snapshot = await self.source.snapshot(name)
        if snapshot is None:
            self._rebuilt(name, "no snapshot hash yet", "")
            return
        entries = await self._entries_after(name, snapshot.id)
        if ((await self.source.epochs([name]))[name] or "") != epoch:
            self._rebuilt(name, "epoch changed during the rebuild", "")
            return
        try:
            state = orjson.loads(snapshot.data)
        except orjson.JSONDecodeError:
            state = None  # reported as malformed by the rebuild below
        failed = self.hub.rebuild(
            name,
            epoch=epoch,
            seq=snapshot.seq,
            ts=snapshot.ts,
            state=state,
            entries=entries,
            snapshot_id=snapshot.id,
        )
        self._rebuilt(name, failed, entries[-1].id if entries else snapshot.id)

    async def _sync_trades(self, name: str) -> None:
        known = (await self.source.epochs([name]))[name]
        epoch = known or ""
        last = await self.source.last_entries(name, max(self.config.trades_snapshot, 1))
        if known is None and not last:
            # Neither a stream nor an epoch: the channel is gone for now (a Redis that
            # restarted empty). An empty history in no epoch would be a guess, sent to
            # every subscriber; the producer's new epoch is waited for instead.
            self._rebuilt(name, "no stream and no epoch", "")
            return
        seq, ts = 0, 0
        trades: list[bytes] = []
        for raw in last:
            try:
                entry = parse_entry(raw)
            except MalformedEntry as exc:
                self.metrics.malformed_entries.inc()
                log.warning(
                    "malformed entry left out of trades history",
                    extra={"channel": name, "id": raw.id, "error": str(exc)},
                )
                trades.clear()  # keep only what follows the bad entry: it is contiguous
                continue
            seq, ts = entry.seq, entry.ts
            trades.append(entry.data)
        keep = trades[-self.config.trades_snapshot :] if self.config.trades_snapshot else []
        failed = self.hub.rebuild(name, epoch=epoch, seq=seq, ts=ts, state=keep, entries=[])
        self._rebuilt(name, failed, last[-1].id if last else "0-0")

    def _rebuilt(self, name: str, failed: object, position: str) -> None:
        if failed is None:
            self.positions[name] = position
            self._retry_at.pop(name, None)
            self._rebuild_failures.pop(name, None)
            self._stale_reasons.pop(name, None)
            channel = self.hub.channels[name]
            telemetry.annotate(
                **{"relay.resync.outcome": "live", "relay.seq": channel.seq},
            )
            log.info(
                "channel live", extra={"channel": name, "epoch": channel.epoch, "seq": channel.seq}
            )
        else:
            telemetry.annotate(**{"relay.resync.outcome": "failed", "relay.error": str(failed)})
            failures = self._rebuild_failures[name] = self._rebuild_failures.get(name, 0) + 1
            ceiling = min(_REBUILD_RETRY, self.config.backoff_base * 2.0 ** min(failures - 1, 16))
            # Half to all of the ceiling: spread out, yet never a burst of immediate tries.
            self._retry_at[name] = self.clock() + self._rng.uniform(ceiling / 2, ceiling)
            log.warning(
                "channel rebuild failed, will retry", extra={"channel": name, "error": str(failed)}
            )

    async def _entries_after(self, name: str, start: str) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        while True:
            page = await self.source.entries_from(name, start, _XRANGE_PAGE)
            entries.extend(page)
            if len(page) < _XRANGE_PAGE:
                return entries
            start = "(" + page[-1].id
