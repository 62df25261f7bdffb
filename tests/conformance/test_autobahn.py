"""RFC 6455 conformance, judged by Autobahn|Testsuite's fuzzing client (docs/conformance.md).

Two runs, each against a relay on the in-memory source:

- Every case against ``/echo`` (``RELAY_TEST_ECHO``): /ws's WebSocket, built by the same code
  (``relay.server.accept_websocket``: same heartbeat, compression off, same frame limit
  knob), answering each message with itself, which is how most cases judge a server.
- Against ``/ws`` itself, with the default limits: the cases of the groups that do not need
  an echo (ping/pong 2, reserved bits 3, opcodes 4, fragmentation 5, UTF-8 6, close handling
  7) whose every accepted outcome has the server send no data message. /ws answers any
  well-formed message with a reply of its own (a JSON error for Autobahn's payloads), which
  Autobahn would count as a wrong echo; the cases kept are those where the peer must fail the
  connection (1002, 1007) before any message counts, or that only exchange pings, pongs and
  close frames. The /ws test checks that rule against Autobahn's own expectations, case by
  case.

Verdicts: ``behavior`` is never FAILED, except a case named in UPSTREAM_BUGS; NON-STRICT is
accepted (aiohttp checks UTF-8 when a fragmented message is complete, not at the first bad
fragment: 6.4.1-6.4.4, allowed by the RFC); INFORMATIONAL is Autobahn's own "no verdict"
(7.1.6, 7.13.*); UNIMPLEMENTED only for permessage-deflate (12.*, 13.*: the relay declines
the offer, compression is off by design). ``behaviorClose`` must be OK or INFORMATIONAL:
a wrong close code (WRONG CODE), an unclean close or one left to the client fail the test,
so the close codes for protocol errors (1002), invalid UTF-8 (1007) are checked here.

Performance cases 9.* (messages up to 16 MiB, 4 MiB in 64-byte fragments, 1000 round trips)
are included: measured on a 2-core machine, the whole /echo run takes ~22 s (9.* ~16 s of
it), the /ws run ~9 s; the compression groups, declined at once, take under 2 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest
from support.relay import RunningRelay, running_relay

from relay.source.memory import MemorySource, MemoryStore

from .wstest import (
    FAILED,
    INFORMATIONAL,
    NON_STRICT,
    OK,
    UNIMPLEMENTED,
    CaseResult,
    fuzz,
    tally,
    wstest,
)

# Cases that fail because of a bug in aiohttp, with the upstream fix. Each must still fail
# exactly as described: once aiohttp ships the fix, the test says to remove the entry.
UPSTREAM_BUGS: dict[str, tuple[str, str]] = {
    # A close frame carrying 1006 (reserved, never sent on the wire: RFC 6455 7.4.1) is
    # accepted and answered with 1000 instead of failing with 1002: aiohttp's
    # ALLOWED_CLOSE_CODES is built from WSCloseCode, which includes ABNORMAL_CLOSURE.
    # Fixed upstream by https://github.com/aio-libs/aiohttp/pull/13536 (merged 2026-08-24,
    # not in aiohttp 3.14.5).
    "7.9.5": ("https://github.com/aio-libs/aiohttp/pull/13536", "WRONG CODE"),
}

# 9.1.6 and 9.2.6 send 16 MiB messages: the echo run raises RELAY_MAX_FRAME_BYTES to that
# (the knob, not a different code path); /ws runs with the default.
LARGEST_MESSAGE = 16 * 2**20
COMPRESSION = ("12.", "13.")

# /ws: the cases that need no echo (see the module docstring), by group.
WS_CASES = [
    # 2: pings get pongs, unsolicited pongs are ignored, a ping over 125 bytes fails (1002).
    "2.*",
    # 3: reserved bits set: fail (1002). 3.2-3.4 send a valid message first (echo expected).
    "3.1",
    "3.5",
    "3.6",
    "3.7",
    # 4: reserved opcodes: fail (1002). 4.1.3-4.1.5 and 4.2.3-4.2.5 expect an echo first.
    "4.1.1",
    "4.1.2",
    "4.2.1",
    "4.2.2",
    # 5: fragmented control frames, continuations with nothing to continue, a text frame
    # inside a fragmented message: fail (1002). 5.3-5.8, 5.15, 5.19, 5.20 expect an echo.
    "5.1",
    "5.2",
    "5.9",
    "5.10",
    "5.11",
    "5.12",
    "5.13",
    "5.14",
    "5.16",
    "5.17",
    "5.18",
    # 6: invalid UTF-8, whole or fragmented: fail (1007). The valid sequences (6.1, 6.2,
    # 6.5, 6.7, 6.9, 6.22, 6.23, and the valid ones of 6.6 and 6.11) expect an echo.
    "6.3.*",
    "6.4.*",
    "6.6.1",
    "6.6.3",
    "6.6.4",
    "6.6.6",
    "6.6.8",
    "6.6.10",
    "6.8.*",
    "6.10.*",
    "6.11.5",
    "6.12.*",
    "6.13.*",
    "6.14.*",
    "6.15.*",
    "6.16.*",
    "6.17.*",
    "6.18.*",
    "6.19.*",
    "6.20.*",
    "6.21.*",
    # 7: the closing handshake: nothing is processed after a close, close payloads and codes
    # are validated (1002, 1007). 7.1.1 and 7.1.6 send a message before closing (echo).
    "7.1.2",
    "7.1.3",
    "7.1.4",
    "7.1.5",
    "7.3.*",
    "7.5.*",
    "7.7.*",
    "7.9.*",
    "7.13.*",
]
WS_CASE_COUNT = 140  # what WS_CASES selects in autobahntestsuite 25.10.1


def assert_conformant(results: Mapping[str, CaseResult]) -> None:
    problems: list[str] = []
    for case, r in results.items():
        if case in UPSTREAM_BUGS:
            link, close_verdict = UPSTREAM_BUGS[case]
            if (r.behavior, r.behavior_close) != (FAILED, close_verdict):
                problems.append(
                    f"{case} no longer fails as the upstream bug did ({link}): "
                    f"remove it from UPSTREAM_BUGS. Now: {r.explain()}"
                )
            continue
        compression = case.startswith(COMPRESSION)
        allowed = {UNIMPLEMENTED} if compression else {OK, NON_STRICT, INFORMATIONAL}
        if r.behavior not in allowed or r.behavior_close not in {OK, INFORMATIONAL}:
            problems.append(r.explain())
    assert not problems, (
        f"{len(problems)} of {len(results)} cases:\n" + "\n".join(problems) + f"\n{tally(results)}"
    )


async def wait_no_connections(running: RunningRelay, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while running.relay.connections or running.metric("relay_connections") != 0:
            await asyncio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_the_echo_route_passes_the_whole_suite(tmp_path: Path) -> None:
    wstest()
    async with running_relay(
        MemorySource(MemoryStore()), test_echo=True, max_frame_bytes=LARGEST_MESSAGE
    ) as running:
        results = await fuzz(f"ws://127.0.0.1:{running.config.port}/echo", tmp_path, ["*"])
    assert_conformant(results)
    groups = {case.split(".")[0] for case in results}
    assert groups == {str(g) for g in (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)}, groups
    # The counts docs/conformance.md gives; printed with -s or on failure.
    print(f"/echo: {len(results)} cases {tally(results)}")


@pytest.mark.timeout(300)
async def test_ws_passes_the_cases_that_need_no_echo(tmp_path: Path) -> None:
    wstest()
    async with running_relay(MemorySource(MemoryStore())) as running:
        results = await fuzz(running.ws_url.replace("http://", "ws://"), tmp_path, WS_CASES)
        # Every hostile connection is gone: none left in the relay's table or its gauge.
        await wait_no_connections(running)
    assert len(results) == WS_CASE_COUNT, sorted(results)
    needs_echo = [case for case, r in results.items() if r.expects_a_message()]
    assert not needs_echo, f"cases that judge /ws by an echo it does not give: {needs_echo}"
    assert_conformant(results)
    print(f"/ws: {len(results)} cases {tally(results)}")
