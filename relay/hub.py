"""The hub: channels, who is subscribed to them, and the fanout of every ingest batch.

Everything here is synchronous and runs on the event loop between two awaits, which is
what makes it correct (DESIGN.md):
- A batch is applied and fanned out with no await in between, so a subscriber joins a
  channel either before a batch (and gets its updates) or after it (and gets a snapshot
  that includes it). Nothing is missed or sent twice.
- Per update: parse, apply and encode happen once in ``Channel.apply``. Per subscriber
  there is only the write of bytes that already exist: one write per subscriber per batch,
  whatever the number of channels and updates due to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import Tracer

from relay import telemetry
from relay.core.channel import Applied, Channel, Kind, Resync, ResyncReason, replay_after
from relay.core.entry import MalformedEntry, StreamEntry
from relay.core.protocol import (
    ErrorCode,
    Ping,
    Reject,
    Request,
    Subscribe,
    Unsubscribe,
    pong_frame,
    subscribed_frame,
    unsubscribed_frame,
)
from relay.metrics import Metrics

log = logging.getLogger("relay.hub")


class Subscriber(Protocol):
    """What the hub needs of a connection (``relay.connection.Connection`` is one)."""

    id: int
    subscriptions: set[str]
    closed: bool

    def deliver(self, data: bytes) -> bool: ...

    def deliver_many(self, chunks: Iterable[bytes]) -> bool: ...


@dataclass(slots=True)
class _Waiting:
    """A subscribe that arrived while its channel was being (re)built."""

    subscriber: Subscriber
    request: Subscribe


class Hub:
    def __init__(
        self,
        metrics: Metrics,
        *,
        history: int,
        trades_kept: int,
        max_subscriptions: int,
        checksum_depth: int = 10,
        tracer: Tracer | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracer  # None: tracing off
        self.history = history
        self.trades_kept = trades_kept
        self.max_subscriptions = max_subscriptions
        self.checksum_depth = checksum_depth
        self.channels: dict[str, Channel] = {}
        # dicts used as ordered sets: iteration order is join order, and removal is O(1)
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self._waiting: dict[str, list[_Waiting]] = {}
        # Labelled children looked up once: labels() takes a lock and builds a key.
        self._ingested = {kind: metrics.entries_ingested.labels(kind.value) for kind in Kind}

    # -- channels ---------------------------------------------------------------------

    def add_channel(self, name: str, kind: Kind) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = Channel(
                name,
                kind,
                history=self.history,
                trades_kept=self.trades_kept,
                checksum_depth=self.checksum_depth,
            )
            self.channels[name] = channel
            self._subscribers[name] = {}
            self._waiting[name] = []
        return channel

    def subscriber_count(self, name: str) -> int:
        return len(self._subscribers.get(name, ()))

    # -- ingest -----------------------------------------------------------------------

    def ingest(
        self, batch: Sequence[tuple[str, Sequence[StreamEntry]]]
    ) -> list[tuple[str, Resync]]:
        """Apply one read batch and fan it out. Returns the channels that need a rebuild."""
        resyncs: list[tuple[str, Resync]] = []
        due: dict[Subscriber, list[bytes]] = {}
        gone: list[Subscriber] = []
        writes = 0
        metrics = self.metrics
        # Metrics once per channel and batch (latencies: a bulk observation of the
        # channel's producer timestamps), never per subscriber.
        now_us = time.time_ns() // 1000
        size = 0
        delivered: list[tuple[list[int], int]] = []
        for name, entries in batch:
            size += len(entries)
            channel = self.channels.get(name)
            if channel is None or not channel.live:
                continue  # a rebuild will read these entries again from the snapshot on
            frames: list[bytes] = []
            stamps: list[int] = []
            for raw in entries:
                outcome = channel.apply(raw)
                if isinstance(outcome, Applied):
                    frames.append(outcome.frame)
                    stamps.append(outcome.entry.ts)
                else:
                    resyncs.append((name, outcome))
                    self._count_resync(name, outcome)
                    break
            if not frames:
                continue
            self._ingested[channel.kind].inc(len(frames))
            metrics.ingest_lag.observe_lags(now_us, stamps)
            subscribers = self._subscribers[name]
            if not subscribers:
                continue
            delivered.append((stamps, len(subscribers)))
            chunk = frames[0] if len(frames) == 1 else b"".join(frames)
            metrics.frames_delivered.inc(len(frames) * len(subscribers))
            metrics.bytes_delivered.inc(len(chunk) * len(subscribers))
            for subscriber in subscribers:
                if len(subscriber.subscriptions) == 1:
                    # Nothing else in this batch can be due to it: write now, skip the merge.
                    writes += 1
                    if not subscriber.deliver(chunk):
                        gone.append(subscriber)
                    continue
                pending = due.get(subscriber)
                if pending is None:
                    due[subscriber] = [chunk]
                else:
                    pending.append(chunk)
        for subscriber, chunks in due.items():
            if not (
                subscriber.deliver(chunks[0])
                if len(chunks) == 1
                else subscriber.deliver_many(chunks)
            ):
                gone.append(subscriber)
        if delivered:
            # After the writes: each frame counts once per subscriber it was written to.
            written_us = time.time_ns() // 1000
            for channel_stamps, weight in delivered:
                metrics.delivery_latency.observe_lags(written_us, channel_stamps, weight)
            metrics.fanout_writes.inc(writes + len(due))
        metrics.fanout_batch.observe(size)
        for subscriber in gone:
            self.drop(subscriber)
        return resyncs

    def _count_resync(self, name: str, resync: Resync) -> None:
        self.metrics.resyncs.labels(resync.reason.value).inc()
        if resync.reason is ResyncReason.MALFORMED:
            self.metrics.malformed_entries.inc()
        elif resync.reason is ResyncReason.GAP:
            self.metrics.gaps.inc()
        channel = self.channels.get(name)
        log.warning(
            "channel resync",
            extra={
                "channel": name,
                "seq": channel.seq if channel is not None else None,
                "reason": resync.reason.value,
                "detail": resync.detail,
            },
        )

    def mark_all_stale(self, reason: ResyncReason, detail: str) -> None:
        for name in self.channels:
            self.mark_stale(name, reason, detail)

    def mark_stale(self, name: str, reason: ResyncReason, detail: str) -> None:
        channel = self.channels.get(name)
        if channel is not None and channel.live:
            channel.mark_stale()
            self._count_resync(name, Resync(reason, detail))

    def rebuild(
        self,
        name: str,
        *,
        epoch: str,
        seq: int,
        ts: int,
        state: object,
        entries: Sequence[StreamEntry],
        snapshot_id: str | None = None,
    ) -> Resync | None:
        """Reset a channel to the producer's state at ``seq`` plus ``entries`` after it.

        On success every subscriber gets the fresh snapshot (contract rule 4), encoded
        once, and the subscribes that waited for the channel are answered.
        """
        channel = self.channels[name]
        try:
            channel.reset(epoch=epoch, seq=seq, ts=ts, state=state)
        except MalformedEntry as exc:
            channel.mark_stale()
            self.metrics.malformed_entries.inc()
            return Resync(ResyncReason.MALFORMED, str(exc))
        failed = replay_after(channel, seq, entries, snapshot_id)
        if failed is not None:
            channel.mark_stale()
            return failed
        subscribers = self._subscribers[name]
        if subscribers:
            frame = self._snapshot(channel)
            self.metrics.snapshots_served.labels(channel.kind.value).inc(len(subscribers))
            gone = [s for s in subscribers if not s.deliver(frame)]
            for subscriber in gone:
                self.drop(subscriber)
        waiting, self._waiting[name] = self._waiting[name], []
        for item in waiting:
            if not item.subscriber.closed:
                self._greet(item.subscriber, channel, item.request)
        return None

    def _snapshot(self, channel: Channel) -> bytes:
        before = channel.snapshots_encoded
        started = time.time_ns() if self.tracer is not None else 0
        frame = channel.snapshot()
        if channel.snapshots_encoded != before:
            self.metrics.snapshots_encoded.inc()
            if self.tracer is not None:
                telemetry.record_snapshot_build(
                    self.tracer,
                    channel.name,
                    channel.kind.value,
                    channel.seq,
                    len(frame),
                    started,
                    time.time_ns(),
                )
        return frame

    # -- client requests --------------------------------------------------------------

    def handle(self, subscriber: Subscriber, request: Request | Reject) -> Reject | None:
        """Answer one request; the error it was answered with, if any (the caller keeps
        the connection's error budget)."""
        if isinstance(request, Subscribe):
            return self.subscribe(subscriber, request)
        if isinstance(request, Unsubscribe):
            return self.unsubscribe(subscriber, request)
        if isinstance(request, Ping):
            self._reply(subscriber, pong_frame(request.id))
            return None
        return self.reject(subscriber, request)

    def reject(self, subscriber: Subscriber, reject: Reject) -> Reject:
        self.metrics.client_errors.labels(reject.code.value).inc()
        self._reply(subscriber, reject.frame())
        return reject

    def subscribe(self, subscriber: Subscriber, request: Subscribe) -> Reject | None:
        name = request.channel
        if name in subscriber.subscriptions:
            return self.reject(
                subscriber,
                Reject(request.id, ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {name}"),
            )
        if len(subscriber.subscriptions) >= self.max_subscriptions:
            return self.reject(
                subscriber,
                Reject(
                    request.id,
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"at most {self.max_subscriptions} subscriptions per connection",
                ),
            )
        channel = self.channels.get(name)
        if channel is None:
            return self.reject(
                subscriber,
                Reject(request.id, ErrorCode.UNKNOWN_CHANNEL, f"no such channel: {name}"),
            )
        subscriber.subscriptions.add(name)
        self.metrics.subscriptions.labels(channel.kind.value).inc()
        if channel.live:
            self._greet(subscriber, channel, request)
        else:
            self._waiting[name].append(_Waiting(subscriber, request))
        return None

    def _greet(self, subscriber: Subscriber, channel: Channel, request: Subscribe) -> None:
        """Answer a subscribe on a live channel and join it, with no await in between."""
        if request.resume is not None:
            replay = channel.resume(request.resume.epoch, request.resume.seq)
            if replay is not None:
                self.metrics.resumes.labels("replayed").inc()
                head = subscribed_frame(
                    request.id, channel.name, channel.epoch, request.resume.seq, resumed=True
                )
                self._join(subscriber, channel.name, [head, *replay.frames])
                return
            self.metrics.resumes.labels("snapshot").inc()
        head = subscribed_frame(
            request.id,
            channel.name,
            channel.epoch,
            channel.seq,
            resumed=False if request.resume is not None else None,
        )
        self.metrics.snapshots_served.labels(channel.kind.value).inc()
        self._join(subscriber, channel.name, [head, self._snapshot(channel)])

    def _join(self, subscriber: Subscriber, name: str, frames: list[bytes]) -> None:
        if subscriber.deliver_many(frames):
            self._subscribers[name][subscriber] = None
        else:
            self.drop(subscriber)

    def unsubscribe(self, subscriber: Subscriber, request: Unsubscribe) -> Reject | None:
        name = request.channel
        if name not in subscriber.subscriptions:
            return self.reject(
                subscriber,
                Reject(request.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {name}"),
            )
        self._leave(subscriber, name)
        self._reply(subscriber, unsubscribed_frame(request.id, name))
        return None

    def _leave(self, subscriber: Subscriber, name: str) -> None:
        subscriber.subscriptions.discard(name)
        self._subscribers[name].pop(subscriber, None)
        waiting = self._waiting[name]
        if waiting:
            self._waiting[name] = [w for w in waiting if w.subscriber is not subscriber]
        self.metrics.subscriptions.labels(self.channels[name].kind.value).dec()

    def drop(self, subscriber: Subscriber) -> None:
        """Forget a connection that closed or is being closed; idempotent."""
        for name in list(subscriber.subscriptions):
            self._leave(subscriber, name)

    def _reply(self, subscriber: Subscriber, frame: bytes) -> None:
        if not subscriber.deliver(frame):
            self.drop(subscriber)
