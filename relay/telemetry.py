"""OpenTelemetry tracing: set up from the standard ``OTEL_*`` variables, off when unset.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or an
OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
and ``OTEL_SDK_DISABLED`` is not ``true``; or when a tracer provider was already installed
(``opentelemetry-instrument``). Otherwise nothing is set up: the relay's code holds no
tracer (``None``) and pays one ``is None`` test per read batch, the aiohttp app is not
instrumented, and no ``traceparent`` is read or written.

When on, the SDK reads the rest itself: the sampler (``OTEL_TRACES_SAMPLER``,
``OTEL_TRACES_SAMPLER_ARG``), the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), the batch processor (``OTEL_BSP_*``) and the exporter's
endpoint, headers and timeout (``OTEL_EXPORTER_OTLP_*``).

Spans (docs/observability.md):
- ``relay.publish`` (PRODUCER): one per batch the simulator or ``relay replay`` writes; its
  W3C ``traceparent`` goes on every entry of the batch, when the span is sampled.
- ``relay.ingest`` (CONSUMER): one per read batch, a root span linked to the producers'
  spans. The entries' ``traceparent`` fields are parsed only when this span is sampled.
- ``relay.resync``: one per channel (re)build from the producer's snapshot.
- ``relay.snapshot.build``: one per snapshot encoded (not per snapshot served).
- the aiohttp server spans of the HTTP routes, ``/ws``, ``/metrics``, ``/healthz`` and
  ``/readyz`` excluded (a WebSocket would be one span for its whole life).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay import __version__
from relay.core.entry import StreamEntry

log = logging.getLogger("relay.telemetry")

TRACER_NAME = "relay"
EXCLUDED_URLS_ENV = "OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS"
# Regexes searched in the request path: the long-lived and the per-second routes.
EXCLUDED_URLS = "^/ws$,^/metrics$,^/healthz$,^/readyz$"
MAX_LINKS = 128  # the SDK's default span link limit (OTEL_SPAN_LINK_COUNT_LIMIT)

# Messaging semantic conventions (https://opentelemetry.io/docs/specs/semconv/messaging/).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_BATCH_COUNT = "messaging.batch.message_count"
SYSTEM = "redis"  # Redis Streams; not one of semconv's well-known values, which allows others

_ROOT = Context()  # an empty context: a span started in it is a root span
_PROPAGATOR = TraceContextTextMapPropagator()


class _State:
    configured = False
    provider: trace.TracerProvider | None = None
    instrumented: trace.TracerProvider | None = None


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return bool(_names(exporters) - {"none"})
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _names(text: str) -> set[str]:
    return {part.strip().lower() for part in text.split(",") if part.strip()}


def is_real(provider: trace.TracerProvider | None) -> bool:
    """False for None and for the API's no-op and proxy providers (nothing installed)."""
    return provider is not None and not isinstance(
        provider, trace.NoOpTracerProvider | trace.ProxyTracerProvider
    )


def configure(
    service_name: str = "relay", env: Mapping[str, str] | None = None
) -> trace.TracerProvider | None:
    """The process's tracer provider, set up once from ``env``; None when tracing is off.

    Idempotent: the first call decides (``relay demo`` runs the simulator and the relay
    in one process, with one provider). ``service_name`` is used only when neither
    ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` names the service.
    """
    if _State.configured:
        return _State.provider
    env = os.environ if env is None else env
    _State.configured = True
    installed = trace.get_tracer_provider()
    if is_real(installed):  # e.g. run under opentelemetry-instrument
        _State.provider = installed
        return installed
    if not tracing_requested(env):
        return None
    try:
        exporters = [_exporter(name, env) for name in sorted(_exporter_names(env))]
    except Exception as exc:  # a missing package or a bad setting must not stop the relay
        log.error("tracing disabled: no span exporter", extra={"error": str(exc)})
        return None
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _State.provider = provider
    log.info(
        "tracing on",
        extra={
            "exporters": ",".join(sorted(_exporter_names(env))),
            "service": resource.attributes.get("service.name"),
            "sampler": env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        },
    )
    return provider


def _exporter_names(env: Mapping[str, str]) -> set[str]:
    return _names(env.get("OTEL_TRACES_EXPORTER", "otlp")) - {"none"}


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise LookupError(f"no span exporter {name!r} is installed")
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def tracer(provider: trace.TracerProvider | None) -> Tracer | None:
    """The relay's tracer from ``provider``, or None when tracing is off."""
    if not is_real(provider):
        return None
    assert provider is not None
    return provider.get_tracer(TRACER_NAME, __version__)


def producer_tracer(provider: trace.TracerProvider | None, service_name: str) -> Tracer | None:
    """A producer's tracer: ``provider`` when given (tests), else the process's own."""
    return tracer(provider if provider is not None else configure(service_name))


# -- aiohttp ------------------------------------------------------------------------------


def instrument_aiohttp(provider: trace.TracerProvider) -> None:
    """Trace the HTTP routes of every ``web.Application`` built from now on.

    The instrumentor replaces ``aiohttp.web.Application`` with a subclass that adds its
    middleware, so this runs before the app is built (NOTES.md). The long-lived and
    per-second routes are excluded (``EXCLUDED_URLS``) unless the environment already
    says what to exclude.
    """
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    if _State.instrumented is provider:
        return
    instrumentor = AioHttpServerInstrumentor()
    if _State.instrumented is not None:
        instrumentor.uninstrument()
    if EXCLUDED_URLS_ENV not in os.environ and "OTEL_PYTHON_EXCLUDED_URLS" not in os.environ:
        os.environ[EXCLUDED_URLS_ENV] = EXCLUDED_URLS
    with warnings.catch_warnings():
        # aiohttp 3.14 discourages subclassing Application, which the instrumentor does.
        warnings.simplefilter("ignore", DeprecationWarning)
        instrumentor.instrument(tracer_provider=provider)
    _State.instrumented = provider


def uninstrument_aiohttp() -> None:
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    if _State.instrumented is not None:
        AioHttpServerInstrumentor().uninstrument()
        _State.instrumented = None


# -- producers ----------------------------------------------------------------------------


def traceparent(context: SpanContext) -> bytes:
    """The W3C ``traceparent`` of a span context (version 00)."""
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


@contextlib.contextmanager
def publish_span(
    tracer_: Tracer | None, count: int, channels: Sequence[str] = ()
) -> Iterator[bytes | None]:
    """A PRODUCER span around one publish of ``count`` entries.

    Yields the ``traceparent`` to write on the entries, or None when tracing is off or
    the span is not sampled (then nothing is written: the relay would drop it anyway).
    """
    if tracer_ is None:
        yield None
        return
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: SYSTEM,
        MESSAGING_OPERATION_TYPE: "send",
        MESSAGING_OPERATION_NAME: "publish",
        MESSAGING_BATCH_COUNT: count,
    }
    if len(channels) == 1:
        attributes[MESSAGING_DESTINATION] = channels[0]
    with tracer_.start_as_current_span(
        "relay.publish", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        context = span.get_span_context()
        yield traceparent(context) if context.is_valid and context.trace_flags.sampled else None


# -- the relay ----------------------------------------------------------------------------


def start_ingest_span(tracer_: Tracer, batch: Sequence[tuple[str, Sequence[StreamEntry]]]) -> Span:
    """The CONSUMER span of one read batch: a root span linked to its producers' spans.

    The entries' ``traceparent`` fields are read only when the span is sampled.
    """
    count = 0
    for _, entries in batch:
        count += len(entries)
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: SYSTEM,
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "ingest",
        MESSAGING_BATCH_COUNT: count,
        "relay.channels": len(batch),
    }
    if len(batch) == 1:
        attributes[MESSAGING_DESTINATION] = batch[0][0]
    span = tracer_.start_span(
        "relay.ingest", context=_ROOT, kind=SpanKind.CONSUMER, attributes=attributes
    )
    if span.is_recording():
        for context in producer_contexts(batch):
            span.add_link(context)
    return span


def producer_contexts(
    batch: Sequence[tuple[str, Sequence[StreamEntry]]], limit: int = MAX_LINKS
) -> list[SpanContext]:
    """The distinct, valid producer span contexts of a batch's entries (at most ``limit``).

    A producer writes one ``traceparent`` on every entry of one publish, so a batch holds
    a few distinct values: each is parsed once.
    """
    seen: set[bytes] = set()
    found: list[SpanContext] = []
    for _, entries in batch:
        for raw in entries:
            value = raw.fields.get(b"traceparent")
            if value is None or value in seen:
                continue
            seen.add(value)
            context = parse_traceparent(value)
            if context is not None:
                found.append(context)
                if len(found) >= limit:
                    return found
    return found


def parse_traceparent(value: bytes) -> SpanContext | None:
    """A remote span context from a W3C ``traceparent``; None when it is not valid."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": text})).get_span_context()
    return context if context.is_valid else None


def record_snapshot_build(
    tracer_: Tracer, channel: str, kind: str, seq: int, size: int, start_ns: int, end_ns: int
) -> None:
    """A ``relay.snapshot.build`` span for an encoding that already happened."""
    span = tracer_.start_span(
        "relay.snapshot.build",
        start_time=start_ns,
        attributes={
            MESSAGING_DESTINATION: channel,
            "relay.channel.kind": kind,
            "relay.seq": seq,
            "relay.snapshot.bytes": size,
        },
    )
    span.end(end_time=end_ns)


def resync_span(
    tracer_: Tracer | None, channel: str, kind: str, reason: str
) -> contextlib.AbstractContextManager[Any]:
    """The ``relay.resync`` span of one channel rebuild (a null context when off)."""
    if tracer_ is None:
        return contextlib.nullcontext()
    return tracer_.start_as_current_span(
        "relay.resync",
        context=_ROOT,
        attributes={
            MESSAGING_DESTINATION: channel,
            "relay.channel.kind": kind,
            "relay.resync.reason": reason,
        },
    )


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span, if one is recording (no cost when off)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
