"""One client connection as the fanout sees it: a socket to write pre-built frames to.

Writes go straight to the connection's transport (the one aiohttp's own writer uses, see
NOTES.md): frames are complete WebSocket frames built once for everybody, and aiohttp's
frames (pings, close) interleave only at frame boundaries. A write never waits: when the
transport's buffer passes the high-water mark the connection is marked slow, stops
receiving, and is closed with 4000 by a task the connection's handler owns and awaits.
A connection whose backlog has not been empty for ``lag_limit`` seconds is closed the same
way (``check_lag``, called about once a second): it is falling behind, however slowly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiohttp import web

from relay.core.auth import ALL_CHANNELS, ChannelAccess
from relay.core.protocol import CloseCode
from relay.core.ratelimit import TokenBucket
from relay.metrics import Metrics

log = logging.getLogger("relay.connection")


class Connection:
    __slots__ = (
        "_close_task",
        "_transport",
        "access",
        "backlog_since",
        "bucket",
        "close_timeout",
        "closed",
        "errors",
        "high_water",
        "id",
        "metrics",
        "remote",
        "strikes",
        "subscriptions",
        "ws",
    )

    def __init__(
        self,
        conn_id: int,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        remote: str,
        *,
        high_water: int,
        close_timeout: float,
        bucket: TokenBucket,
        errors: TokenBucket,
        metrics: Metrics,
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self._transport = transport
        self.remote = remote
        self.high_water = high_water
        self.close_timeout = close_timeout
        self.metrics = metrics
        self.bucket = bucket  # client messages (and pings): the rate limit
        self.errors = errors  # error replies: the error budget (docs/limits.md)
        self.strikes = 0
        self.subscriptions: set[str] = set()
        self.access: ChannelAccess = ALL_CHANNELS  # narrowed by relay.auth.bind
        self.closed = False
        # monotonic time since which unsent bytes have been waiting; 0.0: none waiting
        self.backlog_since = 0.0
        self._close_task: asyncio.Task[None] | None = None

    def deliver(self, data: bytes) -> bool:
        """Write one buffer; False when the connection is gone or just became slow."""
        if self.closed:
            return False
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            return False
        transport.write(data)
        buffered = transport.get_write_buffer_size()
        if buffered == 0:
            self.backlog_since = 0.0
            return True
        return self._backlogged(transport, buffered)

    def deliver_many(self, chunks: Iterable[bytes]) -> bool:
        """Several buffers in one write (one syscall where the buffer was empty)."""
        if self.closed:
            return False
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            return False
        transport.writelines(chunks)
        buffered = transport.get_write_buffer_size()
        if buffered == 0:
            self.backlog_since = 0.0
            return True
        return self._backlogged(transport, buffered)

    def _backlogged(self, transport: asyncio.Transport, buffered: int) -> bool:
        if buffered > self.high_water:
            return self._too_slow(transport, "bytes")
        if not self.backlog_since:
            self.backlog_since = time.monotonic()
        return True

    def check_lag(self, now: float, lag_limit: float) -> bool:
        """Close with 4000 when the backlog has not been empty for ``lag_limit`` seconds.

        True when it did: the caller takes the connection out of its channels."""
        if not self.backlog_since or self.closed:
            return False
        if self._transport.get_write_buffer_size() == 0:
            self.backlog_since = 0.0
            return False
        if now - self.backlog_since < lag_limit:
            return False
        return not self._too_slow(self._transport, "lag")

    def _too_slow(self, transport: asyncio.Transport, rule: str) -> bool:
        log.warning(
            "slow consumer",
            extra={
                "conn": self.id,
                "remote": self.remote,
                "rule": rule,
                "buffered": transport.get_write_buffer_size(),
                "backlog_seconds": round(time.monotonic() - self.backlog_since, 3)
                if self.backlog_since
                else 0.0,
                "subscriptions": len(self.subscriptions),
            },
        )
        self.metrics.slow_consumer_closes.inc()
        self.close_soon(CloseCode.SLOW_CONSUMER, "slow consumer")
        return False

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close with ``code`` without waiting here; the handler awaits ``wait_closed``."""
        self.closed = True
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def close(self, code: CloseCode, reason: str) -> None:
        if self.ws.closed:
            return
        self.closed = True
        self.metrics.closes.labels(str(int(code))).inc()
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            # The peer never took its close frame (it is not reading): drop the socket.
            self._transport.abort()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            await self._close_task
