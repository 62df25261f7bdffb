"""What the client tells its user: events, channel statuses, trades and counters.

Every event is a frozen dataclass. Events of one client are delivered in one order, to
callbacks first and then to every async iterator, and the client does not process the next
frame until they all had it: when you hold an event, the channel's local state
(``event.book``, ``Client.trades``) is exactly the state after that event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.client.books import LocalBook


class ChannelStatus(StrEnum):
    """Where a channel is; every change is announced by a ``StatusChanged`` event."""

    SUBSCRIBING = "subscribing"  # no state yet: waiting for the first snapshot
    LIVE = "live"  # state is current; updates are applied in seq order
    RESYNCING = "resyncing"  # state discarded (gap, checksum, ...): waiting for a snapshot
    RECONNECTING = "reconnecting"  # connection lost: state kept as of its seq, to resume
    FAILED = "failed"  # the relay refused the subscription for good; not retried
    CLOSED = "closed"  # unsubscribed by the user, or the client closed


class ResyncReason(StrEnum):
    """Why a channel's state was discarded (``StatusChanged.reason`` when resyncing)."""

    GAP = "gap"  # an update that was not the next seq
    CHECKSUM = "checksum"  # the book after a frame did not match the frame's checksum
    MALFORMED = "malformed"  # a snapshot or update the client could not apply
    NO_SNAPSHOT = "no_snapshot"  # an update with no state to apply it to
    RESUME_MISMATCH = "resume_mismatch"  # a resume answered at another position
    RELAY_STATE = "relay_state"  # the relay's view of the subscription differed from ours


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade as the producer wrote it; prices and sizes stay decimal strings."""

    id: str
    price: str
    size: str
    side: str  # the taker side: "buy" or "sell"
    data: Mapping[str, Any] = field(repr=False, compare=False)  # every key, as sent

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Trade:
        return cls(
            id=_text(data.get("id")),
            price=_text(data.get("price")),
            size=_text(data.get("size")),
            side=_text(data.get("side")),
            data=data,
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


@dataclass(slots=True)
class ChannelCounters:
    """What happened to one channel since it was subscribed; ``Client.counters`` copies it."""

    snapshots: int = 0  # snapshots received (first, resync, resume, relay-sent)
    updates: int = 0  # updates applied (and delivered)
    gaps: int = 0  # updates whose seq was not the next one
    duplicates: int = 0  # updates at or before the applied seq: ignored
    checksums_verified: int = 0  # book frames whose checksum matched
    checksum_failures: int = 0  # book frames whose checksum did not
    malformed: int = 0  # frames that could not be applied
    resubscribes: int = 0  # resyncs: state discarded, fresh snapshot requested
    reconnects: int = 0  # connection losses this channel went through
    resumes_replayed: int = 0  # resumes the relay answered by replaying missed updates
    resumes_snapshot: int = 0  # resumes the relay answered with a snapshot
    errors: int = 0  # error replies the relay sent about this channel

    def copy(self) -> ChannelCounters:
        return dataclasses.replace(self)


@dataclass(slots=True)
class ClientCounters:
    """Connection-level counters; ``Client.stats`` copies it."""

    connects: int = 0  # connections established
    connect_failures: int = 0  # attempts that did not get a WebSocket
    disconnects: int = 0  # established connections that ended (not by close())
    close_codes: dict[int, int] = field(default_factory=dict)  # how they ended
    bad_frames: int = 0  # frames that were not a JSON object

    def copy(self) -> ClientCounters:
        return dataclasses.replace(self, close_codes=dict(self.close_codes))


class Event:
    """Base class of every event (``client.on(Event, callback)`` sees them all)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Connected(Event):
    url: str
    attempt: int  # 1 for the first connection, then counting every attempt since


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """A connection ended or could not be made; the client retries after ``delay`` s."""

    url: str
    code: int | None  # the WebSocket close code (1006: dropped); None: never connected
    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class StatusChanged(Event):
    channel: str
    status: ChannelStatus
    previous: ChannelStatus
    # A ResyncReason value when resyncing; "snapshot" or "resumed" when going live;
    # "disconnected" when reconnecting; the relay's error code when failed.
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelError(Event):
    """An error reply from the relay. ``channel`` is None when it names no request of ours."""

    channel: str | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BookSnapshot(Event):
    """A fresh book: replace anything derived from this channel's earlier state."""

    channel: str
    epoch: str
    seq: int
    ts: int  # producer time of ``seq``, microseconds since the Unix epoch
    book: LocalBook  # this channel's local book from now on (updated in place)
    checksum: int | None
    received_us: int  # when the frame was read, microseconds since the Unix epoch


@dataclass(frozen=True, slots=True)
class BookUpdate(Event):
    channel: str
    seq: int
    ts: int
    diff: Mapping[str, Any]  # the producer's payload: {"bids": [...], "asks": [...]}
    book: LocalBook  # the local book, with this diff applied
    checksum: int | None
    received_us: int

    @property
    def latency_us(self) -> int:
        """Producer event time to receipt (clocks of two machines: indicative)."""
        return self.received_us - self.ts


@dataclass(frozen=True, slots=True)
class TradesSnapshot(Event):
    """The relay's last trades of the channel, oldest first; replaces the kept trades."""

    channel: str
    epoch: str
    seq: int
    ts: int
    trades: tuple[Trade, ...]
    received_us: int


@dataclass(frozen=True, slots=True)
class TradeUpdate(Event):
    channel: str
    seq: int
    ts: int
    trade: Trade
    received_us: int

    @property
    def latency_us(self) -> int:
        return self.received_us - self.ts
