"""Traces: producers put a sampled traceparent on entries; the relay makes one span per
ingest batch linked to them, spans for resyncs and snapshot builds, HTTP spans for the
short routes only; nothing at all when tracing is off."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind
from support.client import connect

from relay import telemetry
from relay.core.entry import StreamEntry
from relay.ingest import Ingestor
from relay.producer import MemoryPublisher, Publication, RedisPublisher, Simulator, now_us
from relay.replay.writer import _Sender
from relay.source.base import snapshot_key, stream_key
from relay.source.memory import MemorySource, MemoryStore

from .helpers import get, relay_with

Tracing = tuple[TracerProvider, InMemorySpanExporter]


def _provider(sampler: Sampler = ALWAYS_ON) -> Tracing:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    provider, exporter = _provider()
    yield provider, exporter
    telemetry.uninstrument_aiohttp()  # web.Application is patched process-wide
    provider.shutdown()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _ids(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


async def test_ingest_batches_are_linked_to_the_producers_spans(tracing: Tracing) -> None:
    provider, exporter = tracing
    store = MemoryStore()
    sim = Simulator(MemoryPublisher(store), symbols=1, seed=3, rate=400.0, tracer_provider=provider)
    await sim.start()
    async with relay_with(MemorySource(store), tracer_provider=provider) as relay:
        await relay.wait_live("book.BTC-USD")
        async with connect(relay.ws_url) as feed:
            await feed.subscribe("book.BTC-USD")
            await feed.until("book.BTC-USD", 1)
            await sim.run(steps=30)
            await feed.until("book.BTC-USD", sim.seqs["book.BTC-USD"])
        for route in ("/channels", "/healthz", "/readyz", "/metrics"):
            assert (await get(relay.http_url + route))[0] == 200
        batches = relay.metric("relay_fanout_batch_entries_count")
    spans = exporter.get_finished_spans()

    publishes = _named(spans, "relay.publish")
    assert len(publishes) >= 2
    assert all(span.kind is SpanKind.PRODUCER for span in publishes)
    assert publishes[0].attributes is not None
    assert publishes[0].attributes["messaging.system"] == "redis"
    published = {_ids(span) for span in publishes}

    # Every entry carries its publish span's traceparent.
    entries = store.stream(stream_key("md:", "book.BTC-USD"))
    parents = {entry.fields.get(b"traceparent") for entry in entries}
    assert None not in parents
    assert {telemetry.parse_traceparent(p) is not None for p in parents if p} == {True}

    ingests = _named(spans, "relay.ingest")
    # One span per read batch, never one per frame or per subscriber.
    assert len(ingests) == batches >= 1
    linked: set[tuple[int, int]] = set()
    for span in ingests:
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is None  # a root span, linked (not parented) to its producers
        assert span.attributes is not None
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.batch.message_count"] in range(1, 10_000)
        assert span.links
        for link in span.links:
            linked.add((link.context.trace_id, link.context.span_id))
            assert link.context.is_remote
    assert linked <= published
    assert len(linked) >= 2

    resyncs = _named(spans, "relay.resync")
    assert resyncs
    assert resyncs[0].attributes is not None
    assert resyncs[0].attributes["relay.resync.reason"] == "cold_start"
    assert resyncs[0].attributes["relay.resync.outcome"] == "live"

    builds = _named(spans, "relay.snapshot.build")
    assert len(builds) == 1  # one encoding for the one subscribe
    assert builds[0].attributes is not None
    assert builds[0].attributes["messaging.destination.name"] == "book.BTC-USD"
    assert builds[0].attributes["relay.snapshot.bytes"] in range(100, 1 << 20)

    server = [span for span in spans if span.kind is SpanKind.SERVER]
    assert [span.name for span in server] == ["GET /channels"]


async def test_a_gap_makes_a_resync_span_with_its_reason(tracing: Tracing) -> None:
    provider, exporter = tracing
    store = MemoryStore()
    publisher = MemoryPublisher(store)
    sim = Simulator(publisher, symbols=1, seed=5, tracer_provider=provider)
    await sim.start()
    async with relay_with(MemorySource(store), tracer_provider=provider) as relay:
        await relay.wait_live("book.BTC-USD")
        data = orjson.dumps({"bids": [], "asks": []})
        await publisher.publish([Publication("book.BTC-USD", 5, now_us(), data)])
        async with asyncio.timeout(5):
            while not any(
                (s.attributes or {}).get("relay.resync.reason") == "gap"
                for s in _named(exporter.get_finished_spans(), "relay.resync")
            ):
                await asyncio.sleep(0.02)
        assert relay.metric("relay_source_gaps_total") == 1
    ingests = _named(exporter.get_finished_spans(), "relay.ingest")
    assert [(s.attributes or {}).get("relay.resyncs") for s in ingests] == [1]


def _batch(*parents: bytes | None) -> list[tuple[str, list[StreamEntry]]]:
    entries = []
    for i, parent in enumerate(parents, 1):
        fields = {b"seq": b"%d" % i, b"ts": b"1", b"data": b"{}"}
        if parent is not None:
            fields[b"traceparent"] = parent
        entries.append(StreamEntry(f"{i}-0", fields))
    return [("book.X", entries)]


PARENT_A = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PARENT_B = b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"


def test_traceparents_are_parsed_only_for_a_sampled_batch_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    original = telemetry.parse_traceparent

    def counting(value: bytes) -> object:
        parsed.append(value)
        return original(value)

    monkeypatch.setattr(telemetry, "parse_traceparent", counting)
    batch = _batch(PARENT_A, PARENT_A, PARENT_B, None, b"garbage", PARENT_A)

    off, _ = _provider(ALWAYS_OFF)
    off_tracer = telemetry.tracer(off)
    assert off_tracer is not None
    telemetry.start_ingest_span(off_tracer, batch).end()
    assert parsed == []

    on, exporter = _provider(ALWAYS_ON)
    on_tracer = telemetry.tracer(on)
    assert on_tracer is not None
    telemetry.start_ingest_span(on_tracer, batch).end()
    assert parsed == [PARENT_A, PARENT_B, b"garbage"]
    (span,) = exporter.get_finished_spans()
    assert [hex(link.context.span_id) for link in span.links] == [
        "0xb7ad6b7169203331",
        "0xf067aa0ba902b7",
    ]


def test_links_are_capped() -> None:
    parents = [b"00-0af7651916cd43dd8448eb211c80319c-%016x-01" % i for i in range(1, 300)]
    assert len(telemetry.producer_contexts(_batch(*parents))) == telemetry.MAX_LINKS


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not telemetry.tracing_requested({})
    assert not telemetry.tracing_requested({"OTEL_TRACES_EXPORTER": "none"})
    assert telemetry.tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert telemetry.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not telemetry.tracing_requested(
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    )
    assert telemetry.tracer(None) is None


async def test_with_tracing_off_the_relay_holds_no_tracer_and_writes_no_traceparent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if telemetry.tracing_requested(os.environ):
        pytest.skip("this test process has OTEL_* variables that turn tracing on")

    def boom(*args: object) -> None:
        raise AssertionError("no ingest span when tracing is off")

    monkeypatch.setattr(telemetry, "start_ingest_span", boom)
    original_application = web.Application
    store = MemoryStore()
    sim = Simulator(MemoryPublisher(store), symbols=1, seed=1, rate=400.0)
    await sim.start()
    async with relay_with(MemorySource(store)) as relay:
        assert web.Application is original_application  # not instrumented
        assert relay.relay.hub.tracer is None
        ingestor: Ingestor = relay.relay.ingestor
        assert ingestor.tracer is None
        await relay.wait_live("book.BTC-USD")
        async with connect(relay.ws_url) as feed:
            await feed.subscribe("book.BTC-USD")
            await sim.run(steps=10)
            await feed.until("book.BTC-USD", sim.seqs["book.BTC-USD"])
    entries = store.stream(stream_key("md:", "book.BTC-USD"))
    assert all(b"traceparent" not in entry.fields for entry in entries)


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout.decode()


SPAN_IN_A_FRESH_PROCESS = """
from relay import telemetry
provider = telemetry.configure("relay")
tracer = telemetry.tracer(provider)
print("tracer:", tracer is not None)
if tracer is not None:
    with tracer.start_as_current_span("probe"):
        pass
    provider.shutdown()
"""


def test_exporter_sampler_and_service_come_from_otel_variables() -> None:
    assert _run(SPAN_IN_A_FRESH_PROCESS).strip() == "tracer: False"
    out = _run(SPAN_IN_A_FRESH_PROCESS, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="md")
    assert "tracer: True" in out
    assert '"name": "probe"' in out
    assert '"service.name": "md"' in out
    out = _run(
        SPAN_IN_A_FRESH_PROCESS, OTEL_TRACES_EXPORTER="console", OTEL_TRACES_SAMPLER="always_off"
    )
    assert "tracer: True" in out
    assert "probe" not in out
    out = _run(SPAN_IN_A_FRESH_PROCESS, OTEL_TRACES_EXPORTER="console")
    assert '"service.name": "relay"' in out


async def test_replay_batches_carry_their_publish_span(tracing: Tracing) -> None:
    provider, exporter = tracing
    tracer = telemetry.tracer(provider)
    store = MemoryStore()
    sender = _Sender(MemoryPublisher(store), "e1", asyncio.sleep, tracer)
    items = [Publication("trades.X", seq, now_us(), b'{"id": "1"}') for seq in (1, 2, 3)]
    await sender.send(["trades.X"], items)
    await sender.wait()
    (span,) = _named(exporter.get_finished_spans(), "relay.publish")
    expected = telemetry.traceparent(span.get_span_context())  # type: ignore[arg-type]
    entries = store.stream(stream_key("md:", "trades.X"))
    assert [entry.fields[b"traceparent"] for entry in entries] == [expected] * 3


@pytest.mark.redis
async def test_redis_entries_with_a_snapshot_carry_the_traceparent_too(redis_url: str) -> None:
    client: Any = aioredis.Redis.from_url(redis_url)  # RESP2 replies, taken as Any
    publisher = RedisPublisher(client)
    book = b'{"bids": [["1", "1"]], "asks": []}'
    await publisher.publish(
        [
            Publication("book.X", 1, 5, book, snapshot=book, traceparent=PARENT_A),
            Publication("book.X", 2, 6, b'{"bids": [], "asks": []}', traceparent=PARENT_A),
            Publication("book.X", 3, 7, b'{"bids": [], "asks": []}', snapshot=book),
        ]
    )
    entries = await client.xrange(stream_key("md:", "book.X"))
    assert [fields.get(b"traceparent") for _, fields in entries] == [PARENT_A, PARENT_A, None]
    snapshot = await client.hgetall(snapshot_key("md:", "book.X"))
    assert b"traceparent" not in snapshot
    assert snapshot[b"seq"] == b"3"
    await publisher.close()
