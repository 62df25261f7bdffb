"""The one error a recording can raise: it names the file and the line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class ReplayFormatError(Exception):
    """A recording that cannot be replayed: unknown format, corrupt line, broken sequence.

    Not a ValueError on purpose: parsers turn ValueError/KeyError/... raised while reading
    a line into this error, and must not wrap one of these a second time.
    """

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


@contextlib.contextmanager
def at_line(path: Path, line: int) -> Iterator[None]:
    """Report anything that goes wrong while handling one line as that line's error."""
    try:
        yield
    except ReplayFormatError:
        raise
    except KeyError as exc:
        raise ReplayFormatError(path, line, f"missing field {exc}") from exc
    except ValueError as exc:  # parsers say what is wrong in the message
        raise ReplayFormatError(path, line, str(exc)) from exc
    except (TypeError, IndexError, AttributeError) as exc:  # a field of the wrong shape
        raise ReplayFormatError(path, line, f"unexpected message shape ({exc})") from exc
