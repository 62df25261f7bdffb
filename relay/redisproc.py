"""A private redis-server on a free loopback port, for the demo and the tests.

It keeps nothing on disk unless asked (``--save ''``, no AOF), lives in a temporary
directory, and is stopped (and waited for) on exit. For fault injection it can be
restarted on the same port and directory (so a persisted dataset is loaded again),
killed with SIGKILL, and paused and continued with SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and below 65536."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536 and _port_is_free(port + 10000):
            return port
    for port in range(20000, 30000, 7):
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def available() -> bool:
    return shutil.which("redis-server") is not None


class RedisProcess:
    """``appendonly`` with ``appendfsync`` (``everysec``, ``always``, ``no``); ``save`` is
    redis' save points (``"3600 1"`` writes an RDB on shutdown; ``""``: none); ``args``
    are more ``--name value`` options (``start`` may change them for the next start)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        save: str = "",
        cluster: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.save = save
        self.cluster = cluster
        self.args = args
        self._dir = tempfile.TemporaryDirectory(prefix="relay-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        return self._proc.pid

    @property
    def dir(self) -> Path:
        """The working directory: the RDB and AOF files, and redis.log."""
        return Path(self._dir.name)

    def start(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Start and wait until it answers PING with PONG (``wait=False``: return once
        it is spawned; a loading server answers -LOADING meanwhile)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", self.save,
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--dir", self._dir.name,
            "--logfile", str(Path(self._dir.name) / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]  # fmt: skip
        args += self.args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """SIGTERM: an orderly shutdown (the AOF is flushed, an RDB written if ``save``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(ProcessLookupError):  # it may be gone already
                os.kill(self._proc.pid, signal.SIGCONT)  # a paused server must run to exit
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash; only what was already on disk survives."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """An orderly stop, then a start on the same port and directory."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
