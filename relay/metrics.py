"""Prometheus metrics of one relay process, in a registry of its own (tests build many apps).

Label sets are bounded: error codes, close codes, resync reasons and channel kinds are
closed enumerations; nothing is labelled per connection or per channel.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from relay import __version__


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge(
            "relay_build_info", "Build information", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        self.connections = Gauge(
            "relay_connections", "Open WebSocket connections", registry=registry
        )
        self.connections_accepted = Counter(
            "relay_connections_accepted", "WebSocket connections accepted", registry=registry
        )
        self.subscriptions = Gauge(
            "relay_subscriptions", "Active subscriptions", ["kind"], registry=registry
        )
        self.channels = Gauge("relay_channels", "Known channels", ["state"], registry=registry)
        self.entries_ingested = Counter(
            "relay_entries_ingested", "Stream entries applied", ["kind"], registry=registry
        )
        self.frames_delivered = Counter(
            "relay_frames_delivered", "Update frames written to clients", registry=registry
        )
        self.bytes_delivered = Counter(
            "relay_bytes_delivered", "Update bytes written to clients", registry=registry
        )
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
        self.client_errors = Counter(
            "relay_client_errors",
            "Error replies to clients, by code",
            ["code"],
            registry=registry,
        )
        self.resyncs = Counter(
            "relay_source_resyncs",
            "Channel rebuilds from the snapshot, by reason",
            ["reason"],
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
