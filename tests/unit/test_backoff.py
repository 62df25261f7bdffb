"""relay.backoff: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest

from relay.backoff import Backoff


class Highest(random.Random):
    """Always draws the top of the range, so the ceiling itself is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_delays_are_capped_powers_of_two_at_most() -> None:
    backoff = Backoff(0.1, 2.0, rng=Highest())
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_full_jitter_can_go_down_to_zero() -> None:
    backoff = Backoff(0.1, 2.0, rng=Lowest())
    assert [backoff.next_delay() for _ in range(5)] == [0.0] * 5


@pytest.mark.parametrize("seed", range(20))
def test_random_delays_stay_within_zero_and_the_capped_ceiling(seed: int) -> None:
    base, cap = 0.05, 3.0
    backoff = Backoff(base, cap, rng=random.Random(seed))
    for n in range(40):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= min(cap, base * 2**n)


def test_delays_spread_out_across_the_range() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.Random(1234))
    delays = [backoff.next_delay() for _ in range(200)]
    assert min(delays) < 0.25
    assert max(delays) > 0.75


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(0.1, 5.0, rng=Highest())
    for _ in range(6):
        backoff.next_delay()
    assert backoff.next_delay() == pytest.approx(5.0)
    backoff.reset()
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])


def test_a_long_outage_keeps_delays_at_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, rng=Highest())
    # 1100 failed attempts: about 45 minutes of Redis outage at the relay's defaults.
    delays = [backoff.next_delay() for _ in range(1100)]
    assert delays[-1] == pytest.approx(5.0)
