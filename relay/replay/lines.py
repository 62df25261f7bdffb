"""Reading recordings line by line (plain, gzip or zip) and decoding their JSON.

Line numbers are 1-based physical lines of the (decompressed) file, so an error can
point at the line a person would open in an editor (``zcat FILE | sed -n Np``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, cast

import orjson

from relay.replay.errors import ReplayFormatError

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed by what its first bytes say (not by its name)."""
    with path.open("rb") as probe:
        magic = probe.read(4)
    if magic.startswith(_GZIP_MAGIC):
        with gzip.open(path, "rb") as stream:
            yield cast(IO[bytes], stream)
    elif magic == _ZIP_MAGIC:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise ReplayFormatError(path, None, "a zip recording must hold exactly one file")
            with archive.open(members[0]) as stream:
                yield stream
    else:
        with path.open("rb") as stream:
            yield stream


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their line numbers, newline stripped.

    A truncated or corrupt compressed stream, or bytes that are not UTF-8, are reported
    as an error at the line being read.
    """
    number = 0
    try:
        with _open(path) as raw:
            for number, line in enumerate(raw, start=1):
                text = line.decode("utf-8").rstrip("\r\n")
                if text.strip():
                    yield number, text
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise ReplayFormatError(path, number + 1, f"cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReplayFormatError(path, number, f"not UTF-8 text: {exc}") from exc


def head(path: Path, count: int = 8) -> list[str]:
    """The first ``count`` non-blank lines, for format detection; [] when unreadable."""
    lines: list[str] = []
    try:
        for _, text in numbered_lines(path):
            lines.append(text)
            if len(lines) >= count:
                break
    except ReplayFormatError:
        pass
    return lines


def seconds_to_ns(text: str) -> int:
    """Decimal seconds ("1618678133.626511") to integer nanoseconds, without float rounding."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a timestamp in seconds: {text!r}")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"corrupt JSON: {exc}") from exc


_PLAIN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)


def plain_number(text: str) -> str:
    """A JSON number's source text, as is when it is a plain decimal ("439.30" stays),
    else written out in full ("3.5e-7" -> "0.00000035"): the contract's prices and sizes
    are plain decimal strings."""
    if _PLAIN.fullmatch(text):
        return text
    return format(Decimal(text), "f")


def loads_exact(text: str) -> Any:
    """JSON with every number as a plain decimal string, its source digits kept: venues
    that send prices as JSON numbers (Kraken Futures, BitMEX) keep their own strings."""
    try:
        return json.loads(text, parse_float=plain_number, parse_int=str)
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt JSON: {exc}") from exc
