"""A token bucket for inbound client messages and connection attempts; time is passed in,
so it is pure."""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the message is over the limit."""
        elapsed = now - self._updated
        self._updated = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _at(self, now: float) -> float:
        return min(self._burst, self._tokens + max(now - self._updated, 0.0) * self._rate)

    def wait(self, now: float) -> float:
        """Seconds until ``take`` would succeed (0.0: it would now; inf: rate 0, empty)."""
        missing = 1.0 - self._at(now)
        if missing <= 0.0:
            return 0.0
        return missing / self._rate if self._rate > 0 else float("inf")

    def full(self, now: float) -> bool:
        """True once the bucket has refilled: it then remembers nothing a fresh one would
        not, so a table of buckets may forget it."""
        return self._at(now) >= self._burst
