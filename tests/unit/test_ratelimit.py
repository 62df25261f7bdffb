"""relay.core.ratelimit: a token bucket driven by the time the caller passes in."""

from __future__ import annotations

from relay.core.ratelimit import TokenBucket


def takes(bucket: TokenBucket, now: float, count: int) -> list[bool]:
    return [bucket.take(now) for _ in range(count)]


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0, now=100.0)
    assert takes(bucket, 100.0, 6) == [True] * 5 + [False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    assert takes(bucket, 0.0, 3) == [True, True, False]
    assert bucket.take(0.125) is False  # half a token
    assert bucket.take(0.25) is True  # the half plus another half
    assert bucket.take(0.25) is False
    assert takes(bucket, 0.75, 3) == [True, True, False]  # two tokens in 0.5 s


def test_refused_messages_do_not_cost_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    assert bucket.take(0.0) is True
    assert takes(bucket, 0.5, 10) == [False] * 10
    assert bucket.take(1.0) is True


def test_an_idle_bucket_holds_no_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert takes(bucket, 0.0, 3) == [True] * 3
    assert takes(bucket, 3600.0, 4) == [True] * 3 + [False]


def test_a_steady_sender_at_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(rate=2.0, burst=1.0, now=0.0)
    assert all(bucket.take(i * 0.5) for i in range(1000))


def test_a_sender_over_the_rate_gets_the_rate_through() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    # 8 messages a second for 10 s (t = 0 .. 9.875): the burst of 4, then 2 per second.
    allowed = sum(bucket.take(i * 0.125) for i in range(80))
    assert allowed == 4 + int(9.875 * 2)


def test_wait_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket(rate=4.0, burst=1.0, now=0.0)
    assert bucket.wait(0.0) == 0.0
    assert bucket.take(0.0) is True
    assert bucket.wait(0.0) == 0.25
    assert bucket.wait(0.125) == 0.125
    assert bucket.wait(0.25) == 0.0


def test_a_bucket_is_full_again_after_burst_over_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    assert bucket.full(0.0) is True
    assert takes(bucket, 0.0, 4) == [True] * 4
    assert bucket.full(1.9) is False
    assert bucket.full(2.0) is True
