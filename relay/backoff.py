"""Capped exponential backoff with full jitter (retries spread out, never synchronised)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        # The exponent stops growing once the cap is reached: 2**1024 overflows a float.
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempts, 64))
        self.attempts += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempts = 0
