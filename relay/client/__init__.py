"""``relay.client``: an asyncio client for the relay, for bots.

It keeps a local book (or the last trades) per channel from the relay's snapshot and
updates, applies updates strictly in seq order, verifies every book frame's checksum,
and recovers by itself: a gap or a checksum mismatch discards the channel's state and
gets a fresh snapshot; a lost connection is retried with capped, jittered backoff, on
the next of its URLs, resuming every channel from ``{epoch, seq}``. See docs/client.md.

    async with Client("ws://127.0.0.1:8080/ws", ["book.BTC-USD"]) as client:
        async for event in client:
            if isinstance(event, BookUpdate):
                print(event.seq, event.book.best_bid(), event.book.best_ask())
"""

from relay.client.books import ChannelState, LocalBook
from relay.client.connection import Client, EventStream
from relay.client.events import (
    BookSnapshot,
    BookUpdate,
    ChannelCounters,
    ChannelError,
    ChannelStatus,
    ClientCounters,
    Connected,
    Disconnected,
    Event,
    ResyncReason,
    StatusChanged,
    Trade,
    TradesSnapshot,
    TradeUpdate,
)
from relay.client.session import Session

__all__ = [
    "BookSnapshot",
    "BookUpdate",
    "ChannelCounters",
    "ChannelError",
    "ChannelState",
    "ChannelStatus",
    "Client",
    "ClientCounters",
    "Connected",
    "Disconnected",
    "Event",
    "EventStream",
    "LocalBook",
    "ResyncReason",
    "Session",
    "StatusChanged",
    "Trade",
    "TradeUpdate",
    "TradesSnapshot",
]
