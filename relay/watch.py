"""``relay watch``: a terminal view of live books and trades, built on ``relay.client``.

Per book channel: the top levels of both sides, spread and mid; per trades channel: the
last trades. For each: status, seq, update rate, producer-to-screen latency (from each
frame's ``ts``), and the SDK's counters (gaps, checksum failures, resyncs, reconnects).
The screen is redrawn with plain ANSI codes at most ten times a second, not per message.
With ``--once`` (or when stdout is not a terminal) it prints a plain view instead.

Wiring (relay/cli.py)::

    from relay import watch
    watch.add_parser(commands, env)
    ...
    elif args.command == "watch":
        with contextlib.suppress(KeyboardInterrupt):
            return int(uvloop.run(watch.run(args)))
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from relay.client import (
    BookSnapshot,
    BookUpdate,
    ChannelError,
    ChannelStatus,
    Client,
    Connected,
    Disconnected,
    Event,
    TradesSnapshot,
    TradeUpdate,
)
from relay.config import LOG_KNOBS, add_knobs
from relay.core.checksum import DEFAULT_DEPTH

DEFAULT_URL = "ws://127.0.0.1:8080/ws"
REDRAW_INTERVAL = 0.1  # seconds: at most ten redraws a second
RATE_WINDOW = 1.0  # seconds over which the update rate and latency are taken
ONCE_TIMEOUT = 10.0  # seconds --once waits for every channel's first snapshot

_HOME_CLEAR = "\x1b[H\x1b[2J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"

DESCRIPTION = """\
Show live books and trades from a relay: top levels, spread, update rate, latency from
the producer's timestamps, and the client SDK's gap, checksum and resync counters.
Give --url several times to fail over between replicas. Ctrl-C stops."""


def add_parser(subparsers: Any, env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Add the ``watch`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    cmd: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="a live terminal view of books and trades",
        description=DESCRIPTION,
    )
    cmd.add_argument("channels", nargs="+", metavar="CHANNEL", help="e.g. book.BTC-USD")
    cmd.add_argument(
        "--url",
        dest="urls",
        action="append",
        metavar="URL",
        help=f"relay WebSocket URL; repeat for replicas (default {DEFAULT_URL})",
    )
    cmd.add_argument(
        "--depth", type=_at_least(1), default=10, help="book levels shown per side (default 10)"
    )
    cmd.add_argument(
        "--trades", type=_at_least(1), default=10, help="trades shown per channel (default 10)"
    )
    cmd.add_argument(
        "--checksum-depth",
        type=_at_least(0),
        default=DEFAULT_DEPTH,
        help="the relay's RELAY_CHECKSUM_DEPTH; 0 verifies no checksum (default %(default)s)",
    )
    cmd.add_argument(
        "--duration",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="stop after this long and print the last view "
        f"(with --once: the longest wait for the snapshots, default {ONCE_TIMEOUT:g})",
    )
    cmd.add_argument(
        "--once",
        action="store_true",
        help="print one view as soon as every channel has its snapshot, then exit",
    )
    cmd.add_argument(
        "--plain",
        action="store_true",
        help="no live redraw: print the view once, at exit (the default when stdout is "
        "not a terminal)",
    )
    defaults = {"RELAY_LOG_FORMAT": "text", "RELAY_LOG_LEVEL": "error"}
    add_knobs(cmd, LOG_KNOBS, {**defaults, **(os.environ if env is None else env)})
    return cmd


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    return parse


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


@dataclass
class _Stats:
    """What the view measures itself, per channel: recent arrivals and their latency."""

    arrivals: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic, latency)
    error: str = ""

    def add(self, now: float, latency_us: int) -> None:
        self.arrivals.append((now, latency_us))
        self.prune(now)

    def prune(self, now: float) -> None:
        while self.arrivals and self.arrivals[0][0] < now - RATE_WINDOW:
            self.arrivals.popleft()


class View:
    """The screen's content, fed by the client's events and read from its state."""

    def __init__(self, client: Client, channels: Sequence[str], depth: int, trades: int) -> None:
        self.client = client
        self.channels = list(dict.fromkeys(channels))
        self.depth = depth
        self.trades_shown = trades
        self.stats = {name: _Stats() for name in self.channels}
        self.connection = "connecting"
        self.changed = True

    def on_event(self, event: Event) -> None:
        self.changed = True
        now = time.monotonic()
        if isinstance(event, BookUpdate | TradeUpdate):
            self.stats[event.channel].add(now, event.latency_us)
        elif isinstance(event, BookSnapshot | TradesSnapshot):
            self.stats[event.channel].error = ""
        elif isinstance(event, ChannelError):
            if event.channel in self.stats:
                self.stats[event.channel].error = f"{event.code}: {event.message}"
        elif isinstance(event, Connected):
            self.connection = f"connected to {event.url}"
        elif isinstance(event, Disconnected):
            code = "" if event.code is None else f" ({event.code})"
            self.connection = (
                f"disconnected from {event.url}{code} {event.reason}; "
                f"retrying in {event.delay:.1f}s"
            )

    def ready(self) -> bool:
        """Every channel has its state (or was refused)."""
        return all(
            self.client.status(name) in (ChannelStatus.LIVE, ChannelStatus.FAILED)
            for name in self.channels
        )

    def render(self) -> str:
        now = time.monotonic()
        lines = [f"relay watch  {time.strftime('%H:%M:%S')}  {self.connection}", ""]
        for name in self.channels:
            lines += self._channel(name, now)
            lines.append("")
        return "\n".join(lines)

    def _channel(self, name: str, now: float) -> list[str]:
        client = self.client
        stats = self.stats[name]
        stats.prune(now)
        counters = client.counters(name)
        position = client.position(name)
        rate = len(stats.arrivals) / RATE_WINDOW
        latency = (
            f"{sum(lat for _, lat in stats.arrivals) / len(stats.arrivals) / 1000:.1f} ms"
            if stats.arrivals
            else "-"
        )
        is_book = name.startswith("book.")
        head = [
            name,
            client.status(name).value,
            f"seq {position[1] if position else '-'}",
            f"{rate:.1f} {'upd' if is_book else 'trades'}/s",
            f"latency {latency}",
            f"gaps {counters.gaps}",
        ]
        if is_book:
            head.append(f"checksum failures {counters.checksum_failures}")
        head += [f"resyncs {counters.resubscribes}", f"reconnects {counters.reconnects}"]
        lines = ["  ".join(head)]
        if stats.error:
            lines.append(f"  relay says {stats.error}")
        lines += self._book(name) if is_book else self._trades(name)
        return lines

    def _book(self, name: str) -> list[str]:
        book = self.client.book(name)
        if book is None:
            return ["  (waiting for a snapshot)"]
        bids, asks = book.bids(self.depth), book.asks(self.depth)
        lines = [f"  {'size':>14} {'bid':>14} │ {'ask':<14} size"]
        for i in range(max(len(bids), len(asks))):
            bid = f"{bids[i][1]:>14} {bids[i][0]:>14}" if i < len(bids) else " " * 29
            ask = f"{asks[i][0]:<14} {asks[i][1]:<14}" if i < len(asks) else ""
            lines.append(f"  {bid} │ {ask}".rstrip())
        spread, mid = book.spread(), book.mid()
        lines.append(
            f"  spread {spread if spread is not None else '-'}  "
            f"mid {mid if mid is not None else '-'}  "
            f"levels {book.bid_count}/{book.ask_count}"
        )
        return lines

    def _trades(self, name: str) -> list[str]:
        if self.client.status(name) is not ChannelStatus.LIVE:
            return ["  (waiting for a snapshot)"]
        trades = self.client.trades(name)[-self.trades_shown :]
        if not trades:
            return ["  (no trades yet)"]
        return [f"  {t.side:<4} {t.size:>14} @ {t.price:<14} id {t.id}" for t in reversed(trades)]


async def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the view; 0 when every channel was live at the end, else 1."""
    out = out or sys.stdout
    client = Client(args.urls or [DEFAULT_URL], args.channels, checksum_depth=args.checksum_depth)
    view = View(client, args.channels, args.depth, args.trades)
    client.on(Event, view.on_event)
    live = not (args.once or args.plain or not out.isatty())
    loop = asyncio.get_running_loop()
    limit = args.duration if args.duration is not None else ONCE_TIMEOUT if args.once else None
    deadline = None if limit is None else loop.time() + limit
    if live:
        out.write(_HIDE_CURSOR)
    try:
        async with client:
            drawn = 0.0
            while deadline is None or loop.time() < deadline:
                if args.once and view.ready():
                    break
                # Redraw on news, and every second anyway: rates and latency age.
                if live and (view.changed or loop.time() - drawn >= 1.0):
                    view.changed, drawn = False, loop.time()
                    out.write(_HOME_CLEAR + view.render() + "\n")
                    out.flush()
                await asyncio.sleep(REDRAW_INTERVAL)
            text = view.render()
            ok = all(client.status(name) is ChannelStatus.LIVE for name in view.channels)
    finally:
        if live:
            out.write(_SHOW_CURSOR)
            out.flush()
    out.write((_HOME_CLEAR if live else "") + text + "\n")
    out.flush()
    return 0 if ok else 1
