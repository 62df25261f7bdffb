"""One parser per venue; ``PARSERS`` maps a venue name to its ``events(paths)``, and
``detect`` tells which venue a file comes from.

Detection reads the file's first lines (the content decides); the file and directory
names are the fallback when the content alone does not (``spot_btcusdt_20240808.gz``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from relay.replay.errors import ReplayFormatError
from relay.replay.events import Event
from relay.replay.lines import head
from relay.replay.venues import (
    binance,
    bitmex,
    bybit,
    coinbase,
    kraken,
    krakenfutures,
    okx,
)

Parser = Callable[[Sequence[Path]], Iterator[Event]]

PARSERS: dict[str, Parser] = {
    binance.SPOT: functools.partial(binance.events, venue=binance.SPOT),
    binance.USDM: functools.partial(binance.events, venue=binance.USDM),
    binance.COINM: functools.partial(binance.events, venue=binance.COINM),
    kraken.VENUE: kraken.events,
    okx.VENUE: okx.events,
    coinbase.VENUE: coinbase.events,
    krakenfutures.VENUE: krakenfutures.events,
    bybit.VENUE: bybit.events,
    bitmex.VENUE: bitmex.events,
}

_BY_CONTENT: tuple[tuple[str, Callable[[Sequence[str]], bool]], ...] = (
    (kraken.VENUE, kraken.sniff),
    (okx.VENUE, okx.sniff),
    (coinbase.VENUE, coinbase.sniff),
    (krakenfutures.VENUE, krakenfutures.sniff),
    (bitmex.VENUE, bitmex.sniff),
    (bybit.VENUE, bybit.sniff),
)

# Names as the recordings' sources spell them (hftbacktest examples renamed
# <market>_<name>, cryptofeed sample_data, Bybit's historical download).
_BY_NAME: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^spot_"), binance.SPOT),
    (re.compile(r"^usdm_"), binance.USDM),
    (re.compile(r"^(cm|coinm)_"), binance.COINM),
    (re.compile(r"^KRAKEN_FUTURES\.|krakenfutures", re.I), krakenfutures.VENUE),
    (re.compile(r"^KRAKEN\.|^kraken", re.I), kraken.VENUE),
    (re.compile(r"^(OKEX|OKX)\.|^okx", re.I), okx.VENUE),
    (re.compile(r"^COINBASE\.|^coinbase", re.I), coinbase.VENUE),
    (re.compile(r"^BITMEX\.|^bitmex", re.I), bitmex.VENUE),
    (re.compile(r"ob\d+\.data|^bybit", re.I), bybit.VENUE),
)


def detect(path: Path) -> str:
    """The venue a recording file comes from; ReplayFormatError naming it if none fits."""
    lines = head(path)
    for venue, sniff in _BY_CONTENT:
        if sniff(lines):
            return venue
    market = binance.sniff(lines)
    if market is not None:
        # The stream names say spot or futures only through field details; a name that
        # says the market is more specific when there is one.
        named = _by_name(path)
        return named if named in binance.VENUES else market
    named = _by_name(path)
    if named is not None and lines:
        return named
    first = lines[0][:80] if lines else "(no readable lines)"
    raise ReplayFormatError(path, None, f"unknown recording format, starting {first!r}")


def _by_name(path: Path) -> str | None:
    for name in (path.name, path.parent.name):
        for pattern, venue in _BY_NAME:
            if pattern.search(name):
                return venue
    return None
