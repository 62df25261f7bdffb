"""The aiohttp side of the connection limits (docs/limits.md): a thin adapter.

- ``runner_options``: what aiohttp's own HTTP server is told. ``keepalive_timeout`` is the
  handshake timeout: since aiohttp 3.14 its keep-alive timer runs from the moment a
  connection is made and closes it if no complete request head arrived by then, so a
  slowloris (headers byte by byte, or nothing at all) is closed after
  ``RELAY_HANDSHAKE_TIMEOUT`` s instead of aiohttp's 75 s default. The header limits make
  the parser answer 400/431 to an oversized head before any handler runs.
- ``guard`` (``Limits.admitted``): the admission decision of ``relay.core.admission``
  around one WebSocket route's handler: a refusal is an HTTP answer before the upgrade,
  never a close of a connection that was accepted; the slot is freed however the session
  ends.
- ``close_unsubscribed``: the timer that closes a WebSocket that subscribed to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import hdrs, web

from relay.config import ServeConfig
from relay.connection import Connection
from relay.core.admission import (
    Admission,
    Network,
    Policy,
    Refusal,
    client_address,
    normalise_origin,
    parse_networks,
)
from relay.core.protocol import CloseCode
from relay.metrics import Metrics

log = logging.getLogger("relay.limits")


def runner_options(config: ServeConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to aiohttp's RequestHandler)."""
    return {
        "keepalive_timeout": config.handshake_timeout,
        "max_line_size": config.max_header_bytes,
        "max_field_size": config.max_header_bytes,
        "max_headers": config.max_headers,
    }


class Limits:
    """One per app: the admission tables and the proxies whose X-Forwarded-For counts."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.trusted: tuple[Network, ...] = parse_networks(config.trusted_proxies)
        self.admission = Admission(
            Policy(
                max_connections=config.max_connections,
                max_per_address=config.max_connections_per_address,
                connect_rate=config.connect_rate,
                connect_burst=config.connect_burst,
                allowed_origins=frozenset(normalise_origin(o) for o in config.allowed_origins),
            )
        )

    def client(self, request: web.Request) -> str:
        """The client's address: the peer's, or X-Forwarded-For's from a trusted proxy."""
        return client_address(
            request.remote or "", request.headers.getall(hdrs.X_FORWARDED_FOR, []), self.trusted
        )

    @contextlib.contextmanager
    def admitted(self, request: web.Request) -> Iterator[str]:
        """Admit the request or raise the HTTP refusal; yields the client's address and
        frees the slot when the block ends."""
        address = self.client(request)
        decision = self.admission.admit(address, request.headers.get(hdrs.ORIGIN), time.monotonic())
        if isinstance(decision, Refusal):
            self.metrics.connections_refused.labels(decision.reason.value).inc()
            # a warning: rate-limited per message by relay.logs (a flood of refusals is
            # one line every few seconds with a count); the metric counts every one
            log.warning(
                "connection refused",
                extra={"remote": address, "reason": decision.reason.value},
            )
            raise _http_error(decision)
        try:
            yield address
        finally:
            self.admission.release(decision)


def _http_error(refusal: Refusal) -> web.HTTPException:
    headers = {hdrs.RETRY_AFTER: str(refusal.retry_after)} if refusal.retry_after else None
    error_class: type[web.HTTPException] = {
        403: web.HTTPForbidden,
        429: web.HTTPTooManyRequests,
        503: web.HTTPServiceUnavailable,
    }[refusal.status]
    return error_class(text=refusal.message, headers=headers)


def close_unsubscribed(conn: Connection, timeout: float) -> asyncio.TimerHandle | None:
    """Close ``conn`` with 1008 if it has no subscription ``timeout`` s from now (0: never).

    A WebSocket that subscribes to nothing only holds a socket and a slot of the caps;
    the owner cancels the returned handle when the connection ends.
    """
    if timeout <= 0:
        return None

    def check() -> None:
        if conn.closed or conn.subscriptions:
            return
        log.warning(
            "no subscription in time, closing", extra={"conn": conn.id, "remote": conn.remote}
        )
        conn.metrics.policy_closes.labels("no_subscription").inc()
        conn.close_soon(CloseCode.POLICY_VIOLATION, f"no subscription within {timeout:g} s")

    return asyncio.get_running_loop().call_later(timeout, check)


LIMITS = web.AppKey("relay_limits", Limits)
CLIENT = web.RequestKey("relay_client", str)


def install(app: web.Application, config: ServeConfig, metrics: Metrics) -> Limits:
    limits = app[LIMITS] = Limits(config, metrics)
    return limits


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard(handler: Handler) -> Handler:
    """``handler`` behind the connection limits: admitted first (or 403/429/503), its slot
    freed when it returns; the client's address is left on the request (``client_of``)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        with request.app[LIMITS].admitted(request) as address:
            request[CLIENT] = address
            return await handler(request)

    return guarded


def client_of(request: web.Request) -> str:
    """The client address ``guard`` resolved, or the peer's for a route outside it."""
    address = request.get(CLIENT)
    return address if address is not None else request.remote or ""
