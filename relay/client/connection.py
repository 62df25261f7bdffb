"""The asyncio adapter: one WebSocket at a time, reconnects, and event delivery.

``Client`` runs one task (``relay-client``) that connects, reads frames into the pure
``Session`` and delivers the events it returns; while connected, a second task it owns
(``relay-client-writer``) sends the requests the session has due, paced under the relay's
rate limit. Both are cancelled and awaited by ``close()``.

Delivery is in lockstep: an event goes to every matching callback (awaited, in the order
they were added), then to every open async iterator, and the next frame is read only when
each iterator has come back for more. A consumer that stops reading therefore stops the
client from reading too; the relay then sees a slow consumer and closes the connection
(4000), and the client reconnects and resumes once it is read again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from relay.client.books import DEFAULT_TRADES_KEPT, LocalBook
from relay.client.events import (
    ChannelCounters,
    ChannelStatus,
    ClientCounters,
    Connected,
    Disconnected,
    Event,
    StatusChanged,
    Trade,
)
from relay.client.session import (
    DEFAULT_REQUEST_BURST,
    DEFAULT_REQUEST_RATE,
    DEFAULT_RETRY_BASE,
    DEFAULT_RETRY_MAX,
    Backoff,
    Session,
)
from relay.core.checksum import DEFAULT_DEPTH

log = logging.getLogger("relay.client")

E = TypeVar("E", bound=Event)
Callback = Callable[[E], Awaitable[None] | None]

GOING_AWAY = 1001
# A relay that shuts down says when to come back (docs/protocol.md, close codes), so that
# its clients do not all reconnect in the same second; a hint is obeyed up to this cap.
_HINT = re.compile(r"reconnect_in_ms=(\d{1,9})")
_MAX_HINT_S = 60.0


def _reconnect_hint(reason: str) -> float | None:
    match = _HINT.search(reason)
    return min(int(match[1]) / 1000, _MAX_HINT_S) if match else None


POLICY_VIOLATION = 1008
SLOW_CONSUMER = 4000
_REPORTED_CLOSES = {POLICY_VIOLATION: "rate limit exceeded", SLOW_CONSUMER: "slow consumer"}


def _now_us() -> int:
    return time.time_ns() // 1000


class _Tap:
    """One async iterator's mailbox: at most one event waits in it at a time."""

    __slots__ = ("items", "released")

    def __init__(self) -> None:
        self.items: asyncio.Queue[Event | None] = asyncio.Queue()
        self.released = asyncio.Event()  # the consumer holds no event
        self.released.set()

    def end(self) -> None:
        self.items.put_nowait(None)
        self.released.set()


class EventStream(AsyncIterator[Event]):
    """``async for event in client``: every event from the moment it is opened.

    Ends when the client is closed; raises what stopped the client if it failed (an
    exception from a callback). Dropping the iterator (``break``) detaches it.
    """

    def __init__(self, client: Client) -> None:
        self._client: Client | None = client
        self._tap = _Tap()
        if client._stopped.is_set():
            self._tap.end()
        client._taps.add(self._tap)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        client = self._client
        if client is None:
            raise StopAsyncIteration
        self._tap.released.set()  # done with the previous event: the client may go on
        item = await self._tap.items.get()
        if item is None:
            self.detach()
            if client._failure is not None:
                raise client._failure
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self.detach()

    def detach(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client._taps.discard(self._tap)
        self._tap.released.set()

    def __del__(self) -> None:
        self.detach()


class Client:
    """A relay client: local books and trades for many channels, kept in order and verified.

    ``urls`` is one WebSocket URL or several replicas of the same relay: the client
    connects to the first and moves to the next one each time it has to reconnect.
    ``token`` (a string, or a function called at each connect) is sent as
    ``Authorization: Bearer <token>`` to a relay that requires one (docs/security.md).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        channels: Iterable[str] = (),
        *,
        checksum_depth: int = DEFAULT_DEPTH,
        trades_kept: int = DEFAULT_TRADES_KEPT,
        reconnect_base: float = 0.25,
        reconnect_max: float = 10.0,
        going_away_jitter: float = 0.25,
        retry_base: float = DEFAULT_RETRY_BASE,
        retry_max: float = DEFAULT_RETRY_MAX,
        request_rate: float = DEFAULT_REQUEST_RATE,
        request_burst: float = DEFAULT_REQUEST_BURST,
        heartbeat: float | None = 15.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_frame_bytes: int = 64 * 1024 * 1024,
        http: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        token: str | Callable[[], str] | None = None,
    ) -> None:
        self.urls: list[str] = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one relay URL is needed")
        if going_away_jitter < 0:
            raise ValueError("going_away_jitter must be >= 0")
        rng = rng or random.Random()
        self._rng = rng
        self._session = Session(
            checksum_depth=checksum_depth,
            trades_kept=trades_kept,
            request_rate=request_rate,
            request_burst=request_burst,
            retry_base=retry_base,
            retry_max=retry_max,
            rng=rng,
        )
        for name in channels:
            self._session.add(name, time.monotonic())
        self._backoff = Backoff(reconnect_base, reconnect_max, rng)
        self._going_away_jitter = going_away_jitter
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._max_frame_bytes = max_frame_bytes
        self._http = http
        self._own_http = http is None
        self._token = token
        self._url_index = 0
        self._handlers: list[tuple[type[Event], Callable[[Any], Awaitable[None] | None]]] = []
        self._taps: set[_Tap] = set()
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (in the background); returns at once. Idempotent."""
        if self._task is not None or self._closing:
            return
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._main(), name="relay-client")

    async def close(self) -> None:
        """Stop: close the connection, cancel and await the client's tasks. Idempotent.

        Called from a callback, it only asks: the client stops once the callback returns.
        """
        self._closing = True
        task = self._task
        if task is not None and task is asyncio.current_task():
            self._wake.set()
            return
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self._finish()
        await self._close_http()

    async def _close_http(self) -> None:
        if self._own_http and self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def wait_closed(self) -> None:
        """Wait until the client stopped; raises what stopped it if it failed."""
        await self._stopped.wait()
        if self._failure is not None:
            raise self._failure

    async def run(self) -> None:
        """Start, then run until closed (the callback API's main loop)."""
        await self.start()
        await self.wait_closed()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc is None and self._failure is not None:
            raise self._failure

    # -- channels -----------------------------------------------------------------------

    def subscribe(self, *channels: str) -> None:
        """Add channels; they are subscribed as soon as the connection allows."""
        now = time.monotonic()
        for name in channels:
            self._session.add(name, now)
        self._wake.set()

    def unsubscribe(self, *channels: str) -> None:
        """Drop channels: their state goes at once, no more events come for them."""
        now = time.monotonic()
        for name in channels:
            self._session.remove(name, now)
        self._wake.set()

    @property
    def channels(self) -> list[str]:
        return self._session.channels()

    def status(self, channel: str) -> ChannelStatus:
        state = self._session.state(channel)
        return ChannelStatus.CLOSED if state is None else state.status

    def book(self, channel: str) -> LocalBook | None:
        """The channel's local book; None before its first snapshot or while resyncing."""
        state = self._session.state(channel)
        return None if state is None else state.book

    def trades(self, channel: str) -> list[Trade]:
        """The channel's last trades (``trades_kept``), oldest first."""
        state = self._session.state(channel)
        return [] if state is None else list(state.trades)

    def position(self, channel: str) -> tuple[str, int] | None:
        """``(epoch, seq)`` of the channel's state: where it would resume from."""
        state = self._session.state(channel)
        return None if state is None else state.position

    def counters(self, channel: str) -> ChannelCounters:
        """A copy of the channel's counters (zeros for a channel not subscribed)."""
        state = self._session.state(channel)
        return ChannelCounters() if state is None else state.counters.copy()

    @property
    def stats(self) -> ClientCounters:
        """A copy of the connection-level counters."""
        return self._session.stats.copy()

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def url(self) -> str:
        """The URL connected to, or to be tried next."""
        return self.urls[self._url_index]

    # -- events -------------------------------------------------------------------------

    def on(self, kind: type[E], callback: Callback[E]) -> None:
        """Call ``callback(event)`` for every event of class ``kind`` (``Event``: all).

        Callbacks run in the client's task, in order; a coroutine is awaited before the
        next event. An exception stops the client; ``run``/``wait_closed`` raise it.
        """
        self._handlers.append((kind, callback))

    def __aiter__(self) -> EventStream:
        return EventStream(self)

    async def _emit(self, events: Iterable[Event]) -> None:
        for event in events:
            for kind, callback in self._handlers:
                if isinstance(event, kind):
                    result = callback(event)
                    if inspect.isawaitable(result):
                        await result
            taps = list(self._taps)
            if taps:
                for tap in taps:
                    tap.released.clear()
                    tap.items.put_nowait(event)
                for tap in taps:
                    await tap.released.wait()

    def _log(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, StatusChanged) and event.status is ChannelStatus.RESYNCING:
                log.warning(
                    "channel resync", extra={"channel": event.channel, "reason": event.reason}
                )

    # -- the connection loop ------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            pass  # close(), or the writer failed (then _failure says why)
        except Exception as exc:
            log.error("client stopped by an error", exc_info=exc)
            self._failure = exc
        finally:
            self._finish()
            await self._close_http()

    def _finish(self) -> None:
        if self._stopped.is_set():
            return
        self._closing = True
        self._session.close()
        self._stopped.set()
        for tap in list(self._taps):
            tap.end()

    async def _connect_loop(self) -> None:
        attempt = 0
        while not self._closing:
            url = self.url
            attempt += 1
            assert self._http is not None
            try:
                async with asyncio.timeout(self._connect_timeout):
                    ws = await self._http.ws_connect(
                        url,
                        heartbeat=self._heartbeat,
                        timeout=aiohttp.ClientWSTimeout(ws_close=self._close_timeout),
                        max_msg_size=self._max_frame_bytes,
                        headers=self._auth_headers(),
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._session.stats.connect_failures += 1
                delay = self._backoff.next_delay()
                log.info("connect failed", extra={"url": url, "error": str(exc), "retry_in": delay})
                await self._emit([Disconnected(url, None, str(exc) or type(exc).__name__, delay)])
                await self._pause(delay)
                continue
            attempt_done, attempt = attempt, 0
            try:
                code, reason = await self._serve(ws, url, attempt_done)
            finally:
                self._ws = None
                await ws.close()
            if self._closing:
                return
            reason = reason or _REPORTED_CLOSES.get(code or 0, "")
            lost = self._session.connection_lost(code)
            hint = _reconnect_hint(reason) if code == GOING_AWAY else None
            if hint is not None:
                delay = hint
            elif code == GOING_AWAY:
                delay = self._rng.uniform(0.0, self._going_away_jitter)
            else:
                delay = self._backoff.next_delay()
            if code in _REPORTED_CLOSES:
                log.warning(
                    "closed by the relay",
                    extra={"url": url, "code": code, "reason": reason, "retry_in": delay},
                )
            else:
                log.info(
                    "disconnected",
                    extra={"url": url, "code": code, "reason": reason, "retry_in": delay},
                )
            await self._emit([*lost, Disconnected(url, code, reason, delay)])
            await self._pause(delay)

    def _auth_headers(self) -> dict[str, str] | None:
        """``Authorization: Bearer`` when a token was given; a callable is asked again at
        every connect, so a token refreshed after a 1008 ``token expired`` is used."""
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"} if token else None

    async def _pause(self, delay: float) -> None:
        """Sleep before the next attempt, on the next URL."""
        self._url_index = (self._url_index + 1) % len(self.urls)
        if not self._closing:
            await asyncio.sleep(delay)

    async def _serve(
        self, ws: aiohttp.ClientWebSocketResponse, url: str, attempt: int
    ) -> tuple[int | None, str]:
        """Read one connection until it ends; returns its close code and reason."""
        self._ws = ws
        session = self._session
        log.info("connected", extra={"url": url})
        opened = session.connection_made(time.monotonic())
        writer = asyncio.get_running_loop().create_task(self._write(ws), name="relay-client-writer")
        settled = session.settled()  # no channels: nothing to wait for
        if settled:
            self._backoff.reset()
        try:
            await self._emit([Connected(url, attempt), *opened])
            while not self._closing:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    events = session.receive(message.data, time.monotonic(), _now_us())
                    if session.next_deadline() is not None:
                        self._wake.set()
                    if not settled and session.settled():
                        settled = True
                        self._backoff.reset()  # this connection delivered: start over
                    self._log(events)
                    await self._emit(events)
                elif message.type is aiohttp.WSMsgType.BINARY:
                    continue  # the relay sends none
                else:
                    reason = message.extra if isinstance(message.extra, str) else ""
                    if message.type is aiohttp.WSMsgType.ERROR:
                        reason = str(message.data)
                    return ws.close_code, reason
            return ws.close_code, "closing"
        finally:
            writer.cancel()
            await asyncio.wait([writer])

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send what the session has due; sleep until the next deadline or a wake-up."""
        session = self._session
        try:
            while True:
                self._wake.clear()
                for request in session.take_requests(time.monotonic()):
                    await ws.send_str(orjson.dumps(request).decode())
                deadline = session.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            # The connection is going; the reader sees it end and reconnects.
            log.debug("send failed", extra={"error": str(exc)})
        except Exception as exc:
            # A bug: stop the client (run() raises it) rather than read with no writer.
            log.error("client writer failed", exc_info=exc)
            self._failure = exc
            if self._task is not None:
                self._task.cancel()
