"""From command-line paths to one stream of events: expand directories, detect each file's
venue, parse each venue's files together, and merge the venues.

Recordings of different venues were made at different times (2021, 2024): replaying them
side by side at recorded speed would wait years between them. So ``aligned`` shifts each
venue's stream to start at offset 0 and merges by offset; the events keep their own
recorded times.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.replay.errors import ReplayFormatError
from relay.replay.events import Event
from relay.replay.venues import PARSERS, detect

# Not recordings: documentation next to the data, and archives whose content sits
# unpacked beside them (bybit_nautilus keeps the zip and the unzipped file); name a zip
# on the command line to replay it.
_SKIPPED_SUFFIXES = {".md", ".txt", ".zip"}


@dataclass(frozen=True, slots=True)
class Recording:
    venue: str
    files: tuple[Path, ...]

    def events(self) -> Iterator[Event]:
        return PARSERS[self.venue](self.files)


def expand(paths: Iterable[Path | str]) -> list[Path]:
    """Files named, and the files under directories named (recursively, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not p.name.startswith(".")
                    and p.suffix.lower() not in _SKIPPED_SUFFIXES
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            raise ReplayFormatError(path, None, "no such file or directory")
    return list(dict.fromkeys(files))  # a file named twice is replayed once


def recordings(paths: Iterable[Path | str], venue: str | None = None) -> list[Recording]:
    """The files grouped by venue (detected unless ``venue`` is given), in first-seen order."""
    if venue is not None and venue not in PARSERS:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(sorted(PARSERS))}")
    groups: dict[str, list[Path]] = {}
    for path in expand(paths):
        groups.setdefault(venue or detect(path), []).append(path)
    return [Recording(name, tuple(files)) for name, files in groups.items()]


def aligned(streams: Sequence[Iterator[Event]]) -> Iterator[tuple[int, Event]]:
    """(offset ns from its stream's first event, event), all streams merged by offset."""

    def shifted(stream: Iterator[Event]) -> Iterator[tuple[int, Event]]:
        start: int | None = None
        for event in stream:
            if start is None:
                start = event.recv_ns
            yield event.recv_ns - start, event

    return heapq.merge(*(shifted(s) for s in streams), key=lambda pair: pair[0])
