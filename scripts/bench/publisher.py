"""The bench's producer: book diffs at a fixed rate R over K channels, pipelined.

Per the wire contract (PROTOCOL.md, producer side):
- every channel is ``book.<symbol>`` with stream ``md:{book.<symbol>}``; entries carry
  ``seq`` (previous + 1), ``ts`` (microseconds, taken when the batch is written) and
  ``data`` (a JSON book diff of about 200 bytes: price levels as decimal strings, "0"
  removes a level);
- a new epoch is written to ``md:{<channel>}:meta`` at start, seq 1 is the whole book and
  the snapshot hash points at it; the snapshot hash is refreshed atomically with the XADD
  it belongs to (a Lua script, as relay/producer.py does) every ``pool`` updates;
- streams are trimmed with ``MAXLEN ~``.

To keep the producer cheap (it shares a core with the load client), diffs come from a
pool of ``pool`` pre-encoded diffs that is cycled. Each diff sets a few levels of a fixed
price grid, so after every full cycle the book is the same known state: the snapshot
written at those seqs is exact. Everything goes to Redis as raw RESP over one connection,
many commands per write, with replies counted (and errors kept) as they come back.

The nchan target has no Redis: the same update frames are POSTed to nchan's publisher
endpoint, pipelined HTTP/1.1 on one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from common import meta_key, snapshot_key, stream_key

# XADD and the snapshot hash that points at the new entry, atomically (the entry id is only
# known inside the server). Same script as relay/producer.py: it is the contract's way.
XADD_WITH_SNAPSHOT = b"""
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[2], 'ts', ARGV[3], 'data', ARGV[5], 'id', id)
return id
"""


def resp(*args: bytes | str | int) -> bytes:
    """One Redis command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def channel_names(count: int) -> list[str]:
    return [f"book.BENCH{i:03d}-USD" for i in range(count)]


class BookPool:
    """A fixed price grid of ``levels`` per side and ``pool`` diffs that cycle over it."""

    def __init__(self, levels: int, pool: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.levels = levels
        mid_ticks = 4_310_000  # 43100.00 with a 0.01 tick
        self.bid_prices = [self._price(mid_ticks - 1 - i) for i in range(levels)]
        self.ask_prices = [self._price(mid_ticks + 1 + i) for i in range(levels)]
        bids = {i: self._size(rng, i) for i in range(levels)}
        asks = {i: self._size(rng, i) for i in range(levels)}
        self.initial = self._payload(bids, asks)
        self.diffs: list[bytes] = []
        for _ in range(pool):
            diff: dict[str, list[list[str]]] = {"bids": [], "asks": []}
            sides = (("bids", bids, self.bid_prices), ("asks", asks, self.ask_prices))
            for side, book, prices in sides:
                picked: set[int] = set()
                for _ in range(4):
                    # Most activity near the top of the book, as in real markets.
                    i = min(int(rng.expovariate(1 / 8)), levels - 1)
                    if i in picked:
                        continue
                    picked.add(i)
                    size = "0" if rng.random() < 0.15 else self._size(rng, i)
                    if size == "0":
                        book.pop(i, None)
                    else:
                        book[i] = size
                    diff[side].append([prices[i], size])
            self.diffs.append(orjson.dumps(diff))
        # The book after one full cycle, and so after every full cycle: every level the pool
        # touches ends as the pool last set it, the others keep their initial size.
        self.cycled = self._payload(bids, asks)

    @staticmethod
    def _price(ticks: int) -> str:
        whole, frac = divmod(ticks, 100)
        return f"{whole}.{frac:02d}"

    @staticmethod
    def _size(rng: random.Random, depth: int) -> str:
        return f"{rng.uniform(0.0001, 1.0 + depth * 0.1):.4f}"

    def _payload(self, bids: dict[int, str], asks: dict[int, str]) -> bytes:
        return orjson.dumps(
            {
                "bids": [[self.bid_prices[i], bids[i]] for i in sorted(bids)],
                "asks": [[self.ask_prices[i], asks[i]] for i in sorted(asks)],
            }
        )

    def mean_diff_bytes(self) -> float:
        return sum(map(len, self.diffs)) / max(1, len(self.diffs))


def update_body(channel: bytes, seq: int, ts: int, data: bytes) -> bytes:
    """The relay's update frame text (PROTOCOL.md), what nchan is given to publish."""
    return b'{"type":"update","channel":"%s","seq":%d,"ts":%d,"data":%s}' % (
        channel,
        seq,
        ts,
        data,
    )


@dataclass(slots=True)
class _Counter(asyncio.Protocol):
    """Counts the replies on a pipelined connection; ``waiter`` wakes at ``want`` replies.

    Subclasses parse one protocol in ``_consume`` and return how many bytes they used."""

    what: str = "connection"
    replies: int = 0
    errors: list[bytes] = field(default_factory=list)
    buf: bytearray = field(default_factory=bytearray)
    waiter: asyncio.Future[None] | None = None
    want: int = 0
    lost: bool = False

    def _consume(self, buf: bytearray) -> int:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        self.buf += data
        del self.buf[: self._consume(self.buf)]
        if self.waiter is not None and self.replies >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"{self.what} connection lost"))


@dataclass(slots=True)
class ReplyCounter(_Counter):
    """Counts RESP replies (simple strings, errors, integers, bulk strings; no arrays)."""

    what: str = "redis"

    def _consume(self, buf: bytearray) -> int:
        pos = 0
        n = len(buf)
        while pos < n:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            kind = buf[pos]
            if kind == 0x24:  # $: bulk string
                size = int(buf[pos + 1 : end])
                stop = end + 2 + (size + 2 if size >= 0 else 0)
                if stop > n:
                    break
                pos = stop
            else:
                if kind == 0x2D and len(self.errors) < 20:  # -: an error reply
                    self.errors.append(bytes(buf[pos:end]))
                pos = end + 2
            self.replies += 1
        return pos


@dataclass(slots=True)
class HttpReplyCounter(_Counter):
    """Counts HTTP/1.1 responses on a pipelined connection (Content-Length bodies)."""

    what: str = "publisher"

    def _consume(self, buf: bytearray) -> int:
        pos = 0
        while True:
            head_end = buf.find(b"\r\n\r\n", pos)
            if head_end < 0:
                break
            head = bytes(buf[pos:head_end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            stop = head_end + 4 + length
            if stop > len(buf):
                break
            status = head[9:12]
            if not status.startswith(b"2") and len(self.errors) < 20:
                self.errors.append(bytes(buf[pos:stop])[:200])
            self.replies += 1
            pos = stop
        return pos


class Publisher:
    """Writes ``rate`` updates/s round-robin over ``channels``; the rate can change live."""

    def __init__(
        self,
        channels: Sequence[str],
        pool: BookPool,
        *,
        maxlen: int = 10_000,
        nchan_port: int | None = None,
        tick: float = 0.001,
    ) -> None:
        self.channels = list(channels)
        self.names = [c.encode() for c in self.channels]
        self.keys = [stream_key(c).encode() for c in self.channels]
        self.snap_keys = [snapshot_key(c).encode() for c in self.channels]
        self.pool = pool
        self.maxlen = b"%d" % maxlen
        self.nchan_port = nchan_port
        self.tick = tick
        self.epoch = f"bench-{int(time.time())}-{secrets.token_hex(3)}"
        self.seqs = [0] * len(self.channels)
        self.sent = 0  # updates written
        self.rate = 0.0
        self._transport: asyncio.Transport | None = None
        self._replies: _Counter | None = None
        self._sha = b""
        self._next = 0  # round-robin cursor
        self._rate_changed = asyncio.Event()

    # -- setup ------------------------------------------------------------------------

    async def connect(self, redis_port: int | None) -> None:
        loop = asyncio.get_running_loop()
        port = self.nchan_port if self.nchan_port is not None else redis_port
        assert port is not None
        factory: type[_Counter] = HttpReplyCounter if self.nchan_port is not None else ReplyCounter
        transport, protocol = await loop.create_connection(factory, "127.0.0.1", port)
        self._transport = transport
        self._replies = protocol

    async def _command(self, payload: bytes, count: int) -> None:
        """Write ``count`` commands and wait for their replies."""
        assert self._transport is not None
        assert self._replies is not None
        replies = self._replies
        replies.want = replies.replies + count
        replies.waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        async with asyncio.timeout(30):
            await replies.waiter
        replies.waiter = None

    async def init_streams(self) -> None:
        """New epoch; seq 1 of every channel is the whole book, and its snapshot."""
        if self.nchan_port is not None:
            return
        out = [resp(b"SCRIPT", b"LOAD", XADD_WITH_SNAPSHOT)]
        await self._command(out[0], 1)
        import hashlib

        self._sha = hashlib.sha1(XADD_WITH_SNAPSHOT).hexdigest().encode()
        cmds = []
        ts = time.time_ns() // 1000
        for i, channel in enumerate(self.channels):
            cmds.append(resp(b"DEL", self.keys[i], self.snap_keys[i]))
            cmds.append(resp(b"HSET", meta_key(channel), b"epoch", self.epoch))
            cmds.append(self._snapshot_cmd(i, 1, ts, self.pool.initial, self.pool.initial))
            self.seqs[i] = 1
        await self._command(b"".join(cmds), len(cmds))
        self.check()

    def _snapshot_cmd(self, i: int, seq: int, ts: int, data: bytes, snap: bytes) -> bytes:
        return resp(
            b"EVALSHA", self._sha, b"2", self.keys[i], self.snap_keys[i],
            self.maxlen, b"%d" % seq, b"%d" % ts, data, snap,
        )  # fmt: skip

    def check(self) -> None:
        replies = self._replies
        if replies is not None and replies.errors:
            raise RuntimeError(f"publisher got errors: {replies.errors[:3]!r}")
        if replies is not None and replies.lost:
            raise RuntimeError("publisher lost its connection")

    # -- the loop ---------------------------------------------------------------------

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self._rate_changed.set()

    def _build(self, count: int) -> bytes:
        ts = time.time_ns() // 1000
        pool = self.pool.diffs
        npool = len(pool)
        nchan = len(self.channels)
        seqs = self.seqs
        out: list[bytes] = []
        cursor = self._next
        http = self.nchan_port is not None
        for _ in range(count):
            i = cursor
            cursor = cursor + 1 if cursor + 1 < nchan else 0
            seq = seqs[i] + 1
            seqs[i] = seq
            diff_index = (seq - 2) % npool
            data = pool[diff_index]
            if http:
                body = update_body(self.names[i], seq, ts, data)
                out.append(
                    b"POST /pub/%s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                    b"\r\nContent-Length: %d\r\n\r\n%s" % (self.names[i], len(body), body)
                )
            elif diff_index == npool - 1:
                # End of a cycle: the book is the known cycled state; refresh the snapshot.
                out.append(self._snapshot_cmd(i, seq, ts, data, self.pool.cycled))
            else:
                key = self.keys[i]
                out.append(
                    b"*12\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n"
                    b"$1\r\n*\r\n$3\r\nseq\r\n$%d\r\n%d\r\n$2\r\nts\r\n$%d\r\n%d\r\n"
                    b"$4\r\ndata\r\n$%d\r\n%s\r\n"
                    % (
                        len(key), key, len(self.maxlen), self.maxlen,
                        len(b"%d" % seq), seq, len(b"%d" % ts), ts, len(data), data,
                    )
                )  # fmt: skip
        self._next = cursor
        return b"".join(out)

    async def run(self) -> None:
        """Publish at ``self.rate`` until cancelled. Behind by more than 1 s: drop the debt."""
        assert self._transport is not None
        transport = self._transport
        loop = asyncio.get_running_loop()
        while True:
            self._rate_changed.clear()
            rate = self.rate
            started = loop.time()
            done = 0
            while not self._rate_changed.is_set():
                if rate > 0:
                    due = int((loop.time() - started) * rate) - done
                    if due > rate:  # more than a second behind: the loop stalled
                        started += (due - int(rate)) / rate
                        due = int(rate)
                    if due > 0:
                        transport.write(self._build(due))
                        done += due
                        self.sent += due
                        self.check()
                await asyncio.sleep(self.tick)

    def stats(self) -> dict[str, object]:
        replies = self._replies
        return {
            "sent": self.sent,
            "acked": replies.replies if replies else 0,
            "errors": [e.decode(errors="replace") for e in replies.errors] if replies else [],
        }

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
