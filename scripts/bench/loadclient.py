"""One load-client process: many WebSocket connections over picows (Cython) on uvloop.

Run by run.py, never by hand: the configuration is one JSON argument, commands arrive on
stdin one per line (``start``, ``stop``, ``quit``) and every answer is one JSON line on
stdout.

Per connection it subscribes to its channels (``{"op":"subscribe",...}``; for nchan the
channels are in the URL), then for every frame:
- ``update``: the head is matched by one regex (``type``, ``channel``, ``seq``, ``ts`` come
  first in every target's frames), never JSON-parsed. Gaps are counted per connection and
  channel (seq != previous + 1 after the subscribe), latency = now - ts in microseconds.
- ``subscribed``/``snapshot``/``error`` (rare) are JSON-parsed: a snapshot resets the seq.
- close frames and disconnects are counted with their code.

Slow readers stop reading once subscribed (``pause_reading`` on the socket, with a small
receive buffer), so the target sees their backlog grow; at ``stop`` they start reading again
and report whether the target closed them (and with what code).

Own CPU (user+sys of this process) is measured between ``start`` and ``stop`` so that the
driver can report the client's cost per frame.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import socket
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

UPDATE = re.compile(
    rb'\{"type":\s?"update",\s?"channel":\s?"([^"]+)",\s?"seq":\s?(\d+),\s?"ts":\s?(\d+)'
)
_match = UPDATE.match
_time_ns = time.time_ns


@dataclass(slots=True)
class Stats:
    frames: int = 0  # every text frame
    updates: int = 0
    bytes: int = 0
    gaps: int = 0  # seq != previous + 1
    missing: int = 0  # seqs skipped over by those gaps
    dups: int = 0  # seq <= previous
    snapshots: int = 0
    errors: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    latencies: array[int] = field(default_factory=lambda: array("q"))
    measuring: bool = False
    gap_examples: list[str] = field(default_factory=list)

    def window(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "updates": self.updates,
            "bytes": self.bytes,
            "gaps": self.gaps,
            "missing": self.missing,
            "dups": self.dups,
            "snapshots": self.snapshots,
            "errors": self.errors,
            "closes": dict(self.closes),
            "gap_examples": self.gap_examples[:5],
        }

    def reset(self) -> None:
        self.frames = self.updates = self.bytes = 0
        self.gaps = self.missing = self.dups = self.snapshots = self.errors = 0
        self.closes = {}
        self.latencies = array("q")
        self.gap_examples = []


class Client(WSListener):  # type: ignore[misc]
    """One connection. Hot path: ``on_ws_frame`` for an update frame."""

    def __init__(self, index: int, channels: list[str], stats: Stats, slow: bool, nchan: bool):
        self.index = index
        self.channels = channels
        self.stats = stats
        self.slow = slow
        self.nchan = nchan
        self.last: dict[bytes, int] = {}
        self.pending = len(channels)  # subscribes not yet answered
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.transport: WSTransport | None = None
        self.close_code: int | None = None
        self.disconnected = False
        self.expect_close = False
        self.ready = asyncio.get_running_loop().create_future()

    # -- picows callbacks --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.nchan:
            self.pending = 0
            self._mark_ready()
            return
        for i, channel in enumerate(self.channels):
            request = {"op": "subscribe", "channel": channel, "id": i + 1}
            transport.send(WSMsgType.TEXT, orjson.dumps(request))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                self.close_code = frame.get_close_code()
            return
        payload = frame.get_payload_as_bytes()
        stats = self.stats
        stats.frames += 1
        stats.bytes += len(payload)
        m = _match(payload)
        if m is None:
            self._control(payload)
            return
        channel, seq_raw, ts_raw = m.groups()
        seq = int(seq_raw)
        last = self.last.get(channel)
        self.last[channel] = seq
        if last is not None and seq != last + 1:
            self._gap(channel, last, seq)
        stats.updates += 1
        if stats.measuring:
            stats.latencies.append(_time_ns() // 1000 - int(ts_raw))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if not self.expect_close:
            code = str(self.close_code) if self.close_code is not None else "none"
            self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
        if not self.ready.done():
            self.ready.set_result(None)

    # -- the rare paths ----------------------------------------------------------------

    def _gap(self, channel: bytes, last: int, seq: int) -> None:
        stats = self.stats
        if seq <= last:
            stats.dups += 1
        else:
            stats.gaps += 1
            stats.missing += seq - last - 1
        if len(stats.gap_examples) < 5:
            stats.gap_examples.append(f"conn {self.index} {channel.decode()}: {last} -> {seq}")

    def _control(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.stats.errors += 1
            return
        kind = message.get("type")
        if kind == "snapshot":
            self.stats.snapshots += 1
            self.last[message["channel"].encode()] = int(message["seq"])
            self._answered()
        elif kind == "subscribed":
            channel = message["channel"].encode()
            self.last.setdefault(channel, int(message.get("seq", 0)))
            if self.nchan:
                self._answered()
        elif kind == "error":
            self.stats.errors += 1
            self._answered()
        elif kind == "update":  # a head our regex did not expect: parse it the slow way
            self.stats.errors += 1

    def _answered(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self._mark_ready()

    def _mark_ready(self) -> None:
        if self.ready_at is None:
            self.ready_at = time.monotonic()
            if self.slow and self.transport is not None:
                self.transport.underlying_transport.pause_reading()
            if not self.ready.done():
                self.ready.set_result(None)


@dataclass(slots=True)
class Config:
    url: str
    nchan: bool
    connections: list[list[str]]  # channels per connection
    slow: list[bool]
    connect_rate: float
    latency_file: str
    index_base: int
    slow_rcvbuf: int


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _connect(
    config: Config, i: int, stats: Stats, slow_stats: Stats, clients: list[Client | None]
) -> None:
    channels = config.connections[i]
    slow = config.slow[i]
    url = config.url
    if config.nchan:
        url = f"{url}/{','.join(channels)}"

    def factory() -> Client:
        return Client(
            config.index_base + i, channels, slow_stats if slow else stats, slow, config.nchan
        )

    def small_socket(_: object) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.slow_rcvbuf)
        sock.setblocking(False)
        return sock

    try:
        _, client = await ws_connect(
            factory,
            url,
            websocket_handshake_timeout=30,
            max_frame_size=64 * 2**20,
            socket_factory=small_socket if slow and config.slow_rcvbuf else None,
        )
    except Exception as exc:  # counted and reported, never fatal
        stats.closes[f"connect: {type(exc).__name__}"] = (
            stats.closes.get(f"connect: {type(exc).__name__}", 0) + 1
        )
        return
    clients[i] = client
    started = time.monotonic()
    try:
        async with asyncio.timeout(60):
            await client.ready
    except TimeoutError:
        pass
    client.started = started


async def main(config: Config) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    slow_stats = Stats()
    n = len(config.connections)
    clients: list[Client | None] = [None] * n
    connect_started = time.monotonic()
    tasks = []
    # Connect at the configured pace (a storm is just a high pace).
    for i in range(n):
        due = connect_started + i / config.connect_rate if config.connect_rate > 0 else 0
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_connect(config, i, stats, slow_stats, clients)))
    await asyncio.gather(*tasks)
    connected = [c for c in clients if c is not None]
    ready = [c for c in connected if c.ready_at is not None and not c.disconnected]
    # Time from the start of the connect to the last subscribe answer (snapshot), ms.
    subscribe_ms = [
        round((c.ready_at - c.started) * 1000 if c.ready_at else -1, 3) for c in connected
    ]
    _emit(
        {
            "event": "ready",
            "connections": n,
            "connected": len(connected),
            "ready": len(ready),
            "connect_seconds": round(time.monotonic() - connect_started, 3),
            "subscribe_ms": [ms for ms in subscribe_ms if ms >= 0],
            "closes": dict(stats.closes),
        }
    )

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu_start = 0.0
    wall_start = 0.0
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "start":
            stats.reset()
            stats.measuring = True
            cpu_start, wall_start = _cpu(), time.monotonic()
            _emit({"event": "started"})
        elif line == "stop":
            stats.measuring = False
            cpu, wall = _cpu() - cpu_start, time.monotonic() - wall_start
            with open(config.latency_file, "wb") as out:  # noqa: ASYNC230 - small, local
                stats.latencies.tofile(out)
            _emit(
                {
                    "event": "stats",
                    "cpu": cpu,
                    "wall": wall,
                    "open": sum(1 for c in connected if not c.disconnected),
                    **stats.window(),
                    "latency_count": len(stats.latencies),
                }
            )
        elif line == "slow":
            # Wake the slow readers and see what the target did with them: drain whatever
            # is buffered for up to 3 s, then report their close codes.
            slow = [c for c in connected if c.slow]
            for c in slow:
                if c.transport is not None and not c.disconnected:
                    c.transport.underlying_transport.resume_reading()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(not c.disconnected for c in slow):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            _emit(
                {
                    "event": "slow",
                    "slow": len(slow),
                    "closed": sum(1 for c in slow if c.disconnected),
                    "closes": dict(slow_stats.closes),
                    "updates": slow_stats.updates,
                    "gaps": slow_stats.gaps,
                }
            )
        elif line in ("quit", ""):
            for c in connected:
                c.expect_close = True
                if c.transport is not None and not c.disconnected:
                    c.transport.disconnect()
            await asyncio.sleep(0.2)
            _emit({"event": "bye"})
            return


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    uvloop.run(main(Config(**raw)))
