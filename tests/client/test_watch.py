"""`relay watch`: a terminal view of live books and trades, against a relay in-process."""

from __future__ import annotations

import argparse
import asyncio
import io

from support.relay import running_relay

from client.harness import memory_market
from relay import watch


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def parse(*argv: str) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="relay")
    watch.add_parser(top.add_subparsers(dest="command"), {})
    return top.parse_args(["watch", *argv])


def test_the_command_line() -> None:
    args = parse("book.BTC-USD", "trades.BTC-USD")
    assert (args.urls, args.depth, args.once, args.duration) == (None, 10, False, None)
    assert args.log_level == "error"  # logs would scribble over the view
    args = parse("--url", "ws://a/ws", "--url", "ws://b/ws", "--depth", "3", "book.X")
    assert args.urls == ["ws://a/ws", "ws://b/ws"]
    assert args.channels == ["book.X"]


async def test_once_prints_the_top_of_the_book_and_the_last_trades() -> None:
    market = await memory_market(symbols=1, warmup=60)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD", "trades.BTC-USD")
        out = io.StringIO()
        args = parse("--url", relay.ws_url, "--once", "--depth", "3", *market.channels)
        assert await asyncio.wait_for(watch.run(args, out), 15) == 0
    text = out.getvalue()
    assert "\x1b[" not in text  # plain text: not a terminal
    lines = text.splitlines()
    [head] = [line for line in lines if line.startswith("book.BTC-USD")]
    assert head.split()[1:4] == ["live", "seq", str(market.sim.seqs["book.BTC-USD"])]
    assert "checksum failures 0" in head
    book = market.book("book.BTC-USD")
    rows = lines[lines.index(head) + 2 : lines.index(head) + 5]
    for row, bid, ask in zip(rows, book.bid_levels(3), book.ask_levels(3), strict=True):
        assert row.split() == [bid[1], bid[0], "│", ask[0], ask[1]]
    assert f"levels {len(book.bids)}/{len(book.asks)}" in text
    [trades_head] = [line for line in lines if line.startswith("trades.BTC-USD")]
    last = market.trades("trades.BTC-USD")[-1]
    newest = lines[lines.index(trades_head) + 1].split()
    assert newest == [last["side"], last["size"], "@", last["price"], "id", last["id"]]


async def test_a_live_view_redraws_at_most_ten_times_a_second_while_the_market_moves() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")

        async def busy() -> None:
            while True:  # far more updates than redraws
                await market.produce(5)
                await asyncio.sleep(0.005)

        producing = asyncio.create_task(busy())
        out = Terminal()
        args = parse("--url", relay.ws_url, "--duration", "1", "book.BTC-USD")
        try:
            assert await asyncio.wait_for(watch.run(args, out), 15) == 0
        finally:
            producing.cancel()
    text = out.getvalue()
    redraws = text.count("\x1b[H\x1b[2J")
    assert 2 <= redraws <= 12  # ~10 during the second, plus the last view
    assert market.sim.seqs["book.BTC-USD"] > 100
    last_view = text.rsplit("\x1b[H\x1b[2J", 1)[1]
    assert "book.BTC-USD  live" in last_view
    assert "spread" in last_view
    assert text.endswith("\x1b[?25h" + "\x1b[H\x1b[2J" + last_view)  # cursor shown again


async def test_a_channel_that_never_comes_fails_the_run_and_says_why() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source()) as relay:
        await relay.wait_live("book.BTC-USD")
        out = io.StringIO()
        args = parse("--url", relay.ws_url, "--once", "--duration", "0.5", "book.NOPE-USD")
        assert await asyncio.wait_for(watch.run(args, out), 15) == 1
    text = out.getvalue()
    assert "book.NOPE-USD  subscribing" in text
    assert "unknown_channel" in text
