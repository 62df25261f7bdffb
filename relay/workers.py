"""``relay serve --workers N``: N relay processes sharing one port, and their supervisor.

Each worker is a whole relay (its own Redis reader, channels, history and metrics),
started as ``relay serve ... --workers 1 --reuse-port 1``: the kernel spreads incoming
connections over the workers (SO_REUSEPORT). Resume works across workers exactly as
across replicas, since seq and epoch come from the producer. The supervisor owns the
workers: it restarts one that dies (after a short, growing delay), forwards SIGTERM and
SIGINT for an orderly shutdown, and kills what is still running after the shutdown
timeout.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from relay.backoff import Backoff

log = logging.getLogger("relay.workers")

_POLL = 0.2  # seconds between checks of the workers


class Supervisor:
    def __init__(self, argv: Sequence[str], workers: int, shutdown_timeout: float) -> None:
        # The worker command: this command again, as one worker on a shared port (the
        # flags given last win over the same flags earlier in argv).
        self.command = [
            sys.executable, "-m", "relay.cli", *argv, "--workers", "1", "--reuse-port", "1",
        ]  # fmt: skip
        self.count = workers
        self.shutdown_timeout = shutdown_timeout
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._restart_at = [0.0] * workers
        self._backoff = [Backoff(0.5, 10.0) for _ in range(workers)]
        self._stopping = False

    def _start(self, index: int) -> None:
        proc = subprocess.Popen(self.command)
        self.procs[index] = proc
        log.info("worker started", extra={"worker": index, "pid": proc.pid})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for index in range(self.count):
            self._start(index)
        started = [time.monotonic()] * self.count
        while not self._stopping:
            time.sleep(_POLL)
            now = time.monotonic()
            for index, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is None:
                    if now - started[index] > 30:  # ran well for a while: forget past crashes
                        self._backoff[index].reset()
                    continue
                if proc is not None:
                    delay = self._backoff[index].next_delay() + 0.1
                    log.error(
                        "worker exited, restarting",
                        extra={
                            "worker": index,
                            "pid": proc.pid,
                            "code": proc.returncode,
                            "in": delay,
                        },
                    )
                    self.procs[index] = None
                    self._restart_at[index] = now + delay
                if now >= self._restart_at[index] and not self._stopping:
                    self._start(index)
                    started[index] = now
        return self._stop()

    def _stop(self) -> int:
        running = [p for p in self.procs if p is not None and p.poll() is None]
        log.info("stopping workers", extra={"count": len(running)})
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 5
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time, killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        # A worker still starting when SIGTERM came dies of it before its handler is set:
        # that is a clean stop too.
        clean = (0, -signal.SIGTERM)
        return 0 if all(p.returncode in clean for p in running) else 1
