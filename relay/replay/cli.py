"""``relay replay``: publish exchange recordings to Redis as contract streams.

Wiring (relay/cli.py)::

    from relay.replay import cli as replay_cli
    replay_cli.add_parser(commands, env)          # next to the other subcommands
    ...
    elif args.command == "replay":
        return uvloop.run(replay_cli.run(args))    # the exit status
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import redis.asyncio as aioredis

from relay.config import LOG_KNOBS, PREFIX_KNOB, REDIS_KNOB, add_knobs
from relay.producer import RedisPublisher
from relay.replay.checks import Verifier
from relay.replay.errors import ReplayFormatError
from relay.replay.recordings import recordings
from relay.replay.venues import PARSERS
from relay.replay.writer import ChannelCollision, Progress, replay

DESCRIPTION = """\
Replay exchange recordings into Redis as a producer per the wire contract: per instrument
book.<SYMBOL> (snapshot first, then diffs; snapshot hash refreshed every K entries) and
trades.<SYMBOL>, with a new epoch. The venue of each file is detected from its content
(then its file and directory names): Binance spot/USD-M/COIN-M (hftbacktest .gz), Kraken,
Kraken Futures, OKX, Coinbase, BitMEX (cryptofeed sample_data), Bybit orderbook (.data).
Files of one venue are replayed together (Binance: a symbol's daily files continue each
other); recordings of different venues start side by side. Directories are searched
recursively; .md, .txt and .zip files in them are skipped (name a .zip to replay it).
Venue checksums and best bid/ask go along in each book entry's "venue" key.
"""


def add_parser(subparsers: Any, env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Add the ``replay`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    cmd: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="publish exchange recordings to Redis (a producer)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_knobs(cmd, (REDIS_KNOB, PREFIX_KNOB, *LOG_KNOBS), os.environ if env is None else env)
    pace = cmd.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        metavar="X",
        help="replay X times the recorded pace: 1 = as recorded, 10 = ten times faster (default 1)",
    )
    pace.add_argument(
        "--max-speed",
        action="store_true",
        help="publish as fast as Redis takes it, ignoring the recorded times",
    )
    cmd.add_argument(
        "--snapshot-every",
        type=_at_least_one,
        default=100,
        metavar="K",
        help="refresh a book's snapshot hash every K book entries (default 100)",
    )
    cmd.add_argument(
        "--maxlen",
        type=_at_least_one,
        default=10_000,
        metavar="N",
        help="approximate stream length kept (MAXLEN ~, default 10000)",
    )
    cmd.add_argument(
        "--batch",
        type=_at_least_one,
        default=1000,
        metavar="N",
        help="entries per Redis pipeline (default 1000)",
    )
    cmd.add_argument(
        "--venue",
        choices=sorted(PARSERS),
        default=None,
        metavar="NAME",
        help="parse every file as this venue instead of detecting it: "
        + ", ".join(sorted(PARSERS)),
    )
    cmd.add_argument(
        "--venue-prefix",
        action="store_true",
        help="prefix symbols with the venue (book.kraken_XBT-CHF), for recordings of "
        "several venues that share instrument names",
    )
    cmd.add_argument(
        "--check",
        action="store_true",
        help="do not publish: rebuild every book from the recordings and report the venue "
        "checks (checksums, best bid/ask, update-id and trade-id continuity, crossed books)",
    )
    cmd.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="recording files, or directories holding them",
    )
    return cmd


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _when(ns: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def progress_line(progress: Progress, out: TextIO | None = None) -> None:
    out = out or sys.stderr
    state = "done" if progress.done else "at"
    print(
        f"relay replay: {progress.events:,} events, {progress.publications:,} entries, "
        f"{progress.rate:,.0f} events/s, {state} {_when(progress.position_ns)}",
        file=out,
        flush=True,
    )


def check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Rebuild the books without publishing, and print the venue checks' tallies."""
    out = out or sys.stdout
    started = time.monotonic()
    for recording in recordings(args.paths, args.venue):
        verifier = Verifier().feed_all(recording.events())
        names = ", ".join(path.name for path in recording.files)
        print(f"{recording.venue}: {names}", file=out)
        counts = ", ".join(f"{count} {name}" for name, count in sorted(verifier.counts.items()))
        print(f"  events: {counts}", file=out)
        for label, tally in (
            ("checksums", verifier.checksums),
            ("best bid/ask", verifier.tops),
            ("update ids", verifier.update_ids),
            ("trade ids", verifier.trade_ids),
            ("not crossed", verifier.crossed),
        ):
            if tally.made:
                print(f"  {label}: {tally.passed} of {tally.made} agree", file=out)
                for failure in tally.failures[:5]:
                    print(f"    {failure}", file=out)
    print(f"checked in {time.monotonic() - started:.1f}s", file=out)
    return 0


async def run(args: argparse.Namespace) -> int:
    """Run ``relay replay``; the exit status (2: a recording that cannot be replayed)."""
    if not args.check and args.maxlen <= args.snapshot_every:
        # Trimming could drop the snapshot's own entry, which a relay needs to start from.
        print(
            f"relay replay: error: --maxlen {args.maxlen} must be larger than "
            f"--snapshot-every {args.snapshot_every}",
            file=sys.stderr,
        )
        return 2
    try:
        if args.check:
            return check(args)
        client = aioredis.Redis.from_url(args.redis_url)
        publisher = RedisPublisher(client, args.key_prefix, args.maxlen)
        try:
            stats = await replay(
                args.paths,
                publisher,
                None if args.max_speed else args.speed,
                snapshot_every=args.snapshot_every,
                venue=args.venue,
                venue_prefix=args.venue_prefix,
                batch_size=args.batch,
                progress=progress_line,
            )
        finally:
            await publisher.close()
    except (ReplayFormatError, ChannelCollision) as exc:
        print(f"relay replay: error: {exc}", file=sys.stderr)
        return 2
    channels = len(stats.channels)
    print(
        f"relay replay: epoch {stats.epoch}: {stats.publications:,} entries on "
        f"{channels} channel{'' if channels == 1 else 's'} in {stats.elapsed:.1f}s",
        flush=True,
    )
    return 0
