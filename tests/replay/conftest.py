"""Shared fixtures: where the exchange recordings are, and each recording verified once.

The recordings are not in the repo (their terms forbid republishing them): they are read
from ``../shared/data/market`` next to the repo, or from ``$RELAY_MARKET_DATA``. Tests that
need them skip, saying so, when the directory is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.replay.checks import Verifier
from relay.replay.recordings import recordings

_DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "market"
MARKET = Path(os.environ.get("RELAY_MARKET_DATA", _DEFAULT))

_verified: dict[str, dict[str, Verifier]] = {}


def market_path(*parts: str) -> Path:
    """A path under the recordings directory; skips the test when it is not there."""
    path = MARKET.joinpath(*parts)
    if not MARKET.is_dir():
        pytest.skip(f"market recordings not found at {MARKET} (set RELAY_MARKET_DATA)")
    if not path.exists():
        pytest.skip(f"recording {path} not found")
    return path


def verified(directory: str, venue: str) -> Verifier:
    """The Verifier run over a venue's files in a recordings directory, once per session
    (every venue found there is verified on the first call, each in its own Verifier)."""
    path = market_path(directory)
    if directory not in _verified:
        _verified[directory] = {
            recording.venue: Verifier().feed_all(recording.events())
            for recording in recordings([path])
        }
    return _verified[directory][venue]
