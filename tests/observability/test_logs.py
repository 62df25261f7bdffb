"""Logs: one JSON object per line with its context fields (and trace ids inside a sampled
span), a readable line for terminals, and repetitive warnings rate-limited."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider

from relay import logs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, Clock]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    clock = Clock()
    handler.addFilter(logs.RateLimitFilter(10.0, clock=clock))
    logger = logging.getLogger("relay.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, clock
    logger.removeHandler(handler)


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_context_fields(
    captured: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, stream, _ = captured
    logger.info("channel live", extra={"channel": "book.BTC-USD", "epoch": "e1", "seq": 41})
    logger.warning("slow consumer", extra={"conn": 7, "remote": "10.0.0.1", "buffered": 5})
    first, second = _events(stream)
    assert first["event"] == "channel live"
    assert first["level"] == "info"
    assert first["logger"] == "relay.test-logs"
    assert (first["channel"], first["epoch"], first["seq"]) == ("book.BTC-USD", "e1", 41)
    assert str(first["ts"]).endswith("Z")
    assert (second["conn"], second["remote"]) == (7, "10.0.0.1")
    assert "trace_id" not in first


def test_a_line_inside_a_sampled_span_carries_its_trace_ids(
    captured: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, stream, _ = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside")
    (event,) = _events(stream)
    context = span.get_span_context()
    assert event["trace_id"] == f"{context.trace_id:032x}"
    assert event["span_id"] == f"{context.span_id:016x}"


def test_repeated_warnings_are_rate_limited_with_a_suppressed_count(
    captured: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, stream, clock = captured
    for conn in range(50):
        logger.warning("slow consumer", extra={"conn": conn})
        logger.info("not limited", extra={"conn": conn})
    logger.error("ingest failed")
    logger.error("ingest failed")
    clock.now += 10.0
    logger.warning("slow consumer", extra={"conn": 99})
    events = _events(stream)
    slow = [e for e in events if e["event"] == "slow consumer"]
    assert [(e["conn"], e.get("suppressed")) for e in slow] == [(0, None), (99, 49)]
    assert sum(e["event"] == "not limited" for e in events) == 50
    assert sum(e["event"] == "ingest failed" for e in events) == 1


def test_warnings_of_different_channels_are_limited_apart(
    captured: tuple[logging.Logger, io.StringIO, Clock],
) -> None:
    logger, stream, _ = captured
    for _ in range(3):
        for channel in ("book.A", "book.B"):
            logger.warning("channel resync", extra={"channel": channel, "reason": "gap"})
    assert [e["channel"] for e in _events(stream)] == ["book.A", "book.B"]


def test_the_text_format_is_one_readable_line() -> None:
    record = logging.LogRecord("relay.hub", logging.WARNING, "", 0, "channel resync", (), None)
    record.channel = "book.BTC-USD"
    record.seq = 12
    line = logs.TextFormatter().format(record)
    assert "WARNING relay.hub: channel resync  channel=book.BTC-USD seq=12" in line
    assert "\n" not in line


def test_setup_installs_one_handler_with_the_level_and_the_limit() -> None:
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    saved = root.handlers[:], root.level
    saved_access = access.level
    try:
        logs.setup("warning", "json")
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.JsonFormatter)
        assert any(isinstance(f, logs.RateLimitFilter) for f in handler.filters)
        assert root.level == logging.WARNING
        logs.setup("debug", "text", warn_interval=0)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.TextFormatter)
        assert handler.filters == []
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access.setLevel(saved_access)  # setup() sets it; later tests read the access log
