"""One channel's state: sequencing, book or last trades, and the history of encoded updates.

Invariants (contract rules 1-4):
- While ``live``, ``seq`` is the seq of the last entry applied and the book (or trades) is
  exactly the producer's state at that seq.
- ``history`` holds the encoded update frames for the seqs ``seq - len(history) + 1 .. seq``,
  contiguous, all of the current epoch.
- An entry whose seq is not ``seq + 1``, or that is malformed, is never applied: the channel
  stops being live and must be rebuilt from the producer's snapshot (``reset``) before it
  produces frames again. Nothing is ever skipped silently.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

import orjson

from relay.core.book import Book, BookError
from relay.core.checksum import DEFAULT_DEPTH, book_checksum
from relay.core.entry import Entry, MalformedEntry, StreamEntry, parse_entry
from relay.core.frames import snapshot_frame, update_frame

CHANNEL_RE = re.compile(r"(?P<kind>[a-z][a-z0-9_]{0,19})\.(?P<symbol>[A-Za-z0-9_-]{1,40})")


class Kind(StrEnum):
    BOOK = "book"
    TRADES = "trades"


def parse_channel_name(name: str) -> Kind | None:
    """The kind of a well-formed channel name, or None when the name or kind is not served."""
    match = CHANNEL_RE.fullmatch(name)
    if match is None:
        return None
    try:
        return Kind(match["kind"])
    except ValueError:
        return None


class ResyncReason(StrEnum):
    GAP = "gap"
    BACKWARDS = "backwards"
    MALFORMED = "malformed"
    CROSSED = "crossed"  # best bid >= best ask after an update
    EPOCH = "epoch"
    SOURCE = "source"  # the producer's snapshot does not fit its stream
    INTERNAL = "internal"  # the relay's own failure


@dataclass(slots=True)  # one per update: not frozen, whose __init__ is 3x slower
class Applied:
    entry: Entry
    frame: bytes


@dataclass(frozen=True, slots=True)
class Resync:
    reason: ResyncReason
    detail: str


Outcome = Applied | Resync


@dataclass(frozen=True, slots=True)
class Replay:
    """Resume succeeded: these frames (possibly none) bring the client to the live seq."""

    frames: list[bytes]


class Channel:
    """State of one channel. Fed entries in stream order; produces frames."""

    def __init__(
        self,
        name: str,
        kind: Kind,
        *,
        history: int,
        trades_kept: int,
        checksum_depth: int = DEFAULT_DEPTH,
    ) -> None:
        self.name = name
        self.kind = kind
        self._name_bytes = name.encode()
        self.epoch = ""
        self.seq = 0
        self.ts = 0
        self.live = False
        self.book = Book()
        self.trades: deque[bytes] = deque(maxlen=trades_kept)
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history)
        self._snapshot: tuple[int, bytes] | None = None
        self.snapshots_encoded = 0
        # Book frames carry the checksum of the top levels; 0 turns it off.
        self.checksum_depth = checksum_depth if kind is Kind.BOOK else 0

    # -- rebuilding -------------------------------------------------------------------

    def reset(self, *, epoch: str, seq: int, ts: int, state: Any) -> None:
        """Start over from the producer's state at ``seq``.

        ``state`` is the snapshot payload for a book, or the raw ``data`` of the last
        trades (oldest first) for a trades channel. Raises MalformedEntry when it is not
        a valid state; the channel then stays not live.
        """
        self.live = False
        if self.kind is Kind.BOOK:
            try:
                book = Book.from_payload(state)
            except BookError as exc:
                raise MalformedEntry(f"snapshot: {exc}") from exc
            if book.is_crossed():
                raise MalformedEntry(f"snapshot is crossed: {book.best_bid()} / {book.best_ask()}")
            self.book = book
        else:
            self.trades.clear()
            self.trades.extend(state)
        self.epoch, self.seq, self.ts = epoch, seq, ts
        self.history.clear()
        self._snapshot = None
        self.live = True

    def mark_stale(self) -> None:
        self.live = False

    # -- the hot path -----------------------------------------------------------------

    def apply(self, raw: StreamEntry) -> Outcome:
        """Apply the next stream entry; once per entry, whatever the number of subscribers."""
        if not self.live:
            return Resync(ResyncReason.SOURCE, f"entry {raw.id}: channel is not live")
        try:
            entry = parse_entry(raw)
        except MalformedEntry as exc:
            return self._stale(ResyncReason.MALFORMED, f"entry {raw.id}: {exc}")
        if entry.seq != self.seq + 1:
            reason = ResyncReason.GAP if entry.seq > self.seq else ResyncReason.BACKWARDS
            return self._stale(reason, f"entry {raw.id}: seq {entry.seq} after {self.seq}")
        if self.kind is Kind.BOOK:
            try:
                self.book.apply(entry.payload)
            except BookError as exc:
                return self._stale(ResyncReason.MALFORMED, f"entry {raw.id}: {exc}")
            if self.book.is_crossed():
                # A crossed book cannot be the producer's true state: something upstream
                # is wrong, so nothing built on it goes out (rebuilt from the snapshot).
                bid, ask = self.book.best_bid(), self.book.best_ask()
                return self._stale(
                    ResyncReason.CROSSED, f"entry {raw.id}: seq {entry.seq} crosses {bid} / {ask}"
                )
        else:
            self.trades.append(entry.data)
        self.seq, self.ts = entry.seq, entry.ts
        checksum = book_checksum(self.book, self.checksum_depth) if self.checksum_depth else None
        frame = update_frame(self._name_bytes, entry.seq, entry.ts, entry.data, checksum)
        self.history.append((entry.seq, frame))
        return Applied(entry, frame)

    def _stale(self, reason: ResyncReason, detail: str) -> Resync:
        self.live = False
        return Resync(reason, detail)

    # -- greeting subscribers ---------------------------------------------------------

    def snapshot(self) -> bytes:
        """The encoded snapshot at the current seq; encoded once per seq, however many ask."""
        cached = self._snapshot
        if cached is not None and cached[0] == self.seq:
            return cached[1]
        data: Any
        if self.kind is Kind.BOOK:
            data = self.book.to_payload()
        else:
            data = {"trades": [orjson.Fragment(raw) for raw in self.trades]}
        checksum = book_checksum(self.book, self.checksum_depth) if self.checksum_depth else None
        frame = snapshot_frame(self.name, self.epoch, self.seq, self.ts, data, checksum)
        self._snapshot = (self.seq, frame)
        self.snapshots_encoded += 1
        return frame

    def resume(self, epoch: str, seq: int) -> Replay | None:
        """Frames after ``seq`` from history, or None when only a snapshot can help (rule 3)."""
        if not self.live or epoch != self.epoch or seq > self.seq or seq < 0:
            return None
        if seq == self.seq:
            return Replay([])
        if not self.history:
            return None
        oldest = self.history[0][0]
        if seq + 1 < oldest:
            return None
        return Replay([frame for _, frame in islice(self.history, seq + 1 - oldest, None)])


def replay_after(
    channel: Channel, seq: int, entries: Sequence[StreamEntry], snapshot_id: str | None = None
) -> Resync | None:
    """Apply the entries that follow a snapshot at ``seq`` (cold start and rebuild).

    Entries at or before the snapshot's seq are the past the snapshot already holds.
    With ``snapshot_id``, the first entry must be the snapshot's own entry: a snapshot
    hash left from an earlier stream (the producer restarted and recreated it) or whose
    entry was trimmed cannot be checked against the stream, so it is not trusted.
    """
    if snapshot_id is not None:
        first = entries[0] if entries else None
        if first is None or first.id != snapshot_id or _seq_of(first) != seq:
            channel.mark_stale()
            return Resync(
                ResyncReason.SOURCE, f"snapshot entry {snapshot_id} (seq {seq}) not in the stream"
            )
    for raw in entries:
        outcome = channel.apply(raw) if _seq_of(raw) > seq else None
        if isinstance(outcome, Resync):
            return outcome
    return None


def _seq_of(raw: StreamEntry) -> int:
    value = raw.fields.get(b"seq", b"")
    # A malformed seq is left to Channel.apply, which reports it properly.
    return int(value) if value.isdigit() else 1 << 62
