"""relay.client.Client(token=...) against a relay with auth on: the token goes in the
Authorization header, a callable is asked again at each connect (a session closed 1008 at
its token's exp comes back with a fresh one), a forbidden channel is a final error."""

from __future__ import annotations

import asyncio
import time

from client.harness import Market, fast_client, memory_market
from support.relay import running_relay

from relay.client import ChannelError, ChannelStatus, Client, Connected, Disconnected, Event
from relay.core.auth import mint_jwt

SECRET = b"sdk-test-secret-that-is-long-enough-32"


async def test_the_sdk_sends_its_token_and_renews_it_after_an_expiry() -> None:
    market = await memory_market(symbols=1)
    minted: list[float] = []

    def token() -> str:
        # The first token lives 1-2 s (exp is whole seconds); the next ones an hour.
        exp = int(time.time()) + (2 if not minted else 3600)
        minted.append(exp)
        return mint_jwt(SECRET, {"exp": exp, "channels": ["book.*"]})

    async with running_relay(
        market.source(), auth=True, jwt_secrets=SECRET.decode(), auth_leeway=0.0
    ) as relay:
        await relay.wait_live(*market.channels)
        events: list[Event] = []
        client = fast_client(relay.ws_url, ["book.BTC-USD", "trades.BTC-USD"], token=token)
        client.on(Event, events.append)  # before it starts: every event counts
        async with client as c:
            async with asyncio.timeout(15):
                while sum(isinstance(e, Connected) for e in events) < 2:
                    await asyncio.sleep(0.02)
            await market.produce(5)
            async with asyncio.timeout(10):
                while c.status("book.BTC-USD") is not ChannelStatus.LIVE:
                    await asyncio.sleep(0.02)
            assert c.position("book.BTC-USD") is not None
            await caught_up_book(c, market)
        closes = [e for e in events if isinstance(e, Disconnected)]
        assert (closes[0].code, closes[0].reason) == (1008, "token expired")
        errors = [e for e in events if isinstance(e, ChannelError)]
        assert {(e.channel, e.code) for e in errors} == {("trades.BTC-USD", "forbidden")}
        assert len(minted) >= 2


async def caught_up_book(client: Client, market: Market) -> None:
    """The book channel reached the producer's seq (the trades one is forbidden)."""
    async with asyncio.timeout(10):
        while client.position("book.BTC-USD") != (
            market.sim.epoch,
            market.sim.seqs["book.BTC-USD"],
        ):
            await asyncio.sleep(0.02)


async def test_without_a_token_the_sdk_is_refused_and_keeps_retrying() -> None:
    market = await memory_market(symbols=1)
    async with running_relay(market.source(), auth=True, jwt_secrets=SECRET.decode()) as relay:
        events: list[Event] = []
        client = fast_client(relay.ws_url, ["book.BTC-USD"])
        client.on(Event, events.append)
        async with client:
            async with asyncio.timeout(10):
                while sum(isinstance(e, Disconnected) for e in events) < 2:
                    await asyncio.sleep(0.02)
        assert not any(isinstance(e, Connected) for e in events)
        first = next(e for e in events if isinstance(e, Disconnected))
        assert first.code is None
        assert "401" in first.reason
