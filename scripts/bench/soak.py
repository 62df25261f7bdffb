"""Soak of the relay: a long run under churn, slow readers and subscribe storms; are RSS,
open file descriptors and asyncio tasks flat?

One run starts, on 127.0.0.1 only, its own redis-server (free port, ``--save ''``), the
bench's publisher (publisher.py) at ``--rate`` updates/s over ``--channels`` channels,
``relay serve`` as a subprocess and a steady population of ``--steady`` subscribers (the C
load client, loadclient.c) that check every seq. Then, cycle after cycle until
``--duration`` is over:

- churn: ``--churn-rate`` clients/s connect, subscribe to 1-3 channels, check their
  snapshot and updates, and leave: a third close cleanly (1000), a third drop the socket
  (abrupt), a third vanish right after sending their subscribes;
- slow readers: ``--slow`` clients resume every channel from far back in the history and
  stop reading (4 KiB receive buffer); once the relay has flagged them all, they read
  again and must find a close frame with code 4000 at the end of their backlog;
- a subscribe storm: ``--storm`` clients connect and subscribe within one second, all
  must get their snapshot and an update, then leave (half clean, half abrupt);
- a quiet point: the episodic clients are gone, only the steady population is connected;
  the relay's RSS, fds and tasks are recorded there, like for like.

Every ``--interval`` seconds a sample: relay RSS (/proc), open fds (/proc/<pid>/fd), asyncio
tasks (the relay's ``relay_event_loop_tasks``), connections, deliveries/s, gaps. Verdict
(after ``--warmup-cycles``): the quiet points' fds and tasks come back to the first one's
(within ``--fd-tolerance``/``--task-tolerance``), RSS grows by no more than
``--rss-tolerance-pct`` or ``--rss-tolerance-mb`` (whichever is larger) from the first
quiet window to the last, zero gaps, every slow reader closed with 4000, every churned or
storm client served. A table is printed, JSON written (``--out``) and, when matplotlib is
installed, a chart of RSS, fds, tasks and connections over time (``--chart``).

    .venv/bin/python scripts/bench/soak.py                       # 20 minutes
    .venv/bin/python scripts/bench/soak.py --duration 120 --cycle 20 --out /tmp/soak.json

Needs only the relay's own dependencies, redis-server and a C compiler (tests/soak runs a
2-minute version in CI). Exit status: 0 flat and clean, 1 a check failed, 130 interrupted.
See docs/performance.md, "Soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from common import RedisServer, build_loadclient, free_port, pinned, stop_process, wait_port
from publisher import BookPool, Publisher, channel_names

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# -- the relay process ---------------------------------------------------------------------


class RelayProcess:
    """``relay serve`` on a free loopback port, its log in ``workdir``."""

    def __init__(self, command: str, redis_url: str, extra: list[str], workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "relay.log"
        self.cmd = [command, "serve", "--port", str(self.port), "--redis", redis_url, *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                # Every client comes from 127.0.0.1: no connection cap or rate gets in the
                # way (as in run.py; an unknown RELAY_* variable is simply ignored).
                env={
                    **os.environ,
                    "RELAY_HOST": "127.0.0.1",
                    "RELAY_MAX_CONNECTIONS": "0",
                    "RELAY_MAX_CONNECTIONS_PER_ADDRESS": "0",
                    "RELAY_CONNECT_RATE": "0",
                },
                preexec_fn=pinned(None),
            )

    async def wait_ready(self, session: aiohttp.ClientSession, channels: list[str]) -> None:
        await asyncio.to_thread(wait_port, self.port, 30.0, self.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with session.get(self.url("/channels")) as resp:
                rows = await resp.json() if resp.status == 200 else []
            if set(channels) <= {row["channel"] for row in rows if row["live"]}:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the relay did not report every channel live within 30 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        stop_process(self.proc, 30)

    def log_lines(self) -> int:
        return len(self.log.read_text(errors="replace").splitlines()) if self.log.exists() else 0

    def log_problems(self, first_line: int = 0) -> dict[str, Any]:
        """Log events at error level or above, and warnings other than the slow consumers
        the soak provokes on purpose, from ``first_line`` on."""
        errors: list[str] = []
        warnings: dict[str, int] = {}
        if self.log.exists():
            for line in self.log.read_text(errors="replace").splitlines()[first_line:]:
                try:
                    event = json.loads(line)
                except ValueError:
                    if line.strip():
                        errors.append(line[:300])  # not a JSON log line: a traceback
                    continue
                level = event.get("level")
                if level in ("error", "critical"):
                    errors.append(line[:300])
                elif level == "warning" and event.get("event") != "slow consumer":
                    name = str(event.get("event"))
                    warnings[name] = warnings.get(name, 0) + 1
        return {"errors": errors[:20], "error_count": len(errors), "warnings": warnings}


def proc_rss(pid: int) -> int:
    """Resident set size of one process, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to ``{'name{labels}': value}`` (labels as exposed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


async def scrape(session: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, float]:
    async with session.get(relay.url("/metrics"), timeout=aiohttp.ClientTimeout(10)) as resp:
        return parse_metrics(await resp.text())


def scrape_session() -> aiohttp.ClientSession:
    """One connection per scrape, closed after it: no idle keep-alive connection (an fd
    and a task in the relay) lingers between samples to blur the counts."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


# -- a WebSocket client in Python (churn, slow readers, storms) -------------------------------

_HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: c29hay1jbGllbnQta2V5IQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame; mask key 0, so the payload goes as is (valid per RFC 6455)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


class WsClient(asyncio.Protocol):
    """One subscriber that checks its seqs: per channel, the snapshot's seq then +1 each
    update. ``served`` resolves once every channel had its snapshot and one update."""

    def __init__(self, channels: list[str]) -> None:
        loop = asyncio.get_running_loop()
        self.channels = channels
        self.last: dict[str, int] = {}
        self.updates = dict.fromkeys(channels, 0)
        self.gaps = 0
        self.dups = 0
        self.gap_examples: list[str] = []
        self.errors: list[str] = []
        self.close_code: int | None = None  # from the relay's close frame, if one came
        self.opened: asyncio.Future[None] = loop.create_future()
        # Every channel has its starting seq (a snapshot, or a resume's "subscribed").
        self.synced: asyncio.Future[None] = loop.create_future()
        self.served: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False

    @classmethod
    async def connect(
        cls, port: int, channels: list[str], rcvbuf: int = 0, within: float = 30.0
    ) -> WsClient:
        loop = asyncio.get_running_loop()
        client = cls(channels)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:  # before connect, so that the window is small from the start
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(within):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.create_connection(lambda: client, sock=sock)
                await client.opened
        except BaseException:
            client.abort()
            sock.close()
            raise
        return client

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        port = transport.get_extra_info("peername")[1]
        self.transport.write(_HANDSHAKE.format(port=port).encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                status = bytes(buf[: buf.find(b"\r\n")]).decode(errors="replace")
                self._fail(ConnectionError(f"handshake refused: {status}"))
                return
            del buf[: end + 4]
            self._upgraded = True
            self.opened.set_result(None)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            opcode = buf[pos] & 0x0F
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + size:
                break
            payload = bytes(buf[pos + head : pos + head + size])
            pos += head + size
            if opcode == 1:
                self._on_text(payload)
            elif opcode == 9 and self.transport is not None:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if size >= 2 else 1005
                if self.transport is not None:
                    self.transport.write(client_frame(8, payload[:2]))
                    self.transport.close()
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- frames --

    def _on_text(self, payload: bytes) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "update":
            channel, seq = frame["channel"], frame["seq"]
            last = self.last.get(channel)
            if last is None:
                self.errors.append(f"update before snapshot on {channel}")
            elif seq != last + 1:
                if seq <= last:
                    self.dups += 1
                else:
                    self.gaps += 1
                if len(self.gap_examples) < 3:
                    self.gap_examples.append(f"{channel}: {last} -> {seq}")
            self.last[channel] = seq
            self.updates[channel] = self.updates.get(channel, 0) + 1
            if not self.served.done() and all(self.updates[c] for c in self.channels):
                self.served.set_result(None)
        elif kind == "snapshot" or (kind == "subscribed" and frame.get("resumed")):
            self.last[frame["channel"]] = frame["seq"]
            if not self.synced.done() and all(c in self.last for c in self.channels):
                self.synced.set_result(None)
        elif kind == "error":
            self.errors.append(f"{frame.get('code')}: {frame.get('message')}")
            self._fail(RuntimeError(f"error frame: {frame.get('code')}"))

    def _fail(self, exc: BaseException) -> None:
        for future in (self.opened, self.synced, self.served):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: not every future is awaited

    # -- actions --

    def subscribe(self, resume: dict[str, dict[str, Any]] | None = None) -> None:
        """Subscribe to every channel; ``resume``: per channel, ``{"epoch", "seq"}``."""
        assert self.transport is not None
        for i, channel in enumerate(self.channels, 1):
            request: dict[str, Any] = {"op": "subscribe", "channel": channel, "id": i}
            if resume and channel in resume:
                request["resume"] = resume[channel]
            self.transport.write(client_frame(1, orjson.dumps(request)))

    def keepalive(self) -> None:
        """An unsolicited pong (RFC 6455 allows it): the relay's heartbeat counts it as a
        sign of life, so a reader that does not read is closed as slow, not as silent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(0xA, b""))

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the socket: no close frame (unread data makes the kernel send a RST)."""
        if self.transport is not None:
            self.transport.abort()

    async def close(self, within: float = 10.0) -> None:
        """Close 1000 and wait for the relay's close frame and the end of the connection."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(client_frame(8, (1000).to_bytes(2, "big")))
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()


# -- the steady population: the C load client ------------------------------------------------


class Steady:
    """``count`` connections of loadclient.c, each on ``subs`` channels, never leaving."""

    def __init__(self, count: int, subs: int, channels: list[str], workdir: Path) -> None:
        self.count = count
        self.plan = [
            [channels[(i * subs + j) % len(channels)] for j in range(subs)] for i in range(count)
        ]
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.summary: dict[str, Any] = {}

    async def start(self, port: int) -> None:
        if not self.count:
            return
        binary = build_loadclient(HERE / "loadclient.c", HERE / ".build" / "loadclient")
        plan_file = self.workdir / "steady-plan.txt"
        plan_file.write_text("".join(f"0 {','.join(p)}\n" for p in self.plan))
        self.proc = await asyncio.create_subprocess_exec(
            str(binary), "127.0.0.1", str(port), "/ws", "relay", str(plan_file),
            "500", str(self.workdir / "steady-latency.bin"), "0",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=pinned(None), limit=2**24,
        )  # fmt: skip
        ready = await self._expect("ready", 60 + self.count / 500)
        if ready["ready"] != self.count:
            raise RuntimeError(f"only {ready['ready']} of {self.count} steady clients subscribed")

    async def _expect(self, event: str, seconds: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"load client exited (rc={self.proc.returncode})")
                message: dict[str, Any] = json.loads(raw)
                if message.get("event") == event:
                    return message

    async def stats(self) -> dict[str, Any]:
        """Cumulative since the start: updates, gaps, dups, closes, connections open."""
        if self.proc is None:
            return {"updates": 0, "gaps": 0, "dups": 0, "closes": {}, "open": 0, "errors": 0}
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")  # prints the counters; they are never reset
        await self.proc.stdin.drain()
        return await self._expect("stats", 30)

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


# -- samples and outcomes ------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the steady population was connected
    phase: str
    quiet: bool  # a quiet point: only the steady population connected
    rss_mb: float
    fds: int
    tasks: int
    connections: int
    deliveries_per_s: float
    gaps: int


@dataclass(slots=True)
class Tally:
    """What the episodic clients of one kind saw."""

    launched: int = 0
    served: int = 0
    vanished: int = 0  # left on purpose before being served
    failed: int = 0
    gaps: int = 0
    dups: int = 0
    updates: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    subscribe_ms_max: float = 0.0

    def add(self, client: WsClient) -> None:
        self.gaps += client.gaps
        self.dups += client.dups
        self.updates += sum(client.updates.values())
        for example in client.gap_examples:
            self.note(f"gap {example}")

    def fail(self, why: str) -> None:
        self.failed += 1
        self.note(why)

    def note(self, why: str) -> None:
        if len(self.failures) < 10:
            self.failures.append(why)

    def closed_with(self, code: int | None) -> None:
        label = "none" if code is None else str(code)
        self.close_codes[label] = self.close_codes.get(label, 0) + 1


# -- the soak ----------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="soak-"))
        self.channels = channel_names(args.channels)
        self.redis: RedisServer | None = None
        self.publisher: Publisher | None = None
        self.pub_task: asyncio.Task[None] | None = None
        self.relay: RelayProcess | None = None
        self.steady = Steady(args.steady, args.subs, self.channels, self.workdir)
        self.session: aiohttp.ClientSession | None = None
        self.phase = "setup"
        self.samples: list[Sample] = []
        self.churn = Tally()
        self.slow = Tally()
        self.storm = Tally()
        self.cycles = 0
        self.t0 = 0.0
        self._last_delivered: tuple[float, float] | None = None
        self._steady_stats: dict[str, Any] = {}
        self.log_end = 0  # relay log lines written by the end of the load
        self._sample_lock = asyncio.Lock()

    # -- setup and teardown --

    async def setup(self) -> None:
        args = self.args
        self.session = scrape_session()
        self.redis = RedisServer()
        self.redis.start()
        self.publisher = Publisher(self.channels, BookPool(args.book_levels, 1000), maxlen=10_000)
        await self.publisher.connect(self.redis.port)
        await self.publisher.init_streams()
        self.publisher.set_rate(args.rate)
        self.pub_task = asyncio.create_task(self.publisher.run(), name="publisher")
        extra = [
            "--slow-consumer-bytes", str(args.slow_consumer_bytes),
            # Long enough for a slow reader to drain its backlog to the close frame after
            # the soak noticed the close: the client side sees the 4000 itself.
            "--slow-close-timeout", "30",
            *args.relay_arg,
        ]  # fmt: skip
        self.relay = RelayProcess(args.relay_cmd, self.redis.url, extra, self.workdir)
        self.relay.launch()
        await self.relay.wait_ready(self.session, self.channels)
        await self.steady.start(self.relay.port)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.steady.stop()
        if self.pub_task is not None:
            self.pub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pub_task
        if self.publisher is not None:
            self.publisher.close()
        if self.relay is not None:
            self.relay.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.session is not None:
            await self.session.close()

    def check_running(self) -> None:
        assert self.relay is not None
        if not self.relay.alive():
            raise RuntimeError(f"the relay exited (see {self.relay.log})")
        task = self.pub_task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise RuntimeError(f"publisher failed: {task.exception()!r}")

    # -- sampling --

    async def metrics(self) -> dict[str, float]:
        assert self.relay is not None
        assert self.session is not None
        async with self._sample_lock:
            return await scrape(self.session, self.relay)

    async def sample(self, quiet: bool = False) -> Sample:
        assert self.relay is not None
        assert self.session is not None
        async with self._sample_lock:
            self.check_running()
            now = time.monotonic()
            # /proc first: the scrape's own connection is not open yet. The task count
            # includes the scrape's handler, the same +1 every time.
            rss, fds = proc_rss(self.relay.pid), proc_fds(self.relay.pid)
            metrics = await scrape(self.session, self.relay)
            self._steady_stats = await self.steady.stats()
            delivered = metrics.get("relay_frames_delivered_total", 0.0)
            rate = 0.0
            if self._last_delivered is not None:
                then, count = self._last_delivered
                rate = (delivered - count) / max(now - then, 1e-6)
            self._last_delivered = (now, delivered)
            sample = Sample(
                t=round(now - self.t0, 2),
                phase="quiet" if quiet else self.phase,
                quiet=quiet,
                rss_mb=round(rss / 2**20, 2),
                fds=fds,
                tasks=int(metrics.get("relay_event_loop_tasks", -1)),
                connections=int(metrics.get("relay_connections", -1)),
                deliveries_per_s=round(rate, 1),
                gaps=self.gaps(),
            )
            self.samples.append(sample)
        print(_sample_row(sample), flush=True)
        return sample

    def gaps(self) -> int:
        st = self._steady_stats
        return (
            int(st.get("gaps", 0)) + int(st.get("dups", 0))
            + sum(t.gaps + t.dups for t in (self.churn, self.slow, self.storm))
        )  # fmt: skip

    async def sampler(self) -> None:
        while True:
            await asyncio.sleep(self.args.interval)
            await self.sample()

    async def quiet_point(self) -> Sample:
        """Wait until only the steady population is connected and fds settled, then sample."""
        assert self.relay is not None
        assert self.session is not None
        self.phase = "quiesce"
        deadline = time.monotonic() + 60
        previous: tuple[float, ...] = ()
        while time.monotonic() < deadline:
            fds = proc_fds(self.relay.pid)
            metrics = await self.metrics()
            now = (fds, metrics.get("relay_event_loop_tasks", -1.0))
            # Settled: the episodic clients' connections, fds and tasks are all gone, and
            # two reads half a second apart agree (closing handlers finish after their fd).
            if metrics.get("relay_connections") == self.args.steady and now == previous:
                break
            previous = now
            await asyncio.sleep(0.5)
        sample = await self.sample(quiet=True)
        self.phase = "steady"
        return sample

    # -- episodes --

    async def churn_for(self, seconds: float) -> None:
        """``--churn-rate`` clients/s for ``seconds``; each one's fate decided by its number."""
        rate = self.args.churn_rate
        if rate <= 0:
            await asyncio.sleep(seconds)
            return
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while i < due:
                channels = self.rng.sample(self.channels, self.rng.randint(1, 3))
                task = asyncio.create_task(self._churn_one(i, channels))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(0.02)
        if tasks:
            await asyncio.gather(*tasks)

    async def _churn_one(self, i: int, channels: list[str]) -> None:
        assert self.relay is not None
        tally = self.churn
        tally.launched += 1
        mode = ("clean", "abrupt", "vanish")[i % 3]
        try:
            client = await WsClient.connect(self.relay.port, channels)
        except (OSError, TimeoutError) as exc:
            tally.fail(f"churn connect: {exc!r}")
            return
        client.subscribe()
        if mode == "vanish":
            # Gone while the relay may be writing its snapshots.
            await asyncio.sleep(self.rng.uniform(0, 0.02))
            client.abort()
            tally.vanished += 1
            return
        try:
            async with asyncio.timeout(30):
                await client.served
            tally.served += 1
            await asyncio.sleep(self.rng.uniform(0, self.args.churn_hold))
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            tally.fail(f"churn client {channels}: {exc!r} {client.errors[:2]}")
        finally:
            if mode == "clean":
                await client.close()
            else:
                client.abort()
            tally.add(client)

    async def slow_readers(self) -> None:
        """Slow readers on every channel stop reading; the relay must close them 4000.

        Each one resumes every channel from far back in the relay's history (a client
        catching up after a reconnect), so its backlog passes the relay's threshold within
        a second, beyond what the kernel's socket buffers take; then it reads nothing but
        says it is alive. Once the relay flagged them all, they read again and must find a
        close frame with code 4000 at the end of their backlog.
        """
        assert self.relay is not None
        assert self.session is not None
        assert self.publisher is not None
        count = self.args.slow
        if count <= 0:
            return
        tally = self.slow
        before = (await self.metrics()).get("relay_slow_consumer_closes_total", 0.0)
        epoch, seqs = self.publisher.epoch, self.publisher.seqs
        resume = {
            channel: {"epoch": epoch, "seq": max(1, seqs[i] - 1900)}
            for i, channel in enumerate(self.channels)
        }
        clients: list[WsClient] = []
        started = time.monotonic()
        try:
            for _ in range(count):
                tally.launched += 1
                try:
                    client = await WsClient.connect(self.relay.port, self.channels, rcvbuf=4096)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    tally.fail(f"slow reader connect: {exc!r}")
                    continue
                client.pause()  # before the first byte of the answers
                client.subscribe(resume)
                clients.append(client)
            # The relay flags each one once its unsent backlog passes the threshold.
            deadline = time.monotonic() + 120
            flagged = 0.0
            while time.monotonic() < deadline:
                metrics = await self.metrics()
                flagged = metrics.get("relay_slow_consumer_closes_total", 0.0) - before
                if flagged >= len(clients):
                    break
                for client in clients:
                    client.keepalive()
                await asyncio.sleep(0.25)
            tally.subscribe_ms_max = max(
                tally.subscribe_ms_max, round((time.monotonic() - started) * 1000, 1)
            )
            for client in clients:
                client.resume()  # drain the backlog; the close frame is at its end
            for client in clients:
                try:
                    async with asyncio.timeout(30):
                        await asyncio.shield(client.closed)
                except TimeoutError:
                    tally.note("slow reader not closed by the relay within 30 s")
                tally.closed_with(client.close_code)
                if client.close_code == 4000:
                    tally.served += 1
                else:
                    tally.fail(f"slow reader ended with close code {client.close_code}")
        finally:
            for client in clients:
                client.abort()
                tally.add(client)

    async def subscribe_storm(self) -> None:
        """``--storm`` clients connect and subscribe within one second; all must be served."""
        assert self.relay is not None
        count = self.args.storm
        if count <= 0:
            return
        tally = self.storm
        port = self.relay.port

        async def one(i: int) -> WsClient | None:
            await asyncio.sleep(i / count)  # spread over one second
            tally.launched += 1
            started = time.monotonic()
            channel = self.channels[i % len(self.channels)]
            try:
                client = await WsClient.connect(port, [channel], within=60)
            except (OSError, TimeoutError) as exc:
                tally.fail(f"storm connect: {exc!r}")
                return None
            client.subscribe()
            try:
                async with asyncio.timeout(60):
                    await client.synced
                    ms = (time.monotonic() - started) * 1000
                    tally.subscribe_ms_max = max(tally.subscribe_ms_max, round(ms, 1))
                    await client.served
                tally.served += 1
            except (TimeoutError, ConnectionError, RuntimeError) as exc:
                tally.fail(f"storm client {channel}: {exc!r} {client.errors[:2]}")
            return client

        clients = [c for c in await asyncio.gather(*(one(i) for i in range(count))) if c]
        self.phase = "storm peak"
        await self.sample()  # every storm client connected: the peak the chart should show
        # Everybody leaves together: half with a close handshake, half by dropping the socket.
        await asyncio.gather(*(c.close() for c in clients[::2]))
        for client in clients[1::2]:
            client.abort()
        for client in clients:
            tally.add(client)

    async def cycle(self) -> None:
        """Churn for the whole active part; slow readers, then a storm, within it."""
        args = self.args
        self.phase = "churn"
        churn = asyncio.create_task(self.churn_for(args.cycle))
        try:
            await asyncio.sleep(min(2.0, args.cycle / 10))
            self.phase = "churn+slow"
            await self.slow_readers()
            self.phase = "churn+storm"
            await self.subscribe_storm()
            self.phase = "churn"
            await churn
        finally:
            churn.cancel()
        self.cycles += 1
        await self.quiet_point()

    async def run(self) -> dict[str, Any]:
        args = self.args
        print(
            f"soak: {args.duration:.0f} s, {args.steady} steady clients on {args.subs} of "
            f"{args.channels} channels, {args.rate:g} updates/s; per cycle of {args.cycle:g} s: "
            f"churn {args.churn_rate:g}/s, {args.slow} slow readers, a storm of {args.storm}",
            flush=True,
        )
        await self.setup()
        assert self.relay is not None
        self.t0 = time.monotonic()
        print(_SAMPLE_HEADER, flush=True)
        self.phase = "steady"
        await self.quiet_point()  # before any episode: the relay at its starting size
        sampler = asyncio.create_task(self.sampler(), name="sampler")
        try:
            # Start a cycle while it fits in the duration (as long as the last one took).
            took = args.cycle + 5
            while time.monotonic() - self.t0 + took <= args.duration:
                began = time.monotonic()
                await self.cycle()
                took = time.monotonic() - began
            self.check_running()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        steady = await self.steady.stats()
        metrics = await self.metrics()
        self.log_end = self.relay.log_lines()
        return self.result(steady, metrics)

    def result(self, steady: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
        assert self.relay is not None
        published = self.publisher.stats() if self.publisher else {}
        return {
            "config": {k: v for k, v in vars(self.args).items() if k not in ("out", "chart")},
            "cycles": self.cycles,
            "samples": [asdict(s) for s in self.samples],
            "steady": {
                "clients": self.args.steady,
                "open_at_end": steady.get("open", 0),
                "updates": steady.get("updates", 0),
                "gaps": steady.get("gaps", 0),
                "dups": steady.get("dups", 0),
                "closes": steady.get("closes", {}),
                "errors": steady.get("errors", 0),
                "gap_examples": steady.get("gap_examples", []),
            },
            "churn": asdict(self.churn),
            "slow": asdict(self.slow),
            "storm": asdict(self.storm),
            "relay": {
                "slow_consumer_closes": metrics.get("relay_slow_consumer_closes_total", 0.0),
                "closes_4000": metrics.get('relay_closes_total{code="4000"}', 0.0),
                "connections_accepted": metrics.get("relay_connections_accepted_total", 0.0),
                "frames_delivered": metrics.get("relay_frames_delivered_total", 0.0),
                "source_resyncs": sum(
                    v for k, v in metrics.items() if k.startswith("relay_source_resyncs_total")
                ),
                "log": self.relay.log_problems(),
                "log_file": str(self.relay.log),
            },
            "publisher": published,
        }


# -- verdict -----------------------------------------------------------------------------------


def _window(values: list[float]) -> tuple[float, float]:
    """Medians of the first and the last quarter (at least one point each)."""
    k = max(1, len(values) // 4)
    return statistics.median(values[:k]), statistics.median(values[-k:])


def _slope_per_min(points: Iterable[tuple[float, float]]) -> float:
    pts = list(points)
    if len(pts) < 2:
        return 0.0
    xs = [t / 60 for t, _ in pts]
    ys = [v for _, v in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def verdict(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Checks, each ``{"ok": bool, "detail": str}``; ``ok`` overall when all pass."""
    samples = [Sample(**s) for s in result["samples"]]
    quiet = [s for s in samples if s.quiet]
    # quiet[0] is before the first cycle; quiet[i] ends cycle i.
    measured = quiet[args.warmup_cycles :]
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}

    check(
        "quiet points",
        len(measured) >= 2,
        f"{len(measured)} after {args.warmup_cycles} warm-up cycle(s) (need 2)",
    )
    if len(measured) >= 2:
        base, last = measured[0], measured[-1]
        conns = {s.connections for s in measured}
        check("like for like", conns == {args.steady}, f"connections at quiet points: {conns}")
        rss = [s.rss_mb for s in measured]
        first_w, last_w = _window(rss)
        allowed = max(first_w * args.rss_tolerance_pct / 100, args.rss_tolerance_mb)
        slope = _slope_per_min((s.t, s.rss_mb) for s in measured)
        check(
            "rss flat",
            last_w - first_w <= allowed,
            f"{first_w:.1f} -> {last_w:.1f} MB (first vs last quiet window; allowed +{allowed:.1f}"
            f" MB), fit {slope:+.3f} MB/min",
        )
        worst_fds = max(s.fds for s in measured[1:])
        check(
            "fds flat",
            worst_fds - base.fds <= args.fd_tolerance and last.fds - base.fds <= args.fd_tolerance,
            f"baseline {base.fds}, last {last.fds}, max {worst_fds} (allowed +{args.fd_tolerance})",
        )
        worst_tasks = max(s.tasks for s in measured[1:])
        check(
            "tasks flat",
            worst_tasks - base.tasks <= args.task_tolerance
            and last.tasks - base.tasks <= args.task_tolerance,
            f"baseline {base.tasks}, last {last.tasks}, max {worst_tasks} "
            f"(allowed +{args.task_tolerance})",
        )
    steady = result["steady"]
    gaps = steady["gaps"] + steady["dups"]
    gaps += sum(result[k]["gaps"] + result[k]["dups"] for k in ("churn", "slow", "storm"))
    check("zero gaps", gaps == 0, f"{gaps} gaps/dups {steady['gap_examples'][:3]}")
    check(
        "steady clients stayed",
        steady["open_at_end"] == args.steady and not steady["closes"],
        f"{steady['open_at_end']} of {args.steady} open, closes {steady['closes']}, "
        f"{steady['updates']} updates",
    )
    churn = result["churn"]
    check(
        "churned clients served",
        churn["failed"] == 0 and churn["served"] + churn["vanished"] == churn["launched"],
        f"{churn['served']} served + {churn['vanished']} vanished of {churn['launched']}; "
        f"{churn['failed']} failed {churn['failures'][:3]}",
    )
    storm = result["storm"]
    check(
        "storm clients served",
        storm["failed"] == 0 and storm["served"] == storm["launched"],
        f"{storm['served']} of {storm['launched']} in {result['cycles']} storms, slowest "
        f"snapshot {storm['subscribe_ms_max']:.0f} ms; {storm['failed']} failed "
        f"{storm['failures'][:3]}",
    )
    slow = result["slow"]
    relay = result["relay"]
    check(
        "slow readers closed 4000",
        slow["failed"] == 0
        and slow["served"] == slow["launched"]
        and relay["slow_consumer_closes"] == slow["launched"],
        f"{slow['served']} of {slow['launched']} saw 4000 (codes {slow['close_codes']}); "
        f"relay counted {relay['slow_consumer_closes']:.0f} slow-consumer closes",
    )
    log = relay["log"]
    check(
        "relay log clean",
        log["error_count"] == 0,
        f"{log['error_count']} errors {log['errors'][:2]}, warnings {log['warnings']}",
    )
    notes = []
    shutdown = relay.get("shutdown_log") or {}
    if shutdown.get("error_count"):
        notes.append(
            f"relay shutdown (SIGTERM after the load): {shutdown['error_count']} errors "
            f"{shutdown['errors'][:2]}"
        )
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks, "notes": notes}


# -- output ------------------------------------------------------------------------------------

_SAMPLE_HEADER = (
    f"{'t s':>7} {'phase':<12} {'rss MB':>7} {'fds':>5} {'tasks':>5} {'conns':>5} "
    f"{'deliv/s':>8} {'gaps':>4}"
)


def _sample_row(s: Sample) -> str:
    return (
        f"{s.t:7.1f} {s.phase:<12} {s.rss_mb:7.1f} {s.fds:5d} {s.tasks:5d} {s.connections:5d} "
        f"{s.deliveries_per_s:8.0f} {s.gaps:4d}"
    )


def markdown(result: dict[str, Any], rows: int = 12) -> str:
    """The quiet points (at most ``rows``, evenly spread, first and last kept) as a table."""
    quiet = [Sample(**s) for s in result["samples"] if s["quiet"]]
    if len(quiet) > rows:
        picks = sorted({round(i * (len(quiet) - 1) / (rows - 1)) for i in range(rows)})
        quiet = [quiet[i] for i in picks]
    lines = [
        "| time | RSS MB | fds | tasks | connections | deliveries/s (last interval) | gaps |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in quiet:
        minutes, seconds = divmod(int(s.t), 60)
        lines.append(
            f"| {minutes}:{seconds:02d} | {s.rss_mb:.1f} | {s.fds} | {s.tasks} | "
            f"{s.connections} | {s.deliveries_per_s:.0f} | {s.gaps} |"
        )
    return "\n".join(lines)


def print_verdict(result: dict[str, Any]) -> None:
    v = result["verdict"]
    print()
    for name, c in v["checks"].items():
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {name:<26} {c['detail']}")
    for note in v.get("notes", []):
        print(f"note {note}")
    print(f"\nverdict: {'FLAT and clean' if v['ok'] else 'FAILED'}")


def chart(result: dict[str, Any], out: Path) -> bool:
    """RSS, fds, tasks and connections over time, quiet points marked; False without
    matplotlib (the soak itself needs only the relay's dependencies)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [Sample(**s) for s in result["samples"]]
    warm = [s for s in samples if s.quiet][: result["config"]["warmup_cycles"] + 1]
    warm_end = warm[-1].t / 60 if warm else 0.0
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    panels: list[tuple[str, Callable[[Sample], float], str]] = [
        ("relay RSS, MB", lambda s: s.rss_mb, "#1f77b4"),
        ("open fds", lambda s: s.fds, "#2ca02c"),
        ("asyncio tasks", lambda s: s.tasks, "#d62728"),
        ("connections", lambda s: s.connections, "#9467bd"),
    ]
    for ax, (label, get, color) in zip(axes, panels, strict=True):
        ax.plot([s.t / 60 for s in samples], [get(s) for s in samples], color=color, lw=0.9)
        quiet = [s for s in samples if s.quiet]
        ax.plot([s.t / 60 for s in quiet], [get(s) for s in quiet], "o", color="black", ms=3)
        ax.axvspan(0, warm_end, color="gray", alpha=0.12)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    cfg = result["config"]
    axes[0].set_title(
        f"relay soak: {cfg['steady']} steady clients, {cfg['rate']:g} upd/s; per "
        f"{cfg['cycle']:g} s cycle churn {cfg['churn_rate']:g}/s, {cfg['slow']} slow readers, "
        f"storm of {cfg['storm']} (dots: quiet points; shaded: warm-up)",
        fontsize=9,
    )
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


# -- CLI ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="soak.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("load")
    g.add_argument("--duration", type=float, default=1200, help="seconds (default 1200)")
    g.add_argument("--rate", type=float, default=500, help="updates/s published (default 500)")
    g.add_argument("--channels", type=int, default=10, help="channels (default 10)")
    g.add_argument("--steady", type=int, default=200, help="steady subscribers (default 200)")
    g.add_argument("--subs", type=int, default=1, help="channels per steady one (default 1)")
    g.add_argument("--book-levels", type=int, default=100, help="levels a side (default 100)")
    g.add_argument(
        "--cycle", type=float, default=40, help="seconds of churn per cycle (default 40)"
    )
    g.add_argument(
        "--churn-rate", type=float, default=20, help="churned clients per second (default 20)"
    )
    g.add_argument(
        "--churn-hold",
        type=float,
        default=1.0,
        help="a served churned client stays up to this many seconds (default 1)",
    )
    g.add_argument("--slow", type=int, default=10, help="slow readers per cycle (default 10)")
    g.add_argument(
        "--storm", type=int, default=300, help="clients of each cycle's storm (default 300)"
    )
    g.add_argument(
        "--slow-consumer-bytes",
        type=int,
        default=256 * 1024,
        help="the relay's --slow-consumer-bytes (default 262144: slow readers are caught "
        "within seconds)",
    )
    g.add_argument("--seed", type=int, default=1, help="churn's random choices (default 1)")
    v = p.add_argument_group("verdict")
    v.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    v.add_argument(
        "--warmup-cycles",
        type=int,
        default=2,
        help="cycles left out of the verdict: allocator pools, Redis connections and "
        "buffers reach their working size (default 2)",
    )
    v.add_argument(
        "--rss-tolerance-pct",
        type=float,
        default=10,
        help="RSS growth allowed from the first to the last quiet window, %% (default 10)",
    )
    v.add_argument(
        "--rss-tolerance-mb",
        type=float,
        default=8,
        help="... or this many MB, whichever is larger (default 8)",
    )
    v.add_argument(
        "--fd-tolerance",
        type=int,
        default=2,
        help="fds a quiet point may have above the first measured one (default 2)",
    )
    v.add_argument(
        "--task-tolerance",
        type=int,
        default=2,
        help="tasks a quiet point may have above the first measured one (default 2)",
    )
    h = p.add_argument_group("harness")
    h.add_argument(
        "--relay-cmd",
        default=str(REPO / ".venv" / "bin" / "relay"),
        help="the relay executable (default .venv/bin/relay)",
    )
    h.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        help="extra argument for `relay serve`, repeatable",
    )
    h.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result (default scripts/bench/results/soak-<time>.json)",
    )
    h.add_argument(
        "--chart", type=Path, default=None, help="PNG chart (needs matplotlib; default none)"
    )
    return p


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    # Ctrl-C and SIGTERM cancel the soak; ``close`` stops everything it started.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    soak = Soak(args)
    try:
        async with asyncio.timeout(args.duration + 300):
            result = await soak.run()
    finally:
        await soak.close()
    result["workdir"] = str(soak.workdir)
    if soak.relay is not None:
        # Reported apart: the verdict is about the relay under load, not its shutdown.
        result["relay"]["shutdown_log"] = soak.relay.log_problems(soak.log_end)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        import uvloop

        result = uvloop.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    result["started"] = started
    result["verdict"] = verdict(result, args)
    out = args.out or HERE / "results" / f"soak-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\nquiet points:\n" + markdown(result))
    print_verdict(result)
    print(f"\nresults: {out}")
    if args.chart is not None:
        print(f"chart: {args.chart}" if chart(result, args.chart) else "chart: needs matplotlib")
    return 0 if result["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
