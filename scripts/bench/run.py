"""Fanout benchmark of the relay against a raw baseline, a naive aiohttp relay and nchan.

Every run starts its own redis-server (free port, ``--save ''``), the target, a publisher
and the load-client processes on 127.0.0.1, measures one window, prints a table, writes a
JSON result file, and stops everything it started (also on Ctrl-C, SIGTERM or an error).
The target is pinned to ``--target-cpus``; redis, the publisher and the load clients to
``--load-cpus``.

    .venv/bin/python scripts/bench/run.py run --target relay,baseline,naive
    .venv/bin/python scripts/bench/run.py sweep --target relay
    .venv/bin/python scripts/bench/run.py report scripts/bench/results/*.json

See docs/performance.md for the scenarios and what every column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from common import (
    RedisServer,
    build_loadclient,
    cpu_jiffies,
    machine,
    parse_cpus,
    peak_rss,
    percentiles,
    pinned,
    sample_tree,
    stop_process,
    wait_port,
)
from publisher import BookPool, Publisher, channel_names

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGETS = ("relay", "baseline", "naive", "nchan")
PCTS = (50, 90, 99, 99.9)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def _http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_target(
    name: str, args: argparse.Namespace, redis: RedisServer, channels: list[str], workdir: Path
) -> Target:
    port = _free_port()
    log = workdir / f"{name}.log"
    cpus = parse_cpus(args.target_cpus) if args.target_cpus else None
    python = sys.executable
    if name == "relay":
        cmd = [
            args.relay_cmd,
            "serve",
            "--port",
            str(port),
            "--redis",
            redis.url,
            *args.relay_arg,
        ]
    elif name in ("baseline", "naive"):
        cmd = [
            python,
            str(HERE / "targets" / f"{name}.py"),
            "--port",
            str(port),
            "--redis",
            redis.url,
            "--channels",
            ",".join(channels),
        ]
    elif name == "nchan":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if (
            not Path(nginx).exists()
            or not Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()
        ):
            raise RuntimeError("nchan target needs: apt-get install -y nginx libnginx-mod-nchan")
        conf = (HERE / "targets" / "nchan.conf.template").read_text()
        for key, value in {"dir": str(workdir), "port": str(port), "buffer": "100"}.items():
            conf = conf.replace("{" + key + "}", value)
        (workdir / "nginx.conf").write_text(conf)
        cmd = [
            nginx,
            "-c",
            str(workdir / "nginx.conf"),
            "-p",
            str(workdir),
            "-e",
            str(workdir / "error.log"),
        ]
    else:
        raise ValueError(name)
    out = log.open("wb")
    # The relay listens on loopback only, through its environment knob (no CLI flag beyond
    # --port and --redis is relied on; an unknown RELAY_* variable is simply ignored).
    # Every load client connects from 127.0.0.1: the per-address connection limits
    # (docs/limits.md) are off, and the global cap is left to the benchmark's own size.
    env = {
        **os.environ,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_MAX_CONNECTIONS": "0",
        "RELAY_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "RELAY_CONNECT_RATE": "0",
    }
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        preexec_fn=pinned(cpus),
    )
    out.close()
    target = Target(name, port, proc, log, workdir)
    try:
        wait_port(port, 30.0, proc)
        deadline = time.monotonic() + 30
        while name == "relay" and time.monotonic() < deadline:
            status, body = _http_get(port, "/channels")
            live = {c["channel"] for c in json.loads(body) if c["live"]} if status == 200 else set()
            if set(channels) <= live and _http_get(port, "/readyz")[0] == 200:
                break
            time.sleep(0.1)
        else:
            if name == "relay":
                raise TimeoutError("relay did not report every channel live within 30 s")
    except BaseException:
        stop_process(proc)
        raise
    return target


def _free_port() -> int:
    from common import free_port

    return free_port()


def problems_in_log(target: Target, limit: int = 8) -> dict[str, Any]:
    """Warnings and errors the target logged (relay: JSON lines; others: any text)."""
    counts: Counter[str] = Counter()
    examples: list[str] = []
    paths = [target.log]
    if target.name == "nchan":
        paths.append(target.workdir / "error.log")
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            key = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("level") in ("warning", "error", "critical"):
                        key = f"{event['level']}: {event.get('event')}"
            elif any(w in line.lower() for w in ("error", "warn", "traceback", "exception")):
                key = line[:160]
            if key:
                counts[key] += 1
                if len(examples) < limit:
                    examples.append(line[:400])
    return {"counts": dict(counts), "examples": examples}


def relay_metrics(port: int) -> dict[str, float]:
    """The relay's counters that tell something went wrong (and deliveries, to cross-check)."""
    wanted = (
        "relay_frames_delivered_total",
        "relay_slow_consumer_closes_total",
        "relay_closes_total",
        "relay_client_errors_total",
        "relay_source_resyncs_total",
        "relay_malformed_entries_total",
        "relay_redis_errors_total",
        "relay_connections ",
        "relay_snapshots_encoded_total",
        "relay_snapshots_served_total",
    )
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        _, body = _http_get(port, "/metrics", timeout=5)
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            if any(line.startswith(w.strip()) for w in wanted):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


# -- load clients ---------------------------------------------------------------------------


@dataclass
class LoadProc:
    proc: asyncio.subprocess.Process
    latency_file: Path
    slow: int

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, event: str, seconds: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"load client exited (rc={self.proc.returncode})")
                message: dict[str, Any] = json.loads(raw)
                if message.get("event") == event:
                    return message


def plan_connections(
    args: argparse.Namespace, channels: list[str]
) -> tuple[list[list[str]], list[bool]]:
    """Channels of every connection (spread evenly) and which ones are slow readers."""
    n, k, kk = args.clients, args.subs, len(channels)
    slow_idx = {i * n // args.slow for i in range(args.slow)} if args.slow else set()
    slow_subs = min(args.slow_subs or kk, kk)
    plan = []
    for i in range(n):
        count = slow_subs if i in slow_idx else k
        plan.append([channels[(i * k + j) % kk] for j in range(count)])
    return plan, [i in slow_idx for i in range(n)]


def build_c_client() -> Path:
    """Compile loadclient.c once (cc -O2) into scripts/bench/.build/; rebuilt when changed."""
    try:
        return build_loadclient(HERE / "loadclient.c", HERE / ".build" / "loadclient")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: use --client picows") from exc


async def start_load(
    args: argparse.Namespace,
    target: Target,
    plan: list[list[str]],
    slow: list[bool],
    workdir: Path,
    *,
    tag: str = "",
    connect_rate: float | None = None,
) -> tuple[list[LoadProc], dict[str, Any]]:
    rate = connect_rate or args.connect_rate
    procs: list[LoadProc] = []
    nprocs = max(1, min(args.procs, len(plan)))
    url = f"ws://127.0.0.1:{target.port}" + ("/sub" if target.name == "nchan" else "/ws")
    binary = build_c_client() if args.client == "c" else None
    for p in range(nprocs):
        mine = list(range(p, len(plan), nprocs))
        latency_file = workdir / f"latency-{tag}{p}.bin"
        if binary is not None:
            plan_file = workdir / f"plan-{tag}{p}.txt"
            plan_file.write_text("".join(f"{int(slow[i])} {','.join(plan[i])}\n" for i in mine))
            cmd = [
                str(binary),
                "127.0.0.1",
                str(target.port),
                "/sub" if target.name == "nchan" else "/ws",
                "nchan" if target.name == "nchan" else "relay",
                str(plan_file),
                str(rate / nprocs),
                str(latency_file),
                str(args.slow_rcvbuf),
            ]
        else:
            config = {
                "url": url,
                "nchan": target.name == "nchan",
                "connections": [plan[i] for i in mine],
                "slow": [slow[i] for i in mine],
                "connect_rate": rate / nprocs,
                "latency_file": str(latency_file),
                "index_base": p * 1_000_000,
                "slow_rcvbuf": args.slow_rcvbuf,
            }
            cmd = [sys.executable, str(HERE / "loadclient.py"), json.dumps(config)]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=pinned(None),
            limit=2**24,
        )
        procs.append(LoadProc(proc, latency_file, sum(slow[i] for i in mine)))
    connect_timeout = 60 + len(plan) / max(rate, 1)
    readies = await asyncio.gather(*(lp.expect("ready", connect_timeout) for lp in procs))
    subscribe_ms = [ms for r in readies for ms in r["subscribe_ms"]]
    sub = percentiles(subscribe_ms, (50, 99, 100))
    summary = {
        "connected": sum(r["connected"] for r in readies),
        "ready": sum(r["ready"] for r in readies),
        "connect_seconds": max(r["connect_seconds"] for r in readies),
        "subscribe_ms": {"p50": sub[0], "p99": sub[1], "max": sub[2]},
        "connect_failures": sum(sum(r["closes"].values()) for r in readies),
    }
    return procs, summary


async def stop_load(procs: list[LoadProc]) -> None:
    for lp in procs:
        with contextlib.suppress(Exception):
            await lp.send("quit")
    for lp in procs:
        try:
            async with asyncio.timeout(5):
                await lp.proc.wait()
        except (TimeoutError, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                lp.proc.kill()
            await lp.proc.wait()


# -- one measurement window -------------------------------------------------------------------


@dataclass
class Window:
    seconds: float
    stats: list[dict[str, Any]]
    latencies_us: np.ndarray[Any, Any]
    target_cpu: float
    peak_rss: int
    sent: int
    alive: bool
    profile: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def measure(
    args: argparse.Namespace,
    target: Target,
    procs: list[LoadProc],
    publisher: Publisher | None,
    seconds: float,
    profile_to: Path | None = None,
) -> Window:
    spy: subprocess.Popen[bytes] | None = None
    if profile_to is not None:
        spy = start_py_spy(target.pid, seconds, profile_to)
    await asyncio.gather(*(lp.send("start") for lp in procs))
    await asyncio.gather(*(lp.expect("started", 10) for lp in procs))
    load_cpus = parse_cpus(args.load_cpus) if args.load_cpus else set(range(os.cpu_count() or 1))
    jiffies_before = cpu_jiffies(load_cpus)
    before = sample_tree(target.pid)
    sent_before = publisher.sent if publisher else 0
    started = time.monotonic()
    rss_peak = before.rss
    while time.monotonic() - started < seconds:
        await asyncio.sleep(0.5)
        rss_peak = max(rss_peak, sample_tree(target.pid).rss)
        if not target.alive():
            break
    after = sample_tree(target.pid)
    busy, total = (a - b for a, b in zip(cpu_jiffies(load_cpus), jiffies_before, strict=True))
    sent = (publisher.sent if publisher else 0) - sent_before
    wall = time.monotonic() - started
    await asyncio.gather(*(lp.send("stop") for lp in procs))
    stats = list(await asyncio.gather(*(lp.expect("stats", 30) for lp in procs)))
    latencies = np.concatenate(
        [np.fromfile(lp.latency_file, dtype=np.int64) for lp in procs]
        or [np.zeros(0, dtype=np.int64)]
    )
    profile = None
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
        stop_process(spy)
        profile = summarize_profile(profile_to) if profile_to else None
    return Window(
        seconds=wall,
        stats=stats,
        latencies_us=latencies,
        target_cpu=after.cpu - before.cpu,
        peak_rss=max(rss_peak, after.rss, peak_rss(target.pid)),
        sent=sent,
        alive=target.alive(),
        profile=profile,
        extra={"load_core_pct": round(100 * busy / total, 1) if total else None},
    )


def start_py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(math.ceil(seconds)),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pinned(None),
    )


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Own (leaf) and total time per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    if not path.exists():
        return {"samples": 0, "own": [], "total": []}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        # "func (path:line)" -> "func (path)": time per function rather than per line.
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        own[frames[-1]] += count
        own_lines[stack.rsplit(";", 1)[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return {
        "samples": samples,
        "own": [(f, c, round(100 * c / samples, 1)) for f, c in own.most_common(top)],
        "total": [(f, c, round(100 * c / samples, 1)) for f, c in total.most_common(top)],
        "own_lines": [(f, c, round(100 * c / samples, 1)) for f, c in own_lines.most_common(top)],
    }


def summarize(
    args: argparse.Namespace,
    target: Target,
    rate: float,
    window: Window,
    load_summary: dict[str, Any],
    rss_idle: int,
    n_subscriptions: int,
    nchannels: int,
) -> dict[str, Any]:
    s = window.stats
    updates = sum(x["updates"] for x in s)
    frames = sum(x["frames"] for x in s)
    client_cpu = sum(x["cpu"] for x in s)
    wall = window.seconds
    published = window.sent / wall
    expected = published / nchannels * n_subscriptions
    lat = percentiles(window.latencies_us / 1000.0, (*PCTS, 100))
    closes: Counter[str] = Counter()
    for x in s:
        closes.update(x["closes"])
    clients = args.clients
    return {
        "target": target.name,
        "clients": clients,
        "channels": nchannels,
        "subs": args.subs,
        "slow": args.slow,
        "rate": rate,
        "published_per_s": round(published, 1),
        "delivered_per_s": round(updates / wall, 1),
        "expected_per_s": round(expected, 1),
        "delivery_ratio": round(updates / wall / expected, 4) if expected else None,
        "latency_ms": dict(zip(["p50", "p90", "p99", "p99.9", "max"], lat, strict=True)),
        "gaps": sum(x["gaps"] for x in s),
        "missing": sum(x["missing"] for x in s),
        "dups": sum(x["dups"] for x in s),
        "gap_examples": [e for x in s for e in x["gap_examples"]][:5],
        "errors": sum(x["errors"] for x in s),
        "snapshots": sum(x["snapshots"] for x in s),
        "closes": dict(closes),
        "open_at_end": sum(x["open"] for x in s),
        "target_cpu_s": round(window.target_cpu, 3),
        "target_cpu_pct": round(100 * window.target_cpu / wall, 1),
        "cpu_us_per_delivery": round(1e6 * window.target_cpu / updates, 3) if updates else None,
        "peak_rss_mb": round(window.peak_rss / 2**20, 1),
        "idle_rss_mb": round(rss_idle / 2**20, 1),
        "rss_per_conn_kb": round((window.peak_rss - rss_idle) / 1024 / clients, 2)
        if clients
        else None,
        "client_us_per_frame": round(1e6 * client_cpu / frames, 3) if frames else None,
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "window_s": round(wall, 2),
        "target_alive": window.alive,
        **load_summary,
        **window.extra,
    }


# -- scenarios ---------------------------------------------------------------------------------


class Bench:
    """One target's setup: redis, publisher, target, load clients; torn down in ``close``."""

    def __init__(self, args: argparse.Namespace, target_name: str) -> None:
        self.args = args
        self.name = target_name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{target_name}-"))
        self.redis: RedisServer | None = None
        self.publisher: Publisher | None = None
        self.pub_task: asyncio.Task[None] | None = None
        self.target: Target | None = None
        self.procs: list[LoadProc] = []
        self.channels = channel_names(args.channels)
        self.load_summary: dict[str, Any] = {}
        self.rss_idle = 0

    async def setup(self, rate: float) -> None:
        args = self.args
        pool = BookPool(args.book_levels, args.pool)
        nchan = self.name == "nchan"
        if not nchan:
            self.redis = RedisServer()
            self.redis.start()
        if nchan:
            self.target = start_target(self.name, args, None, self.channels, self.workdir)  # type: ignore[arg-type]
            self.publisher = Publisher(self.channels, pool, nchan_port=self.target.port)
            await self.publisher.connect(None)
        else:
            assert self.redis is not None
            self.publisher = Publisher(self.channels, pool, maxlen=args.maxlen)
            await self.publisher.connect(self.redis.port)
            await self.publisher.init_streams()
            self.target = start_target(self.name, args, self.redis, self.channels, self.workdir)
        self.publisher.set_rate(rate)
        self.pub_task = asyncio.create_task(self.publisher.run())
        await asyncio.sleep(0.5)
        self.rss_idle = sample_tree(self.target.pid).rss
        plan, slow = plan_connections(args, self.channels)
        self.procs, self.load_summary = await start_load(
            args, self.target, plan, slow, self.workdir
        )
        self.load_summary["mean_diff_bytes"] = round(pool.mean_diff_bytes(), 1)

    def subscriptions(self) -> int:
        plan, slow = plan_connections(self.args, self.channels)
        return sum(len(p) for p, s in zip(plan, slow, strict=True) if not s)

    async def window(
        self, rate: float, seconds: float, profile_to: Path | None = None
    ) -> dict[str, Any]:
        assert self.target is not None
        self.check_publisher()
        win = await measure(self.args, self.target, self.procs, self.publisher, seconds, profile_to)
        self.check_publisher()
        result = summarize(
            self.args,
            self.target,
            rate,
            win,
            self.load_summary,
            self.rss_idle,
            self.subscriptions(),
            len(self.channels),
        )
        if win.profile is not None:
            result["profile"] = win.profile
        if self.publisher is not None:
            result["publisher"] = self.publisher.stats()
        return result

    async def storm(self) -> tuple[list[LoadProc], dict[str, Any]]:
        """``--storm`` connections onto the first channel within a second, mid-window."""
        assert self.target is not None
        args = self.args
        await asyncio.sleep(args.storm_at)
        before = relay_metrics(self.target.port) if self.name == "relay" else {}
        plan = [[self.channels[0]] for _ in range(args.storm)]
        procs, summary = await start_load(
            args,
            self.target,
            plan,
            [False] * args.storm,
            self.workdir,
            tag="storm-",
            connect_rate=float(args.storm),
        )
        await asyncio.gather(*(lp.send("start") for lp in procs))
        await asyncio.gather(*(lp.expect("started", 10) for lp in procs))
        summary["encoded_before"] = before.get("relay_snapshots_encoded_total")
        return procs, summary

    async def storm_result(self, procs: list[LoadProc], summary: dict[str, Any]) -> dict[str, Any]:
        """The storm clients' view at the end of the window, and the relay's encodings."""
        assert self.target is not None
        await asyncio.gather(*(lp.send("stop") for lp in procs))
        stats = list(await asyncio.gather(*(lp.expect("stats", 30) for lp in procs)))
        await stop_load(procs)
        after = relay_metrics(self.target.port) if self.name == "relay" else {}
        before = summary.pop("encoded_before", None)
        encoded = after.get("relay_snapshots_encoded_total")
        closes: Counter[str] = Counter()
        for x in stats:
            closes.update(x["closes"])
        return {
            "clients": self.args.storm,
            "channel": self.channels[0],
            **summary,
            "snapshots": sum(x["snapshots"] for x in stats),
            "gaps": sum(x["gaps"] for x in stats),
            "errors": sum(x["errors"] for x in stats),
            "updates": sum(x["updates"] for x in stats),
            "closes": dict(closes),
            "open_at_end": sum(x["open"] for x in stats),
            "snapshots_encoded": None
            if encoded is None or before is None
            else int(encoded - before),
        }

    def check_publisher(self) -> None:
        task = self.pub_task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise RuntimeError(f"publisher failed: {task.exception()!r}")

    async def finish(self, result: dict[str, Any]) -> None:
        """Slow readers' fate, the target's counters and log problems, into ``result``."""
        assert self.target is not None
        if self.args.slow:
            for lp in self.procs:
                if lp.slow:
                    await lp.send("slow")
            outcomes = [await lp.expect("slow", 15) for lp in self.procs if lp.slow]
            closes: Counter[str] = Counter()
            for o in outcomes:
                closes.update(o["closes"])
            result["slow_readers"] = {
                "count": sum(o["slow"] for o in outcomes),
                "closed_by_target": sum(o["closed"] for o in outcomes),
                "close_codes": dict(closes),
            }
        if self.name == "relay" and self.target.alive():
            result["relay_metrics"] = relay_metrics(self.target.port)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await stop_load(self.procs)
        if self.pub_task is not None:
            self.pub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pub_task
        if self.publisher is not None:
            self.publisher.close()
        if self.target is not None:
            stop_process(self.target.proc, 15)
        if self.redis is not None:
            self.redis.stop()
        for scratch in (*self.workdir.glob("latency-*.bin"), *self.workdir.glob("plan-*.txt")):
            scratch.unlink()

    def log_problems(self) -> dict[str, Any]:
        return problems_in_log(self.target) if self.target else {}


async def run_one(args: argparse.Namespace, name: str) -> dict[str, Any]:
    bench = Bench(args, name)
    try:
        await bench.setup(args.rate)
        await asyncio.sleep(args.warmup)
        storm = asyncio.create_task(bench.storm()) if args.storm else None
        result = await bench.window(args.rate, args.duration, args.py_spy)
        if storm is not None:
            result["storm"] = await bench.storm_result(*await storm)
        await bench.finish(result)
    finally:
        await bench.close()
    result["target_log"] = bench.log_problems()
    result["workdir"] = str(bench.workdir)
    return result


async def sweep_one(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Raise R until deliveries fall behind (or p99 stays over the limit); report the best
    step that delivered everything within the p99 limit.

    Latency is not monotonic in R: where a target turns from one write per update to
    several updates per write (coalescing), p99 has a hump and comes down again at higher
    rates. So a step over the p99 limit does not end the sweep; ``--max-fails`` of them in
    a row do, as do a shortfall in deliveries, a dead target or saturated load CPUs.
    """
    bench = Bench(args, name)
    steps: list[dict[str, Any]] = []
    stop_reason = f"reached --rate-max {args.rate_max:g}"
    try:
        rate = args.rate_start
        fails = 0
        await bench.setup(rate)
        while rate <= args.rate_max:
            assert bench.publisher is not None
            bench.publisher.set_rate(rate)
            await asyncio.sleep(args.step_warmup)
            step = await bench.window(rate, args.step_duration)
            p99 = step["latency_ms"]["p99"]
            ratio = step["delivery_ratio"] or 0.0
            step["ok"] = bool(
                step["target_alive"] and p99 <= args.p99_limit_ms and ratio >= args.min_ratio
            )
            steps.append(step)
            print(_row(step, sweep=True), flush=True)
            fails = 0 if p99 <= args.p99_limit_ms else fails + 1
            if not step["target_alive"]:
                stop_reason = "target died"
            elif ratio < args.min_ratio:
                stop_reason = f"delivered {ratio:.1%} of expected < {args.min_ratio:.0%}"
            elif fails >= args.max_fails:
                stop_reason = f"p99 over {args.p99_limit_ms:g} ms at {fails} rates in a row"
            elif (step["load_core_pct"] or 0) > args.client_bound_pct:
                stop_reason = (
                    f"load CPUs {step['load_core_pct']:.0f}% busy: client-bound, "
                    "the result is a lower bound"
                )
            else:
                rate *= args.rate_factor
                continue
            break
    finally:
        with contextlib.suppress(Exception):
            await bench.finish(steps[-1] if steps else {})
        await bench.close()
    passing = [s for s in steps if s["ok"]]
    best = max(passing, key=lambda s: s["delivered_per_s"]) if passing else None
    return {
        "target": name,
        "mode": "sweep",
        "clients": args.clients,
        "channels": args.channels,
        "subs": args.subs,
        "max_sustained_per_s": best["delivered_per_s"] if best else 0.0,
        "best_rate": best["rate"] if best else None,
        "stop_reason": stop_reason,
        "steps": steps,
        "target_log": bench.log_problems(),
    }


# -- output -------------------------------------------------------------------------------------

COLUMNS = (
    ("target", "target", "{}"),
    ("rate", "R/s", "{:.0f}"),
    ("delivered_per_s", "deliv/s", "{:.0f}"),
    ("delivery_ratio", "ratio", "{:.3f}"),
    ("p50", "p50ms", "{:.2f}"),
    ("p90", "p90ms", "{:.2f}"),
    ("p99", "p99ms", "{:.2f}"),
    ("p99.9", "p999ms", "{:.2f}"),
    ("max", "maxms", "{:.1f}"),
    ("gaps", "gaps", "{}"),
    ("closes_n", "closes", "{}"),
    ("cpu_us_per_delivery", "cpu us/dlv", "{:.2f}"),
    ("target_cpu_pct", "cpu%", "{:.0f}"),
    ("peak_rss_mb", "rss MB", "{:.0f}"),
    ("rss_per_conn_kb", "KB/conn", "{:.1f}"),
    ("client_us_per_frame", "cli us/fr", "{:.2f}"),
    ("client_cpu_pct", "cli%", "{:.0f}"),
    ("load_core_pct", "loadcore%", "{:.0f}"),
    ("sub_p99", "sub p99ms", "{:.0f}"),
)


def _cells(result: dict[str, Any]) -> list[str]:
    flat = {
        **result,
        **result.get("latency_ms", {}),
        "closes_n": sum(result.get("closes", {}).values()),
        "sub_p99": result.get("subscribe_ms", {}).get("p99"),
    }
    out = []
    for key, _, fmt in COLUMNS:
        value = flat.get(key)
        out.append("-" if value is None or value != value else fmt.format(value))
    return out


def _row(result: dict[str, Any], sweep: bool = False) -> str:
    cells = _cells(result)
    line = " ".join(f"{c:>{max(len(h), 8)}}" for c, (_, h, _) in zip(cells, COLUMNS, strict=True))
    if sweep:
        line += "  ok" if result.get("ok") else "  FAIL"
    return line


def header() -> str:
    return " ".join(f"{h:>{max(len(h), 8)}}" for _, h, _ in COLUMNS)


def print_table(results: list[dict[str, Any]]) -> None:
    print(header())
    for r in results:
        print(_row(r))
    for r in results:
        if "storm" in r:
            st = r["storm"]
            print(
                f"  {r['target']} storm: {st['ready']}/{st['clients']} subscribed in "
                f"{st['connect_seconds']:.2f} s, sub p50/p99/max "
                f"{st['subscribe_ms']['p50']:.0f}/{st['subscribe_ms']['p99']:.0f}/"
                f"{st['subscribe_ms']['max']:.0f} ms, later snapshots {st['snapshots']}, "
                f"gaps {st['gaps']}, snapshot encodings {st['snapshots_encoded']}"
            )
        if "slow_readers" in r:
            sr = r["slow_readers"]
            print(
                f"  {r['target']} slow readers: {sr['closed_by_target']}/{sr['count']} "
                f"closed by the target, codes {sr['close_codes']}"
            )


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines)


def chart(results: list[dict[str, Any]], sweeps: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if sweeps else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))
    names = [r["target"] for r in results]
    colors = {"relay": "#1f77b4", "baseline": "#2ca02c", "naive": "#d62728", "nchan": "#9467bd"}
    ax = axes[0]
    x = np.arange(len(results))
    width = 0.2
    for j, p in enumerate(("p50", "p90", "p99", "p99.9")):
        vals = [r["latency_ms"][p] for r in results]
        ax.bar(x + (j - 1.5) * width, vals, width, label=p)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    if results:
        r0 = results[0]
        ax.set_title(
            f"{r0['clients']} clients, {r0['subs']} of {r0['channels']} ch, {r0['rate']:.0f} upd/s"
        )
    ax.legend(fontsize=8)
    ax = axes[1]
    vals = [r["cpu_us_per_delivery"] or 0 for r in results]
    ax.bar(names, vals, color=[colors.get(n, "gray") for n in names])
    ax.set_ylabel("target CPU per delivered update, us")
    ax.set_title("cost per delivery (lower is better)")
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
    if sweeps:
        ax = axes[2]
        for s in sweeps:
            xs = [st["delivered_per_s"] for st in s["steps"]]
            ys = [st["latency_ms"]["p99"] for st in s["steps"]]
            ax.plot(xs, ys, marker="o", label=s["target"], color=colors.get(s["target"]))
        ax.axhline(50, color="gray", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("delivered updates/s (log)")
        ax.set_ylabel("p99 latency, ms (log)")
        s0 = sweeps[0]
        ax.set_title(f"sweep: {s0['clients']} clients, {s0['subs']} of {s0['channels']} ch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def print_profile(profile: dict[str, Any]) -> None:
    for key, what in (("own", "functions by own time"), ("total", "functions by total time")):
        print(f"\npy-spy: {profile['samples']} samples; top {what}:")
        for frame, count, pct in profile[key][:15]:
            print(f"  {pct:5.1f}%  {count:6d}  {frame}")


# -- CLI --------------------------------------------------------------------------------------


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenario")
    g.add_argument(
        "--target",
        default="relay,baseline,naive",
        help="comma-separated targets, run one after the other: "
        f"{', '.join(TARGETS)} (default relay,baseline,naive)",
    )
    g.add_argument("--clients", type=int, default=1000, help="N connections (default 1000)")
    g.add_argument("--channels", type=int, default=10, help="K channels (default 10)")
    g.add_argument(
        "--subs",
        type=int,
        default=1,
        help="k channels each connection subscribes to, spread evenly (default 1)",
    )
    g.add_argument(
        "--slow",
        type=int,
        default=0,
        help="M of the N connections are slow readers: they stop reading once "
        "subscribed and are left out of latency/gap stats (default 0)",
    )
    g.add_argument(
        "--slow-subs",
        type=int,
        default=0,
        help="channels each slow reader subscribes to (default 0 = all K, so that "
        "its backlog grows fast)",
    )
    g.add_argument(
        "--slow-rcvbuf",
        type=int,
        default=4096,
        help="SO_RCVBUF of slow readers' sockets, bytes (default 4096; 0 = OS default)",
    )
    g.add_argument(
        "--book-levels",
        type=int,
        default=100,
        help="price levels per side of every book, i.e. the snapshot's size (default 100)",
    )
    g.add_argument(
        "--pool",
        type=int,
        default=1000,
        help="pre-encoded diffs cycled per channel; the snapshot hash is refreshed "
        "once per cycle (default 1000)",
    )
    g.add_argument("--maxlen", type=int, default=10_000, help="XADD MAXLEN ~ (default 10000)")
    g.add_argument(
        "--connect-rate",
        type=float,
        default=2000,
        help="new connections per second; a subscribe storm is all N within a "
        "second (default 2000)",
    )
    h = p.add_argument_group("harness")
    h.add_argument(
        "--client",
        choices=("c", "picows"),
        default="c",
        help="load client: c (loadclient.c, one epoll loop, compiled on first use) "
        "or picows (loadclient.py, Cython WebSocket on uvloop) (default c)",
    )
    h.add_argument(
        "--procs",
        type=int,
        default=1,
        help="load-client processes, connections split round-robin (default 1)",
    )
    h.add_argument(
        "--target-cpus",
        default="0" if (os.cpu_count() or 1) > 1 else "",
        help="CPUs the target is pinned to (default 0; empty = no pinning)",
    )
    h.add_argument(
        "--load-cpus",
        default="1" if (os.cpu_count() or 1) > 1 else "",
        help="CPUs of redis, publisher, load clients and this script (default 1)",
    )
    h.add_argument(
        "--relay-cmd",
        default=str(REPO / ".venv" / "bin" / "relay"),
        help="the relay executable (default .venv/bin/relay)",
    )
    h.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        help="extra argument for `relay serve`, repeatable (e.g. --relay-arg=--log-level=warning)",
    )
    h.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default scripts/bench/results/<cmd>-<time>.json)",
    )
    h.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="hard limit for the whole command, seconds (default: computed from "
        "the durations, plus 120 s per target)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cmds = top.add_subparsers(dest="command", required=True)
    run = cmds.add_parser("run", help="one measurement per target at a fixed rate")
    add_common(run)
    g = run.add_argument_group("run")
    g.add_argument(
        "--rate",
        type=float,
        default=1000,
        help="R: updates/s published over all K channels, round-robin (default "
        "1000; 0 = idle connections)",
    )
    g.add_argument("--duration", type=float, default=20, help="measured seconds (default 20)")
    g.add_argument(
        "--warmup",
        type=float,
        default=3,
        help="seconds after every client subscribed, before measuring (default 3)",
    )
    g.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="profile the target with py-spy during the window; collapsed stacks "
        "to this file (Python targets only)",
    )
    g.add_argument(
        "--storm",
        type=int,
        default=0,
        help="subscribe storm inside the window: this many more connections subscribe "
        "to the first channel within one second, while the N others are measured; "
        "their subscribe times, snapshots and gaps, and the relay's snapshot "
        "encodings, go to 'storm' in the JSON (default 0)",
    )
    g.add_argument(
        "--storm-at",
        type=float,
        default=3,
        help="seconds into the window when the storm starts (default 3)",
    )

    sweep = cmds.add_parser("sweep", help="raise R until p99 > limit or deliveries fall behind")
    add_common(sweep)
    g = sweep.add_argument_group("sweep")
    g.add_argument("--rate-start", type=float, default=1000, help="first R (default 1000)")
    g.add_argument(
        "--rate-factor", type=float, default=1.5, help="R multiplier between steps (default 1.5)"
    )
    g.add_argument("--rate-max", type=float, default=100_000, help="last R tried (default 1e5)")
    g.add_argument(
        "--step-duration", type=float, default=8, help="measured seconds per step (default 8)"
    )
    g.add_argument(
        "--step-warmup",
        type=float,
        default=3,
        help="seconds at the new rate before measuring (default 3)",
    )
    g.add_argument("--p99-limit-ms", type=float, default=50, help="p99 limit (default 50 ms)")
    g.add_argument(
        "--max-fails",
        type=int,
        default=3,
        help="rates in a row with p99 over the limit before the sweep stops: latency has "
        "a hump where coalescing sets in, and may pass again above it (default 3)",
    )
    g.add_argument(
        "--min-ratio",
        type=float,
        default=0.95,
        help="delivered/expected below this = falling behind (default 0.95)",
    )
    g.add_argument(
        "--client-bound-pct",
        type=float,
        default=97,
        help="stop when the load CPUs (redis, publisher, load clients) are busier than "
        "this %%: the target is no longer the only bottleneck (default 97)",
    )

    rep = cmds.add_parser("report", help="markdown table and PNG chart from result files")
    rep.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="JSON files written by run/sweep; for a target found twice, the later file wins",
    )
    rep.add_argument("--chart", type=Path, default=None, help="write a PNG chart here")
    rep.add_argument(
        "--profile", type=Path, default=None, help="summarize py-spy collapsed stacks (raw file)"
    )
    return top


def _setup_process(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.load_cpus:
        os.sched_setaffinity(0, parse_cpus(args.load_cpus))


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = [t.strip() for t in args.target.split(",") if t.strip()]
    for name in names:
        if name not in TARGETS:
            raise SystemExit(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    if args.command == "run":
        per_target = args.warmup + args.duration + 120 + args.clients / args.connect_rate
    else:
        steps = math.ceil(math.log(args.rate_max / args.rate_start, args.rate_factor)) + 1
        per_target = steps * (args.step_duration + args.step_warmup + 5) + 120
    timeout = args.timeout or per_target * len(names)
    # Ctrl-C and SIGTERM cancel the bench: every ``finally`` on the way out stops what it
    # started (load clients, publisher, target, redis), in that order.
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    results = []
    async with asyncio.timeout(timeout):
        for name in names:
            print(
                f"== {name}: {args.clients} clients, {args.subs} of {args.channels} channels",
                flush=True,
            )
            if args.command == "run":
                result = await run_one(args, name)
                print(header())
                print(_row(result), flush=True)
                if result.get("profile"):
                    print_profile(result["profile"])
            else:
                print(header() + "  step")
                result = await sweep_one(args, name)
                print(
                    f"-> max sustained {result['max_sustained_per_s']:.0f} deliveries/s "
                    f"({result['stop_reason']})",
                    flush=True,
                )
            results.append(result)
    return results


def main() -> int:
    args = parser().parse_args()
    if args.command == "report":
        return report(args)
    _setup_process(args)
    started = time.strftime("%Y%m%d-%H%M%S")
    try:
        results = uvloop.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    payload = {
        "command": args.command,
        "argv": sys.argv[1:],
        "started": started,
        "machine": machine(),
        "results": results,
    }
    out = args.out or HERE / "results" / f"{args.command}-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nresults: {out}")
    if args.command == "run":
        print()
        print_table(results)
    else:
        for r in results:
            print(
                f"{r['target']:>10}: max sustained {r['max_sustained_per_s']:.0f} deliveries/s"
                f" at R={r['best_rate'] or 0:.0f} ({r['stop_reason']})"
            )
    for r in results:
        for problem in _problems(r):
            print(f"!! {r['target']}: {problem}")
    return 0


def _problems(result: dict[str, Any]) -> list[str]:
    out = []
    for r in result.get("steps", [result]):
        if r.get("gaps") or r.get("dups"):
            out.append(f"R={r.get('rate')}: {r['gaps']} gaps, {r['dups']} dups {r['gap_examples']}")
        if r.get("closes"):
            out.append(f"R={r.get('rate')}: closes {r['closes']}")
        if r.get("errors"):
            out.append(f"R={r.get('rate')}: {r['errors']} error frames")
        if r.get("ready") is not None and r.get("ready") != r.get("clients"):
            out.append(f"only {r['ready']} of {r['clients']} clients subscribed")
    log = result.get("target_log") or {}
    if log.get("counts"):
        out.append(f"target log: {log['counts']}")
    return out


def report(args: argparse.Namespace) -> int:
    # Keyed by target: a later file's result for the same target replaces an earlier one.
    by_target: dict[str, dict[str, Any]] = {}
    sweeps_by_target: dict[str, dict[str, Any]] = {}
    for path in args.files:
        payload = json.loads(path.read_text())
        for r in payload["results"]:
            (sweeps_by_target if r.get("mode") == "sweep" else by_target)[r["target"]] = r
    runs = list(by_target.values())
    sweeps = list(sweeps_by_target.values())
    if runs:
        print(markdown(runs))
    for s in sweeps:
        print(
            f"\nsweep {s['target']}: max sustained {s['max_sustained_per_s']:.0f} deliveries/s "
            f"at R={s['best_rate'] or 0:.0f} ({s['stop_reason']})"
        )
        print(markdown(s["steps"]))
    if args.profile:
        print_profile(summarize_profile(args.profile))
    if args.chart:
        chart(runs, sweeps, args.chart)
        print(f"\nchart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
