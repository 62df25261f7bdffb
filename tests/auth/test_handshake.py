"""Auth on a running relay (in-memory source): tokens from the header or a subprotocol,
400/401/429 before the upgrade, forbidden channels, per-token limits, expiry mid-session
(1008), anonymous public channels, and that no token ever reaches a log line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from support.client import Feed, connect
from support.relay import RunningRelay, running_relay

from relay.core.auth import api_key_digest, mint_jwt
from relay.logs import JsonFormatter
from relay.producer import MemoryPublisher, Simulator
from relay.source.memory import MemorySource, MemoryStore

SECRET = "a-test-secret-of-at-least-32-bytes-!!"
OLD_SECRET = "the-previous-secret-still-accepted-for-a-while"
API_KEY = "rk_test-key-0123456789abcdefghijklmnopqrstuv"


def jwt(secret: str = SECRET, ttl: float = 600, **claims: Any) -> str:
    return mint_jwt(secret.encode(), {"exp": int(time.time() + ttl), **claims})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def market_relay(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningRelay]:
    store = MemoryStore()
    publisher = MemoryPublisher(store)
    sim = Simulator(publisher, symbols=2, seed=3)
    await sim.start()
    for _ in range(20):
        await publisher.publish(sim.step())
    keys = tmp_path / "keys.json"
    keys.write_bytes(
        orjson.dumps(
            [{"sha256": api_key_digest(API_KEY), "sub": "bob", "channels": ["book.ETH-USD"]}]
        )
    )
    config: dict[str, Any] = {
        "auth": True,
        "jwt_secrets": f"{SECRET},{OLD_SECRET}",
        "api_key_file": str(keys),
        "auth_leeway": 0.0,
        "auth_max_conns": 3,
        **overrides,
    }
    async with running_relay(MemorySource(store), **config) as relay:
        await relay.wait_live(*sim.channels())
        yield relay


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with market_relay(tmp_path, public_channels=("trades.*",)) as running:
        yield running


async def handshake_error(url: str, **kwargs: Any) -> aiohttp.WSServerHandshakeError:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url, **kwargs)
    return caught.value


async def subscribed(feed: Feed, channel: str, request_id: int) -> None:
    await feed.subscribe(channel, request_id)
    reply = await feed.reply()
    assert reply["type"] == "subscribed", reply
    assert reply["channel"] == channel


async def forbidden(feed: Feed, channel: str, request_id: int) -> None:
    await feed.subscribe(channel, request_id)
    reply = await feed.reply()
    assert reply["type"] == "error", reply
    assert reply["code"] == "forbidden"
    assert reply["id"] == request_id


async def alive(feed: Feed) -> None:
    await feed.send({"op": "ping", "id": "alive"})
    assert await feed.reply() == {"type": "pong", "id": "alive"}


async def test_a_header_token_reads_its_channels_and_is_refused_others_on_an_open_connection(
    relay: RunningRelay,
) -> None:
    token = jwt(sub="alice", channels=["book.BTC-*"])
    async with connect(relay.ws_url, headers=bearer(token)) as feed:
        await subscribed(feed, "book.BTC-USD", 1)
        await forbidden(feed, "book.ETH-USD", 2)
        await subscribed(feed, "trades.ETH-USD", 3)  # public
        await alive(feed)
        assert feed.views["book.BTC-USD"].snapshots == 1
    assert relay.metric("relay_client_errors_total", {"code": "forbidden"}) == 1


async def test_a_subprotocol_token_is_answered_with_relay_v1_only(relay: RunningRelay) -> None:
    token = jwt(channels=["book.*"])
    async with connect(relay.ws_url, protocols=("relay.v1", f"bearer.{token}")) as feed:
        assert feed.ws.protocol == "relay.v1"
        await subscribed(feed, "book.ETH-USD", 1)


async def test_an_api_key_and_a_token_of_the_previous_secret_are_accepted(
    relay: RunningRelay,
) -> None:
    async with connect(relay.ws_url, headers=bearer(API_KEY)) as feed:
        await subscribed(feed, "book.ETH-USD", 1)
        await forbidden(feed, "book.BTC-USD", 2)
    async with connect(relay.ws_url, headers=bearer(jwt(OLD_SECRET, channels=["*"]))) as feed:
        await subscribed(feed, "book.BTC-USD", 1)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (jwt(ttl=-5), "expired"),
        (jwt(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (jwt(secret="x" * 40), "bad_signature"),
        (jwt()[: -len(jwt().split(".")[2])], "bad_signature"),  # signature stripped
        (mint_jwt(SECRET.encode(), {"exp": time.time() + 60}, "HS512"), "algorithm"),
        ("eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.", "algorithm"),  # alg none
        ("not.a.jwt", "malformed"),
        ("rk_nobody", "unknown_key"),
    ],
)
async def test_a_bad_token_is_a_401_before_the_upgrade(
    relay: RunningRelay, token: str, reason: str
) -> None:
    error = await handshake_error(relay.ws_url, headers=bearer(token))
    assert error.status == 401
    assert error.headers is not None
    challenge = error.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="relay", error="invalid_token", error_description=')
    assert relay.metric("relay_auth_refusals_total", {"reason": reason}) == 1
    assert relay.metric("relay_connections_accepted_total") == 0


async def test_the_401_body_says_why(relay: RunningRelay) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.ws_url, headers=bearer(jwt(ttl=-5))) as response,
    ):
        assert response.status == 401
        assert await response.json() == {
            "error": "invalid_token",
            "message": "the token has expired",
        }


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"protocols": (f"bearer.{jwt()}",)}, 400),  # without relay.v1
        ({"headers": {"Authorization": f"Basic {jwt()}"}}, 400),
        ({"headers": {"Authorization": "Bearer "}}, 400),
        ({"headers": bearer(jwt()), "protocols": ("relay.v1", f"bearer.{jwt()}")}, 400),
    ],
)
async def test_a_token_sent_wrong_is_a_400(
    relay: RunningRelay, kwargs: dict[str, Any], status: int
) -> None:
    assert (await handshake_error(relay.ws_url, **kwargs)).status == status


async def test_per_token_connection_limit_is_a_429_and_frees_on_close(
    relay: RunningRelay,
) -> None:
    token = jwt(channels=["*"], max_conns=2)
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(relay.ws_url, headers=bearer(token))
        second = await session.ws_connect(relay.ws_url, headers=bearer(token))
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(relay.ws_url, headers=bearer(token))
        assert caught.value.status == 429
        # Another token is counted apart; the default limit (3) applies without max_conns.
        other = jwt(channels=["*"], sub="other")
        others = [await session.ws_connect(relay.ws_url, headers=bearer(other)) for _ in range(3)]
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(relay.ws_url, headers=bearer(other))
        await first.close()
        refused: list[int] = []
        async with asyncio.timeout(5):  # the handler releases the slot as it ends
            while True:
                try:
                    third = await session.ws_connect(relay.ws_url, headers=bearer(token))
                    break
                except aiohttp.WSServerHandshakeError as exc:
                    refused.append(exc.status)
                    await asyncio.sleep(0.02)
        assert set(refused) <= {429}
        await third.send_str('{"op": "ping", "id": 1}')
        assert orjson.loads((await third.receive(timeout=5)).data) == {"type": "pong", "id": 1}
        for ws in (second, third, *others):
            await ws.close()
    assert relay.metric("relay_auth_refusals_total", {"reason": "too_many_connections"}) >= 2


async def test_a_token_expiring_mid_session_closes_1008_and_others_carry_on(
    relay: RunningRelay,
) -> None:
    exp = int(time.time()) + 2
    short = mint_jwt(SECRET.encode(), {"exp": exp, "channels": ["book.*"]})
    async with (
        connect(relay.ws_url, headers=bearer(short)) as expiring,
        connect(relay.ws_url, headers=bearer(jwt(channels=["book.*"]))) as control,
    ):
        await subscribed(expiring, "book.BTC-USD", 1)
        await subscribed(control, "book.BTC-USD", 1)
        while True:
            message = await expiring.ws.receive(timeout=10)
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert (message.data, message.extra) == (1008, "token expired")
        assert time.time() >= exp - 0.05  # never before its exp (leeway 0 here)
        await alive(control)
    assert relay.metric("relay_auth_expiries_total") == 1
    assert relay.metric("relay_closes_total", {"code": "1008"}) == 1


async def test_anonymous_clients_read_the_public_channels_only(relay: RunningRelay) -> None:
    async with connect(relay.ws_url) as feed:
        await subscribed(feed, "trades.BTC-USD", 1)
        await forbidden(feed, "book.BTC-USD", 2)
        await alive(feed)


async def test_without_public_channels_no_token_is_a_401_with_a_bare_challenge(
    tmp_path: Path,
) -> None:
    async with market_relay(tmp_path) as relay:
        error = await handshake_error(relay.ws_url)
        assert error.status == 401
        assert error.headers is not None
        assert error.headers["WWW-Authenticate"] == 'Bearer realm="relay"'
        assert relay.metric("relay_auth_refusals_total", {"reason": "missing"}) == 1


async def test_auth_off_ignores_tokens_and_still_speaks_relay_v1(tmp_path: Path) -> None:
    async with market_relay(tmp_path, auth=False) as relay:
        async with connect(relay.ws_url, headers={"Authorization": "Basic whatever"}) as feed:
            await subscribed(feed, "book.BTC-USD", 1)
        async with connect(relay.ws_url, protocols=("relay.v1", "bearer.junk")) as feed:
            assert feed.ws.protocol == "relay.v1"
            await subscribed(feed, "book.ETH-USD", 1)
        async with connect(relay.ws_url) as feed:
            assert feed.ws.protocol is None
            await subscribed(feed, "trades.ETH-USD", 1)


@contextlib.contextmanager
def every_log_line() -> Iterator[io.StringIO]:
    """Every record of every logger, aiohttp's access and websocket loggers included."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


async def test_no_token_reaches_a_log_line(tmp_path: Path) -> None:
    good = jwt(sub="carol", channels=["book.*"], max_conns=1)
    short = jwt(ttl=1.5, channels=["book.*"])
    bad = [jwt(ttl=-5), jwt(secret="y" * 40), "rk_wrong-key-that-must-not-be-logged"]
    with every_log_line() as logs:
        async with market_relay(tmp_path) as relay:
            async with connect(relay.ws_url, headers=bearer(good)) as feed:
                await subscribed(feed, "book.BTC-USD", 1)
                await relay_refuses(relay.ws_url, headers=bearer(good))  # 429
            async with connect(relay.ws_url, protocols=("relay.v1", f"bearer.{API_KEY}")) as feed:
                await forbidden(feed, "book.BTC-USD", 1)
            for token in bad:
                await relay_refuses(relay.ws_url, headers=bearer(token))
                await relay_refuses(relay.ws_url, protocols=("relay.v1", f"bearer.{token}"))
            await relay_refuses(relay.ws_url, protocols=(f"bearer.{good}",))  # no relay.v1
            await relay_refuses(relay.ws_url, headers={"Authorization": f"Basic {good}"})
            async with connect(relay.ws_url, headers=bearer(short)) as feed:
                message = await feed.ws.receive(timeout=10)
                assert message.type is aiohttp.WSMsgType.CLOSE
    text = logs.getvalue()
    # The capture saw the events it must not leak from (or this test could not fail).
    assert '"event":"auth refused"' in text
    assert '"reason":"too_many_connections"' in text
    assert '"sub":"carol"' in text
    assert "token expired, closing" in text
    assert "GET /ws HTTP/1.1" in text  # aiohttp's access log
    for token in (good, short, API_KEY, *bad):
        for part in {token, *token.split(".")} - {""}:
            if len(part) >= 8:
                assert part not in text


async def relay_refuses(url: str, **kwargs: Any) -> None:
    error = await handshake_error(url, **kwargs)
    assert error.status in {400, 401, 429}
