"""The recording format cryptofeed writes (``sample_data/<VENUE>.ws.*``), shared by several
venues: one line per event.

- ``<url> <-> <unix ts>``: the connection opened;
- ``<url> <- <unix ts>: <JSON>``: a message the client sent (a subscription);
- ``<unix ts>: <JSON>``: a message received, exactly as the exchange sent it.

Blank lines are ignored. Times are local receive times in decimal seconds. Each file is one
connection, so each gets its own parser state; files are merged by receive time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from relay.replay.errors import at_line
from relay.replay.events import Event
from relay.replay.lines import loads, numbered_lines, seconds_to_ns

Handler = Callable[[int, Any], list[Event]]


def messages(path: Path) -> Iterator[tuple[int, int, str]]:
    """(line, receive time ns, JSON text) of each message received."""
    for number, text in numbered_lines(path):
        if " <-> " in text or " <- " in text:
            continue
        stamp, sep, body = text.partition(": ")
        with at_line(path, number):
            if not sep:
                raise ValueError("expected '<unix ts>: <JSON>'")
            recv_ns = seconds_to_ns(stamp)
        yield number, recv_ns, body


def _file_events(
    path: Path, new_handler: Callable[[], Handler], decode: Callable[[str], Any]
) -> Iterator[Event]:
    handle = new_handler()
    for number, recv_ns, text in messages(path):
        with at_line(path, number):
            out = handle(recv_ns, decode(text))
        yield from out


def events(
    paths: Sequence[Path], new_handler: Callable[[], Handler], decode: Callable[[str], Any] = loads
) -> Iterator[Event]:
    """Events of every file, a fresh ``new_handler()`` per file, merged by receive time."""
    streams = [_file_events(path, new_handler, decode) for path in paths]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda event: event.recv_ns)


def url(lines: Sequence[str]) -> str:
    """The URL of the connection line that opens a cryptofeed file, or ""."""
    if lines and " <-> " in lines[0]:
        return lines[0].split(" ", 1)[0]
    return ""
