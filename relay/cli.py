"""The ``relay`` command: serve, simulate, demo, token, apikey, ..."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

import uvloop

from relay import __version__, logs, mint, watch
from relay.auth import AuthConfigError
from relay.config import LOG_KNOBS, PREFIX_KNOB, REDIS_KNOB, SERVE_KNOBS, add_knobs, serve_config
from relay.demo import SimOptions, run_demo
from relay.producer import Simulator, redis_publisher
from relay.replay import cli as replay_cli
from relay.server import build_app, serve
from relay.source.redis import open_source
from relay.tail import tail
from relay.workers import Supervisor


def _sim_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument("--symbols", type=int, default=3, help="number of symbols (default 3)")
    group.add_argument(
        "--rate", type=float, default=20.0, help="book updates/s per symbol (default 20)"
    )
    group.add_argument(
        "--snapshot-every",
        type=int,
        default=100,
        help="refresh the snapshot hash every K book updates (default 100)",
    )
    group.add_argument("--depth", type=int, default=200, help="price levels per side (default 200)")
    group.add_argument(
        "--maxlen",
        type=int,
        default=10_000,
        help="approximate stream length kept (MAXLEN ~, default 10000)",
    )


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relay", description=__doc__)
    top.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser(
        "serve",
        help="run the relay",
        description="Relay Redis Streams to WebSocket subscribers. Every flag can be set "
        "by the RELAY_* environment variable named in its help.",
    )
    add_knobs(serve_cmd, SERVE_KNOBS, env)

    sim = commands.add_parser("simulate", help="write a simulated market to Redis (a producer)")
    add_knobs(sim, (REDIS_KNOB, PREFIX_KNOB, *LOG_KNOBS), env)
    _sim_options(sim)
    sim.add_argument("--seed", type=int, default=None, help="random seed (default: random)")

    tail_cmd = commands.add_parser("tail", help="print a relay's frames for some channels")
    tail_cmd.add_argument("channels", nargs="+", metavar="CHANNEL", help="e.g. book.BTC-USD")
    tail_cmd.add_argument(
        "--url", default="ws://127.0.0.1:8080/ws", help="relay WebSocket URL (default %(default)s)"
    )
    tail_cmd.add_argument("--count", type=int, default=None, help="stop after this many updates")
    add_knobs(tail_cmd, LOG_KNOBS, {"RELAY_LOG_FORMAT": "text", **env})

    replay_cli.add_parser(commands, env)
    watch.add_parser(commands, env)
    mint.add_parsers(commands, env)

    demo = commands.add_parser("demo", help="simulator + relay in one process, Redis optional")
    add_knobs(demo, SERVE_KNOBS, {"RELAY_LOG_FORMAT": "text", **env})
    _sim_options(demo)
    return top


async def _simulate(args: argparse.Namespace) -> None:
    publisher = redis_publisher(args.redis_url, args.key_prefix, args.maxlen)
    simulator = Simulator(
        publisher,
        symbols=args.symbols,
        rate=args.rate,
        snapshot_every=args.snapshot_every,
        depth=args.depth,
        seed=args.seed,
    )
    try:
        await simulator.start()
        print(
            f"relay simulate: epoch {simulator.epoch}, writing "
            f"{', '.join(simulator.channels())} to {args.redis_url}",
            flush=True,
        )
        await simulator.run()
    finally:
        await publisher.close()


async def _serve(args: argparse.Namespace) -> None:
    config = serve_config(args)
    source = open_source(
        config.redis_url,
        config.key_prefix,
        read_timeout=config.read_block_ms / 1000 + 5,
        poll_ms=config.cluster_poll_ms,
    )
    await serve(build_app(config, source), config.host, config.port, reuse_port=config.reuse_port)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parser(os.environ if env is None else env).parse_args(argv)
    if args.command == "token":
        return mint.run_token(args)
    if args.command == "apikey":
        return mint.run_apikey(args)
    logs.setup(args.log_level, args.log_format)
    if args.command == "serve" and args.workers > 1:
        serve_argv = list(argv if argv is not None else sys.argv[1:])
        return Supervisor(serve_argv, args.workers, args.shutdown_timeout).run()
    if args.command == "serve":
        try:
            uvloop.run(_serve(args))
        except AuthConfigError as exc:  # never carries a secret (relay/auth.py)
            print(f"relay serve: {exc}", file=sys.stderr)
            return 2
    elif args.command == "replay":
        return int(uvloop.run(replay_cli.run(args)))
    elif args.command == "watch":
        with contextlib.suppress(KeyboardInterrupt):
            return int(uvloop.run(watch.run(args)))
    elif args.command == "tail":
        with contextlib.suppress(KeyboardInterrupt):
            gaps = uvloop.run(tail(args.url, args.channels, args.count))
            return 1 if gaps else 0
    elif args.command == "simulate":
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_simulate(args))
    else:
        options = SimOptions(args.symbols, args.rate, args.snapshot_every, args.depth, args.maxlen)
        uvloop.run(run_demo(serve_config(args), options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
