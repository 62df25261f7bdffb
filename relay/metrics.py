"""Prometheus metrics of one relay process, in a registry of its own (tests build many apps).

Label sets are bounded: error codes, close codes, resync reasons and channel kinds are
closed enumerations; nothing is labelled per connection. Per-channel series exist only
when ``RELAY_METRICS_CHANNEL_LABELS`` is above 0, for at most that many channels, and are
read from the hub at scrape time (``ChannelCollector``): they cost the hot path nothing.

The hot path (``Hub.ingest``) touches metrics once per channel and batch, never per
subscriber: ingest lag and delivery latency go through ``BulkHistogram``, which takes a
channel's producer timestamps of one batch in one call, and weights delivery latency by
the number of subscribers the frames were written to (docs/observability.md).

Every metric is listed, with its type, labels and meaning, in docs/observability.md.
"""

from __future__ import annotations

import asyncio
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.core.admission import RefusalReason
from relay.core.auth import RefusalReason as AuthRefusal
from relay.core.channel import Kind, ResyncReason
from relay.core.protocol import CloseCode, ErrorCode

# Seconds from the producer's ts to the relay: sub-millisecond on one host, up to a minute
# when a relay catches up after an outage.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# How late the event loop wakes from a sleep.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Entries in one read batch (XREAD COUNT is per stream, so a batch can exceed it).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Close codes counted under their own label; any other code a client sends is "other".
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1002, 1005, 1006, 1007, 1008, 1009, 1011, 1013, 4000})
# RFC 6455 codes aiohttp's frame reader closes with on the relay's behalf: 1002 protocol
# error (e.g. RSV1 without an extension), 1007 text that is not UTF-8, 1009 over-size.
READER_CLOSE_CODES = (1002, 1007, 1009)
# Why the relay closed a connection with 1008 (docs/limits.md).
POLICY_CLOSE_REASONS = ("rate_limit", "error_limit", "no_subscription")


def close_code_label(code: int | None) -> str:
    """A bounded label for a WebSocket close code (None: the socket ended without one)."""
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class BulkHistogram(Collector):
    """A histogram fed a batch at a time, with an optional weight per observation.

    ``observe_lags(now_us, stamps, weight)`` counts ``now_us - ts`` (clamped at 0) for each
    producer timestamp in ``stamps`` (integer microseconds), ``weight`` times each. One
    call per channel and batch; per value only a bisect and an addition, in integers.
    It runs on the event loop, as does the scrape (prometheus_client's aiohttp handler),
    so no lock is needed.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._bounds_us = [round(b * 1_000_000) for b in self._bounds]
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum_us = 0
        registry.register(self)

    def observe(self, seconds: float, weight: int = 1) -> None:
        value_us = max(round(seconds * 1_000_000), 0)
        self._counts[bisect_left(self._bounds_us, value_us)] += weight
        self._sum_us += value_us * weight

    def observe_lags(self, now_us: int, stamps: Sequence[int], weight: int = 1) -> None:
        bounds = self._bounds_us
        counts = self._counts
        total = 0
        for ts in stamps:
            lag = now_us - ts
            if lag < 0:
                lag = 0  # a producer clock ahead of ours: count it as no lag
            counts[bisect_left(bounds, lag)] += weight
            total += lag
        self._sum_us += total * weight

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, unit="")

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        family = HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self._sum_us / 1_000_000
        )
        return [family]

    def count(self) -> int:
        return sum(self._counts)


@dataclass(frozen=True, slots=True)
class ChannelRow:
    name: str
    subscribers: int
    live: bool
    seq: int
    ts_us: int


class ChannelCollector(Collector):
    """Per-channel gauges for the first ``cap`` channels the relay learned about.

    Read from the hub at scrape time. The channels kept are the first ``cap`` in the
    order the relay found them, so a channel's series stay put for the process's life;
    ``relay_channel_labels_omitted`` says how many channels were left out.
    """

    def __init__(self, rows: Callable[[], Sequence[ChannelRow]], cap: int) -> None:
        self._rows = rows
        self._cap = cap

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "relay_channel_subscribers", "Subscribers of a channel", labels=["channel"]
            ),
            GaugeMetricFamily(
                "relay_channel_live",
                "1 while a channel is live, 0 while it waits for a rebuild",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "relay_channel_seq", "Seq of the last entry a channel applied", labels=["channel"]
            ),
            GaugeMetricFamily(
                "relay_channel_last_entry_timestamp_seconds",
                "Producer ts of the last entry a channel applied, Unix seconds",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "relay_channel_labels_omitted",
                "Channels left without per-channel series (over RELAY_METRICS_CHANNEL_LABELS)",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        subscribers, live, seq, last_ts, omitted = self._families()
        rows = self._rows()
        for row in rows[: self._cap]:
            subscribers.add_metric([row.name], row.subscribers)
            live.add_metric([row.name], 1.0 if row.live else 0.0)
            seq.add_metric([row.name], row.seq)
            last_ts.add_metric([row.name], row.ts_us / 1_000_000)
        omitted.add_metric([], max(len(rows) - self._cap, 0))
        return (subscribers, live, seq, last_ts, omitted)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # CPU, memory, file descriptors (process_*), Python version and GC (python_*).
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        if GC_COLLECTOR is not None:
            GCCollector(registry=registry)
        self.build_info = Gauge(
            "relay_build_info",
            "Build information (always 1)",
            ["version", "python"],
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

        # -- connections and subscriptions ------------------------------------------------
        self.connections = Gauge(
            "relay_connections", "Open WebSocket connections", registry=registry
        )
        self.connections_accepted = Counter(
            "relay_connections_accepted", "WebSocket connections accepted", registry=registry
        )
        self.connections_closed = Counter(
            "relay_connections_closed",
            "WebSocket connections ended, by the close code of the connection (either side)",
            ["code"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "relay_connections_refused",
            "WebSocket upgrades refused before the upgrade, by reason (docs/limits.md)",
            ["reason"],
            registry=registry,
        )
        self.subscriptions = Gauge(
            "relay_subscriptions", "Active subscriptions", ["kind"], registry=registry
        )
        self.channels = Gauge(
            "relay_channels",
            "Known channels, live or waiting for a rebuild",
            ["state"],
            registry=registry,
        )
        self.ready = Gauge("relay_ready", "1 while /readyz answers 200, else 0", registry=registry)

        # -- ingest and fanout ------------------------------------------------------------
        self.entries_ingested = Counter(
            "relay_entries_ingested", "Stream entries applied", ["kind"], registry=registry
        )
        self.fanout_batch = Histogram(
            "relay_fanout_batch_entries",
            "Stream entries per read batch (one observation per batch)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.fanout_writes = Counter(
            "relay_fanout_writes",
            "Socket writes by the fanout (one per subscriber and batch)",
            registry=registry,
        )
        self.frames_delivered = Counter(
            "relay_frames_delivered", "Update frames written to clients", registry=registry
        )
        self.bytes_delivered = Counter(
            "relay_bytes_delivered", "Update bytes written to clients", registry=registry
        )
        self.ingest_lag = BulkHistogram(
            "relay_ingest_lag_seconds",
            "Time from the producer's ts to the relay applying the entry (once per entry)",
            LATENCY_BUCKETS,
            registry,
        )
        self.delivery_latency = BulkHistogram(
            "relay_delivery_latency_seconds",
            "Time from the producer's ts to the write to a client's socket "
            "(once per update frame and subscriber it was written to)",
            LATENCY_BUCKETS,
            registry,
        )

        # -- greeting subscribers ---------------------------------------------------------
        self.snapshots_served = Counter(
            "relay_snapshots_served", "Snapshots sent to clients", ["kind"], registry=registry
        )
        self.snapshots_encoded = Counter(
            "relay_snapshots_encoded",
            "Snapshots encoded (once per channel and seq)",
            registry=registry,
        )
        self.resumes = Counter(
            "relay_resumes", "Resume requests by outcome", ["outcome"], registry=registry
        )

        # -- closes and client errors -----------------------------------------------------
        self.slow_consumer_closes = Counter(
            "relay_slow_consumer_closes",
            "Connections closed 4000 (slow consumer)",
            registry=registry,
        )
        self.closes = Counter(
            "relay_closes",
            "Connections closed by the relay, by close code",
            ["code"],
            registry=registry,
        )
        self.policy_closes = Counter(
            "relay_policy_closes",
            "Connections closed 1008 by the relay, by reason (docs/limits.md)",
            ["reason"],
            registry=registry,
        )
        self.client_errors = Counter(
            "relay_client_errors",
            "Error replies to clients, by code",
            ["code"],
            registry=registry,
        )

        # -- who may connect (docs/security.md) ----------------------------------------
        self.auth_refusals = Counter(
            "relay_auth_refusals",
            "WebSocket handshakes refused by authentication (401, 429), by reason",
            ["reason"],
            registry=registry,
        )
        self.auth_expiries = Counter(
            "relay_auth_expiries",
            "Connections closed 1008 because their token expired",
            registry=registry,
        )

        # -- the source -------------------------------------------------------------------
        self.resyncs = Counter(
            "relay_source_resyncs",
            "Channel rebuilds from the snapshot, by reason",
            ["reason"],
            registry=registry,
        )
        self.gaps = Counter(
            "relay_source_gaps",
            "Entries whose seq skipped ahead of the channel's (each causes a resync)",
            registry=registry,
        )
        self.malformed_entries = Counter(
            "relay_malformed_entries",
            "Stream entries that break the producer contract",
            registry=registry,
        )
        self.ingest_failures = Counter(
            "relay_ingest_failures",
            "Unexpected ingest errors (each followed by a rebuild of every channel)",
            registry=registry,
        )
        self.redis_errors = Counter(
            "relay_redis_errors",
            "Failed source reads (each followed by a backoff)",
            registry=registry,
        )
        self.redis_reconnects = Counter(
            "relay_redis_reconnects",
            "Recoveries of the reader after the source was unavailable",
            registry=registry,
        )
        self.source_up = Gauge(
            "relay_source_up",
            "1 while the source answers, 0 from a failed read until the next success",
            registry=registry,
        )
        self.source_contact_age = Gauge(
            "relay_source_last_contact_age_seconds",
            "Seconds since the source last answered (-1 before the first answer)",
            registry=registry,
        )

        # -- the process ------------------------------------------------------------------
        self.loop_lag = Histogram(
            "relay_event_loop_lag_seconds",
            "How late the event loop wakes from a periodic sleep",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        # Read at scrape time (relay.server): a count that only grows means a task leak.
        self.loop_tasks = Gauge(
            "relay_event_loop_tasks",
            "Tasks of the event loop not yet done (one per connection, plus a few fixed ones)",
            registry=registry,
        )

        self._zeros()

    def _zeros(self) -> None:
        """Every series of the closed label sets exists from the start, at 0: a rate() or
        an alert sees 0, not "no data", before the first event."""
        for kind in Kind:
            self.subscriptions.labels(kind.value)
            self.entries_ingested.labels(kind.value)
            self.snapshots_served.labels(kind.value)
        for state in ("live", "stale"):
            self.channels.labels(state)
        for outcome in ("replayed", "snapshot"):
            self.resumes.labels(outcome)
        for reason in ResyncReason:
            self.resyncs.labels(reason.value)
        for refusal in RefusalReason:
            self.connections_refused.labels(refusal.value)
        for close_reason in POLICY_CLOSE_REASONS:
            self.policy_closes.labels(close_reason)
        for auth_refusal in AuthRefusal:
            self.auth_refusals.labels(auth_refusal.value)
        for error in ErrorCode:
            self.client_errors.labels(error.value)
        for code in (CloseCode.GOING_AWAY, CloseCode.POLICY_VIOLATION, CloseCode.SLOW_CONSUMER):
            self.closes.labels(str(int(code)))
        for reader_code in READER_CLOSE_CODES:
            self.closes.labels(str(reader_code))
        for label in (*(str(c) for c in sorted(KNOWN_CLOSE_CODES)), "none", "other"):
            self.connections_closed.labels(label)

    def names(self) -> set[str]:
        """Every metric and sample name this registry exposes (for dashboards' tests)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
        return names


def loop_task_count() -> float:
    """Tasks of the running event loop not yet done; 0 when no loop runs (a scrape runs
    on the loop: prometheus_client's aiohttp handler calls the collectors inline)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


async def watch_loop_lag(histogram: Histogram, interval: float = 0.25) -> None:
    """Sleep ``interval`` again and again and observe how late each wake-up is.

    A loop busy with a long synchronous step (a huge batch, a snapshot of a deep book)
    wakes this task late by that much. Runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(loop.time() - due, 0.0))
