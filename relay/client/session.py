"""The client side of the protocol for many channels, as a pure state machine.

``Session`` owns one ``ChannelState`` per channel and everything about the wire that is
not I/O: which request each channel needs next (subscribe, with or without ``resume``,
or unsubscribe), request ids and the replies to them, what to do on each error code, the
pacing of requests under the relay's rate limit, and the delays between retries. Time is
passed in (``now``, monotonic seconds) and randomness comes from an injected
``random.Random``, so it is deterministic under test. The asyncio adapter
(``relay.client.connection``) feeds it frames and sends what ``take_requests`` returns.

Per channel, the relay's view of the subscription (``Wire``) moves
IDLE -> SUBSCRIBING -> SUBSCRIBED -> UNSUBSCRIBING -> IDLE, one request in flight at a
time. Snapshot and update frames are applied only while SUBSCRIBED and not waiting to
be dropped (``fresh``): frames still in flight from a subscription being replaced are
never applied. A resync (gap, checksum, ...) discards the state and replaces the
subscription: unsubscribe, then, once the relay confirms, subscribe again; the snapshot
that answers it makes the channel live again.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from relay.client.books import DEFAULT_TRADES_KEPT, ChannelState
from relay.client.events import (
    ChannelError,
    ChannelStatus,
    ClientCounters,
    Event,
    ResyncReason,
)
from relay.core.channel import parse_channel_name
from relay.core.checksum import DEFAULT_DEPTH

# Below the relay's defaults (20 messages/s, burst 50): its bucket sees our messages
# later than we send them, and possibly bunched.
DEFAULT_REQUEST_RATE = 16.0
DEFAULT_REQUEST_BURST = 32.0
DEFAULT_RETRY_BASE = 0.5
DEFAULT_RETRY_MAX = 10.0

# Subscribe errors that another try on the same connection cannot fix. Others
# (unknown_channel: a replica that has not discovered the channel yet, or a producer
# that has not written it yet; rate_limited; anything newer) are retried with backoff.
_FINAL_SUBSCRIBE_ERRORS = frozenset({"invalid_channel", "too_many_subscriptions", "forbidden"})


def full_jitter(rng: random.Random, base: float, cap: float, attempt: int) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


class Backoff:
    """Successive full-jitter delays; ``reset`` after a success."""

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base, self.cap, self.attempts = base, cap, 0
        self._rng = rng

    def next_delay(self) -> float:
        delay = full_jitter(self._rng, self.base, self.cap, self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class _Bucket:
    """A token bucket for our own requests, with the time a token is next available."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("request pacing needs rate > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, 0.0

    def reset(self, now: float) -> None:
        self.tokens, self.updated = self.burst, now

    def take(self, now: float) -> bool:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready_at(self) -> float:
        if self.tokens >= 1.0:
            return self.updated
        return self.updated + (1.0 - self.tokens) / self.rate


class Wire(Enum):
    """The relay's view of one channel's subscription on the current connection."""

    IDLE = "idle"
    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBING = "unsubscribing"


@dataclass(slots=True)
class _Sub:
    state: ChannelState
    wanted: bool = True
    wire: Wire = Wire.IDLE
    request_id: int | None = None
    resuming: bool = False  # the subscribe in flight carries ``resume``
    fresh: bool = False  # the relay's subscription must be replaced (a resync)
    due: float | None = None  # when to look at this channel's wire again
    retries: int = 0  # error replies in a row, for the retry backoff

    @property
    def accepting(self) -> bool:
        return self.wanted and self.wire is Wire.SUBSCRIBED and not self.fresh


class Session:
    def __init__(
        self,
        *,
        checksum_depth: int = DEFAULT_DEPTH,
        trades_kept: int = DEFAULT_TRADES_KEPT,
        request_rate: float = DEFAULT_REQUEST_RATE,
        request_burst: float = DEFAULT_REQUEST_BURST,
        retry_base: float = DEFAULT_RETRY_BASE,
        retry_max: float = DEFAULT_RETRY_MAX,
        rng: random.Random | None = None,
    ) -> None:
        if checksum_depth < 0 or trades_kept < 0:
            raise ValueError("checksum_depth and trades_kept must be >= 0")
        if retry_base <= 0 or retry_max < retry_base:
            raise ValueError("retries need 0 < retry_base <= retry_max")
        self.checksum_depth = checksum_depth
        self.trades_kept = trades_kept
        self.retry_base, self.retry_max = retry_base, retry_max
        self.rng = rng or random.Random()
        self.stats = ClientCounters()
        self.connected = False
        self._subs: dict[str, _Sub] = {}
        self._requests: dict[int, tuple[str, str]] = {}  # id -> (channel, op) in flight
        self._ids = itertools.count(1)
        self._bucket = _Bucket(request_rate, request_burst)

    # -- what the user asks -----------------------------------------------------------

    def add(self, name: str, now: float) -> None:
        """Want ``name``; raises ValueError for a name that is not ``<book|trades>.<symbol>``."""
        kind = parse_channel_name(name)
        if kind is None:
            raise ValueError(f"invalid channel {name!r}: expected <book|trades>.<symbol>")
        sub = self._subs.get(name)
        if sub is not None and sub.wanted:
            return
        state = ChannelState(
            name, kind, checksum_depth=self.checksum_depth, trades_kept=self.trades_kept
        )
        if sub is None:
            self._subs[name] = sub = _Sub(state)
        else:  # still leaving the relay after an unsubscribe: join again, from scratch
            sub.state, sub.wanted, sub.retries = state, True, 0
            sub.fresh = sub.wire is Wire.SUBSCRIBED
        if self.connected:
            self._schedule(sub, now)

    def remove(self, name: str, now: float) -> None:
        """Stop wanting ``name``: its state goes now, and the relay is told when possible."""
        sub = self._subs.get(name)
        if sub is None or not sub.wanted:
            return
        sub.wanted = False
        sub.state.discard()
        sub.state.status = ChannelStatus.CLOSED
        if sub.wire is Wire.IDLE:
            del self._subs[name]
        elif self.connected:
            self._schedule(sub, now)

    def close(self) -> None:
        """The client stopped: every channel is closed; its last state stays readable."""
        self.connected = False
        self._requests.clear()
        for sub in self._subs.values():
            sub.state.status = ChannelStatus.CLOSED
            sub.wire, sub.request_id, sub.due = Wire.IDLE, None, None

    # -- reading ----------------------------------------------------------------------

    def channels(self) -> list[str]:
        return [name for name, sub in self._subs.items() if sub.wanted]

    def state(self, name: str) -> ChannelState | None:
        sub = self._subs.get(name)
        return sub.state if sub is not None and sub.wanted else None

    def states(self) -> Iterator[ChannelState]:
        return (sub.state for sub in self._subs.values() if sub.wanted)

    def settled(self) -> bool:
        """Every wanted channel is live (or refused): the connection delivered."""
        return all(
            sub.state.status in (ChannelStatus.LIVE, ChannelStatus.FAILED)
            for sub in self._subs.values()
            if sub.wanted
        )

    # -- connection lifecycle -----------------------------------------------------------

    def connection_made(self, now: float) -> list[Event]:
        """A new connection: every wanted channel subscribes, resuming where it has state."""
        self.connected = True
        self.stats.connects += 1
        self._requests.clear()
        self._bucket.reset(now)
        events: list[Event] = []
        for name, sub in list(self._subs.items()):
            sub.wire, sub.request_id, sub.resuming, sub.fresh = Wire.IDLE, None, False, False
            sub.due, sub.retries = None, 0
            if not sub.wanted:
                del self._subs[name]
                continue
            if sub.state.status is ChannelStatus.FAILED:  # a new connection, a new chance
                events += sub.state.set_status(ChannelStatus.SUBSCRIBING, "reconnected")
            self._schedule(sub, now)
        return events

    def connection_lost(self, code: int | None) -> list[Event]:
        """The connection ended: live channels keep their state, to resume from it."""
        self.connected = False
        self.stats.disconnects += 1
        if code is not None:
            self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1
        self._requests.clear()
        events: list[Event] = []
        for name, sub in list(self._subs.items()):
            sub.wire, sub.request_id, sub.resuming, sub.fresh = Wire.IDLE, None, False, False
            sub.due = None
            if not sub.wanted:
                del self._subs[name]
                continue
            state = sub.state
            if state.status is ChannelStatus.FAILED:
                continue
            state.counters.reconnects += 1
            if state.status is ChannelStatus.LIVE:
                events += state.set_status(ChannelStatus.RECONNECTING, "disconnected")
        return events

    # -- requests -----------------------------------------------------------------------

    def take_requests(self, now: float) -> list[dict[str, Any]]:
        """The requests due by ``now`` that the pacing allows, to send in this order."""
        if not self.connected:
            return []
        due = sorted(
            (sub.due, name)
            for name, sub in self._subs.items()
            if sub.due is not None and sub.due <= now
        )
        out: list[dict[str, Any]] = []
        for _, name in due:
            sub = self._subs[name]
            op = self._next_op(name, sub)
            if op is None:
                sub.due = None
                continue
            if not self._bucket.take(now):
                break
            sub.due = None
            out.append(self._request(name, sub, op))
        return out

    def next_deadline(self) -> float | None:
        """When ``take_requests`` may next have something; None: nothing is waiting."""
        if not self.connected:
            return None
        dues = [sub.due for sub in self._subs.values() if sub.due is not None]
        if not dues:
            return None
        return max(min(dues), self._bucket.ready_at())

    def _next_op(self, name: str, sub: _Sub) -> str | None:
        if sub.wire is Wire.IDLE:
            if not sub.wanted:
                del self._subs[name]
                return None
            return None if sub.state.status is ChannelStatus.FAILED else "subscribe"
        if sub.wire is Wire.SUBSCRIBED and (sub.fresh or not sub.wanted):
            return "unsubscribe"
        return None  # a request is in flight: its reply decides

    def _request(self, name: str, sub: _Sub, op: str) -> dict[str, Any]:
        request_id = next(self._ids)
        self._requests[request_id] = (name, op)
        sub.request_id = request_id
        message: dict[str, Any] = {"op": op, "channel": name, "id": request_id}
        if op == "unsubscribe":
            sub.wire = Wire.UNSUBSCRIBING
            return message
        sub.wire = Wire.SUBSCRIBING
        position = sub.state.position
        sub.resuming = position is not None
        if position is not None:
            message["resume"] = {"epoch": position[0], "seq": position[1]}
        return message

    def _schedule(self, sub: _Sub, at: float) -> None:
        sub.due = at if sub.due is None else min(sub.due, at)

    def _retry_delay(self, sub: _Sub) -> float:
        delay = full_jitter(self.rng, self.retry_base, self.retry_max, sub.retries)
        sub.retries += 1
        return delay

    # -- frames -------------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float, received_us: int) -> list[Event]:
        """Apply one frame from the relay; returns the events for the user, in order."""
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.stats.bad_frames += 1
            return []
        if not isinstance(frame, dict):
            self.stats.bad_frames += 1
            return []
        kind = frame.get("type")
        if kind == "update" or kind == "snapshot":
            name = frame.get("channel")
            sub = self._subs.get(name) if isinstance(name, str) else None
            if sub is None or not sub.accepting:
                return []  # not ours (any more), or from a subscription being replaced
            state = sub.state
            if kind == "update":
                step = state.update(frame, received_us)
            else:
                step = state.snapshot(frame, received_us)
                sub.retries = 0
            if step.resync is not None:
                return step.events + self._resync(sub, step.resync, now)
            return step.events
        if kind == "subscribed":
            return self._subscribed(frame, now)
        if kind == "unsubscribed":
            return self._unsubscribed(frame, now)
        if kind == "error":
            return self._error(frame, now)
        return []  # pong, and frame types of later protocol versions

    def _reply_target(self, frame: dict[str, Any], op: str) -> tuple[str, _Sub] | None:
        """The channel whose request ``frame`` answers, if it still waits for that answer."""
        request_id = frame.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        entry = self._requests.pop(request_id, None)
        if entry is None or entry[1] != op:
            return None
        name = entry[0]
        sub = self._subs.get(name)
        if sub is None or sub.request_id != request_id:
            return None
        sub.request_id = None
        return name, sub

    def _subscribed(self, frame: dict[str, Any], now: float) -> list[Event]:
        target = self._reply_target(frame, "subscribe")
        if target is None:
            return []
        _, sub = target
        sub.wire = Wire.SUBSCRIBED
        resuming, sub.resuming = sub.resuming, False
        if not sub.wanted:
            self._schedule(sub, now)  # unsubscribed meanwhile: leave again
            return []
        if not resuming:
            return []  # the snapshot follows
        state = sub.state
        if frame.get("resumed") is True:
            if state.position == (frame.get("epoch"), frame.get("seq")):
                state.counters.resumes_replayed += 1
                sub.retries = 0
                return state.set_status(ChannelStatus.LIVE, "resumed")
            return self._resync(sub, ResyncReason.RESUME_MISMATCH, now)
        state.counters.resumes_snapshot += 1
        state.discard()  # a snapshot follows and replaces it
        return []

    def _unsubscribed(self, frame: dict[str, Any], now: float) -> list[Event]:
        target = self._reply_target(frame, "unsubscribe")
        if target is None:
            return []
        name, sub = target
        self._left(name, sub, now)
        return []

    def _left(self, name: str, sub: _Sub, now: float) -> None:
        sub.wire, sub.fresh = Wire.IDLE, False
        if sub.wanted:
            self._schedule(sub, now)
        else:
            del self._subs[name]

    def _error(self, frame: dict[str, Any], now: float) -> list[Event]:
        code = str(frame.get("code", ""))
        message = str(frame.get("message", ""))
        request_id = frame.get("id")
        entry = self._requests.get(request_id) if isinstance(request_id, int) else None
        if entry is None:
            return [ChannelError(None, code, message)]
        name, op = entry
        target = self._reply_target(frame, op)
        events: list[Event] = [ChannelError(name, code, message)]
        if target is None:
            return events
        _, sub = target
        sub.state.counters.errors += 1
        if op == "unsubscribe":
            if code == "not_subscribed":
                self._left(name, sub, now)
            else:  # rate_limited, or unknown: still subscribed; try again later
                sub.wire = Wire.SUBSCRIBED
                self._schedule(sub, now + self._retry_delay(sub))
            return events
        sub.resuming = False
        if code == "already_subscribed":  # the relay holds a subscription we don't know
            sub.wire = Wire.SUBSCRIBED
            return events + self._resync(sub, ResyncReason.RELAY_STATE, now)
        sub.wire = Wire.IDLE
        if not sub.wanted:
            del self._subs[name]
            return events
        state = sub.state
        if code in _FINAL_SUBSCRIBE_ERRORS:
            state.discard()
            return events + state.set_status(ChannelStatus.FAILED, code)
        if code == "invalid_resume":  # not expected: subscribe afresh
            return events + self._resync(sub, ResyncReason.RESUME_MISMATCH, now)
        self._schedule(sub, now + self._retry_delay(sub))
        return events

    def _resync(self, sub: _Sub, reason: ResyncReason, now: float) -> list[Event]:
        """Discard the state and ask for a fresh snapshot (a new subscription)."""
        state = sub.state
        state.discard()
        state.counters.resubscribes += 1
        state.streak += 1
        if sub.wire is Wire.SUBSCRIBED:
            sub.fresh = True
        # The first resync goes at once; more in a row, with nothing applied in between,
        # are spaced out: a fresh snapshot that fails too will likely fail again.
        delay = 0.0
        if state.streak > 1:
            delay = full_jitter(self.rng, self.retry_base, self.retry_max, state.streak - 2)
        self._schedule(sub, now + delay)
        return state.set_status(ChannelStatus.RESYNCING, reason.value)
