"""Connection caps and the connect rate (docs/limits.md): refused before the upgrade with
503 (global cap) or 429 (per address: cap or rate) and a Retry-After, counted by reason;
connections already open are not touched. X-Forwarded-For counts only from a trusted proxy.
"""

from __future__ import annotations

import asyncio

from support.rawws import RawClient, refused_upgrade

from relay.limits import LIMITS

from .harness import Stage, poll, stage

LOOPBACK_IS_A_PROXY = ("127.0.0.0/8",)


async def _still_served(client: RawClient, request_id: int) -> None:
    await client.send_text(f'{{"op": "ping", "id": {request_id}}}')
    async with asyncio.timeout(5):
        while f'"id":{request_id}'.encode() not in (await client.read_frame()).payload:
            pass


async def _open(s: Stage, count: int, forwarded: str | None = None) -> list[RawClient]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else None
    return [await RawClient.connect(s.host, s.port, headers=headers) for _ in range(count)]


async def test_the_global_cap_answers_503_and_spares_open_connections() -> None:
    async with stage(max_connections=4) as s:  # the control client holds one
        clients = await _open(s, 3)
        answer = await refused_upgrade(s.host, s.port)
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        for n, client in enumerate(clients):
            await _still_served(client, n)
        assert s.metric("relay_connections_refused_total", {"reason": "max_connections"}) == 1
        # a slot freed is a slot again
        clients.pop().close()
        await poll(lambda: len(s.relay.relay.connections) == 3)
        clients.append(await RawClient.connect(s.host, s.port))
        for client in clients:
            client.close()
        await s.assert_control_healthy()


async def test_the_per_address_cap_answers_429_per_client_behind_a_trusted_proxy() -> None:
    async with stage(max_connections_per_address=2, trusted_proxies=LOOPBACK_IS_A_PROXY) as s:
        first = await _open(s, 2, "198.51.100.1")
        answer = await refused_upgrade(s.host, s.port, {"X-Forwarded-For": "198.51.100.1"})
        assert answer.status == 429
        assert answer.headers["retry-after"] == "1"
        # another client behind the same proxy is counted apart
        second = await _open(s, 2, "6.6.6.6, 198.51.100.2")  # the left part is forgeable
        assert (
            await refused_upgrade(s.host, s.port, {"X-Forwarded-For": "1.1.1.1, 198.51.100.2"})
        ).status == 429
        for n, client in enumerate(first + second):
            await _still_served(client, n)
        assert s.metric("relay_connections_refused_total", {"reason": "max_per_address"}) == 2
        remotes = sorted(conn.remote for conn in s.relay.relay.connections)
        assert remotes == ["127.0.0.1", *["198.51.100.1"] * 2, *["198.51.100.2"] * 2]
        for client in first + second:
            client.close()
        await s.assert_control_healthy()


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    async with stage(max_connections_per_address=3) as s:  # no trusted proxies
        clients = await _open(s, 2, "198.51.100.7")  # with the control: 3 from 127.0.0.1
        answer = await refused_upgrade(s.host, s.port, {"X-Forwarded-For": "198.51.100.8"})
        assert answer.status == 429
        assert {conn.remote for conn in s.relay.relay.connections} == {"127.0.0.1"}
        for client in clients:
            client.close()
        await s.assert_control_healthy()


async def test_the_connect_rate_answers_429_with_retry_after() -> None:
    async with stage(connect_rate=0.2, connect_burst=3, trusted_proxies=LOOPBACK_IS_A_PROXY) as s:
        for client in await _open(s, 3, "203.0.113.5"):  # the burst; each leaves at once
            client.close()
        answer = await refused_upgrade(s.host, s.port, {"X-Forwarded-For": "203.0.113.5"})
        assert answer.status == 429
        assert answer.headers["retry-after"] == "5"  # one token at 0.2/s
        # hammering does not lock out anybody else
        for _ in range(20):
            assert (
                await refused_upgrade(s.host, s.port, {"X-Forwarded-For": "203.0.113.5"})
            ).status == 429
        other = await _open(s, 1, "203.0.113.6")
        await _still_served(other[0], 1)
        other[0].close()
        assert s.metric("relay_connections_refused_total", {"reason": "connect_rate"}) == 21
        await s.assert_control_healthy()


async def test_many_refusals_leave_the_counts_exact() -> None:
    """Refused and closed connections give their slots back: after a storm of attempts
    against a full relay, the admission tables hold exactly the open connections."""
    async with stage(max_connections=3, max_connections_per_address=2) as s:
        clients = await _open(s, 1)  # the control + 1: the address is full

        async def attempt() -> int:
            return (await refused_upgrade(s.host, s.port)).status

        statuses = await asyncio.gather(*(attempt() for _ in range(50)))
        assert set(statuses) == {429}
        clients[0].close()
        await poll(lambda: len(s.relay.relay.connections) == 1)
        admission = s.relay.app[LIMITS].admission
        await poll(lambda: admission.open_total == 1)
        assert admission.open == {"127.0.0.1": 1}
        await s.assert_control_healthy()


async def test_with_auth_on_the_limits_answer_before_the_token_is_looked_at() -> None:
    """Origin and connect-rate refusals come first: a client without a token, or guessing
    tokens, is refused by the limits (and counted there) before any verification."""
    async with stage(
        auth=True,
        jwt_secrets="s" * 32,
        public_channels=("book.*",),  # the control client reads anonymously
        allowed_origins=("https://app.example.com",),
        connect_rate=0.1,
        connect_burst=2,
        trusted_proxies=LOOPBACK_IS_A_PROXY,
    ) as s:
        evil = await refused_upgrade(s.host, s.port, {"Origin": "https://evil.example.com"})
        assert evil.status == 403
        guesses = [
            await refused_upgrade(
                s.host,
                s.port,
                {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer guess-{n}"},
            )
            for n in range(5)
        ]
        assert [answer.status for answer in guesses] == [401, 401, 429, 429, 429]
        assert s.metric("relay_connections_refused_total", {"reason": "origin"}) == 1
        assert s.metric("relay_connections_refused_total", {"reason": "connect_rate"}) == 3
        await s.assert_control_healthy()
