"""Shared helpers of the fanout bench: ports, a private redis-server, process-tree accounting.

Nothing here imports the relay: the bench measures it from the outside, as a client would.
psutil (and numpy) are imported where used: the soak (soak.py) runs in CI, where the
bench's extra requirements are not installed, and needs none of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

# The contract's key layout (PROTOCOL.md): stream, snapshot hash and meta hash of a channel.
PREFIX = "md:"


def stream_key(channel: str) -> str:
    return f"{PREFIX}{{{channel}}}"


def snapshot_key(channel: str) -> str:
    return f"{stream_key(channel)}:snapshot"


def meta_key(channel: str) -> str:
    return f"{stream_key(channel)}:meta"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts on 127.0.0.1:port (and ``proc`` is still alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def parse_cpus(text: str) -> set[int]:
    """``"0"``, ``"0,2"`` or ``"0-3"`` to a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return cpus


def pinned(cpus: set[int] | None) -> Callable[[], None]:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None: inherit)."""

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        os.setpgrp()  # its own process group: Ctrl-C in the terminal goes to the bench only
        with contextlib.suppress(OSError, AttributeError):  # die with the bench, whatever happens
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)

    return pin


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL the process (and its group) if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class RedisServer:
    """A private redis-server on a free loopback port, nothing on disk, stopped on exit."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.port = free_port()
        self.cpus = cpus
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", str(Path(self._dir.name) / "redis.log"),
            "--maxclients", "1000",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(self.cpus),
        )
        wait_port(self.port, 10.0, self.proc)

    def stop(self) -> None:
        stop_process(self.proc, 5.0)
        self.proc = None
        self._dir.cleanup()


@dataclass(slots=True)
class TreeSample:
    cpu: float  # user + sys seconds of the whole tree (live processes)
    rss: int  # bytes, summed over the tree


def tree(pid: int) -> list[psutil.Process]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample_tree(pid: int) -> TreeSample:
    """CPU seconds (user+sys, from /proc) and RSS of a process and all its descendants."""
    import psutil

    cpu = 0.0
    rss = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss += proc.memory_info().rss
    return TreeSample(cpu, rss)


def cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of these CPUs from /proc/stat (busy = all but idle and iowait)."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy, total


_HWM = re.compile(r"^VmHWM:\s+(\d+) kB", re.MULTILINE)


def peak_rss(pid: int) -> int:
    """Sum over the tree of each process's high-water RSS (VmHWM), bytes."""
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(OSError):
            match = _HWM.search(Path(f"/proc/{proc.pid}/status").read_text())
            if match:
                total += int(match[1]) * 1024
    return total


def percentiles(values: Sequence[float] | object, points: Sequence[float]) -> list[float]:
    """Percentiles (nearest-rank on sorted data) of a numpy array or a sequence."""
    import numpy as np

    arr = np.asarray(values)
    if arr.size == 0:
        return [float("nan")] * len(points)
    return [float(v) for v in np.percentile(arr, points, method="higher")]


def machine() -> dict[str, str]:
    """What the results were measured on."""
    import platform

    import psutil

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def build_loadclient(source: Path, binary: Path) -> Path:
    """Compile the C load client (cc -O2) into ``binary`` unless it is newer than ``source``."""
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        binary.parent.mkdir(exist_ok=True)
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError(f"no C compiler (cc or gcc) to build {source.name}")
        # Into a temporary name first: two benches starting together never run a half-written
        # binary.
        partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(partial), str(source)], check=True)
        partial.replace(binary)
    return binary
