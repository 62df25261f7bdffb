"""Logging: one JSON object per line for machines, or a readable line for a terminal.

Context (connection id, remote address, channel, seq) travels as ``extra=`` fields, so
every event can be filtered by them. Nothing is logged per delivered frame. A line
written inside a sampled span carries its ``trace_id`` and ``span_id``.

Repetitive warnings are rate-limited (``RateLimitFilter``): per logger, message (and
channel), at most one line every ``warn_interval`` seconds; the next line that passes says how many
were dropped in between (``suppressed``). Metrics count every occurrence.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

DEFAULT_WARN_INTERVAL = 10.0  # seconds


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _trace_ids(event: dict[str, Any]) -> None:
    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        event["trace_id"] = f"{context.trace_id:032x}"
        event["span_id"] = f"{context.span_id:016x}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        event.update(_extras(record))
        _trace_ids(event)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if context:
            line += f"  {context}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RateLimitFilter(logging.Filter):
    """At most one record per (logger, message) every ``interval`` seconds, from ``level`` up.

    The key is the logger, the message template (``record.msg``, not the formatted
    text) and the ``channel`` extra field when there is one: a warning repeated for a
    thousand connections is one key, a resync of each channel is its own. A record that
    passes after some were dropped gets ``suppressed=<count>``. Records below ``level``
    (and CRITICAL ones) always pass.
    """

    def __init__(
        self,
        interval: float = DEFAULT_WARN_INTERVAL,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.level = level
        self.clock = clock
        self._last: dict[tuple[str, str, str | None], float] = {}
        self._dropped: dict[tuple[str, str, str | None], int] = {}
        self._lock = threading.Lock()  # handlers may be called from threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or record.levelno >= logging.CRITICAL:
            return True
        channel = getattr(record, "channel", None)
        key = (record.name, str(record.msg), None if channel is None else str(channel))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
            if len(self._last) > 10_000:  # bounded: forget keys idle for an interval
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        if dropped:
            record.suppressed = dropped
        return True


def setup(level: str, fmt: str, *, warn_interval: float = DEFAULT_WARN_INTERVAL) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if warn_interval > 0:
        handler.addFilter(RateLimitFilter(warn_interval))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per HTTP request: keep it at warning and above.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
