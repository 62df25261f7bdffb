"""The relay's book checksum: CRC32 over the top levels, carried on every book frame.

The text is the top ``depth`` levels of each side interleaved, best first, each level as
the producer's own price and size strings, all joined with ":":

    bid1_price:bid1_size:ask1_price:ask1_size:bid2_price:bid2_size:...

When one side has fewer than ``depth`` levels the other side's levels go on alone. The
checksum is zlib's CRC32 of that text in ASCII, as an unsigned 32-bit integer. An empty
book has the checksum 0 (the CRC32 of no bytes). docs/protocol.md gives a worked example.
"""

from __future__ import annotations

import zlib

from relay.core.book import Book, Level

DEFAULT_DEPTH = 10


def checksum_text(bids: list[Level], asks: list[Level], depth: int = DEFAULT_DEPTH) -> str:
    parts: list[str] = []
    for i in range(depth):
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    return ":".join(parts)


def book_checksum(book: Book, depth: int = DEFAULT_DEPTH) -> int:
    text = checksum_text(book.bid_levels(depth), book.ask_levels(depth), depth)
    return zlib.crc32(text.encode("ascii"))
