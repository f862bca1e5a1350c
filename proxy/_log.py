"""The decision log writer (SPEC section 6): JSON Lines, written before forwarding.

Every batch of records is encoded in one msgspec call and handed to the operating
system in one ``write`` before any of its messages is forwarded.  A write that fails
(disk full, I/O error) is undone to the last whole line and raised as
:class:`LogUnavailable`, so the caller can fail closed: what is not logged is not
forwarded.

Seals and rotation are added by their own issue; see the README.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ._types import LogRecord

_TAIL = 1 << 16


class LogUnavailable(OSError):
    """The log cannot take a line right now; nothing of the batch was kept."""


def last_seq(path: str | Path) -> int:
    """The highest ``seq`` among the last lines of an existing log, else 0, so that
    numbering goes on across restarts."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("seq"), int):
            return obj["seq"]
    return 0


class DecisionLog:
    """Appends records to ``path``; ``errors`` counts failed writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._encoder = msgspec.json.Encoder()
        self.errors = 0
        self.lines = 0

    def write(self, records: list[LogRecord]) -> None:
        data = self._encoder.encode_lines(records)
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            self.errors += 1
            if written:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass
            raise LogUnavailable(exc.errno, f"cannot write {self.path}: {exc.strerror}") from exc
        self._size += written
        self.lines += len(records)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
