"""relay.auth.Admission's expiry timer, on its own: fires once, at exp, never before;
a far exp is reached through re-armed timers; a released admission never fires."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from relay import auth
from relay.core.auth import ALL_CHANNELS, ChannelAccess, Grant, Method


@dataclass
class Conn:
    access: ChannelAccess = ALL_CHANNELS


def admission(expires_at: float | None) -> auth.Admission:
    grant = Grant(Method.JWT, "alice", ALL_CHANNELS, None, expires_at, "jwt:0")
    return auth.Admission(grant, ALL_CHANNELS, False, None)


async def test_a_far_exp_is_reached_in_steps_and_fires_once_never_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "_MAX_TIMER", 0.02)
    expires_at = time.time() + 0.15
    fired: list[float] = []
    arms = 0

    def clock() -> float:  # read once per (re-)arming
        nonlocal arms
        arms += 1
        return time.time()

    entry = admission(expires_at)
    entry.expire_with(clock, lambda conn: fired.append(time.time()), Conn())
    async with asyncio.timeout(5):
        while not fired:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(fired) == 1
    assert fired[0] >= expires_at
    assert arms >= 5  # 0.15 s in steps of at most 0.02 s


async def test_a_released_admission_never_fires() -> None:
    fired: list[Conn] = []
    entry = admission(time.time() + 0.05)
    entry.expire_with(time.time, fired.append, Conn())
    entry.release()
    entry.release()  # idempotent
    await asyncio.sleep(0.15)
    assert fired == []


async def test_an_exp_already_past_fires_at_once_and_none_never() -> None:
    fired: list[Conn] = []
    conn = Conn()
    admission(time.time() - 1).expire_with(time.time, fired.append, conn)
    assert fired == [conn]
    admission(None).expire_with(time.time, fired.append, Conn())
    await asyncio.sleep(0.05)
    assert fired == [conn]
