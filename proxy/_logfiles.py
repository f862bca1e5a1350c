"""Finding and reading the files of one decision log.

A log named by its base path is the base file and all its rotated files
(``<path>.<n>``), oldest first.  Rotated files are ordered by the first sequence number
they hold, not by name, so both stategate's own rotation (``.1`` oldest, numbers
growing) and logrotate's (``.1`` newest, numbers shifting) read in the right order.
The base file is always the newest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

SEAL_PREFIX = b'{"seal":'
ZERO_HASH = "0" * 64

#: Told of a last line without its newline (a write cut short by a kill or a crash, or
#: one still under way), which readers leave out: (file, line number).
TornLine = Callable[[Path, int], None]


class LogFileError(Exception):
    """A log that is not there (no file, no rotated files; or a directory).  A file
    that cannot be opened or read raises OSError, which the CLI reports."""


class _SeqOnly(msgspec.Struct):
    seq: int


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


def first_seq(path: Path) -> int | None:
    """The seq of the first decision line in a file, or None."""
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(SEAL_PREFIX):
                continue
            try:
                return _seq_decoder.decode(line).seq
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
    return None


def rotated_files(base: Path) -> list[Path]:
    """The rotated files of ``base``, oldest first."""
    pattern = re.compile(re.escape(base.name) + r"\.(\d+)")
    found: list[tuple[int, int, Path]] = []
    parent = base.parent if str(base.parent) else Path(".")
    if not parent.is_dir():
        return []
    for p in parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file():
            seq = first_seq(p)
            found.append((seq if seq is not None else -1, int(m.group(1)), p))
    # Files without decision lines sort first; ties by number.
    found.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in found]


def max_rotation_number(base: Path) -> int:
    pattern = re.compile(re.escape(base.name) + r"\.(\d+)")
    parent = base.parent if str(base.parent) else Path(".")
    numbers = [int(m.group(1)) for p in parent.iterdir() if (m := pattern.fullmatch(p.name))] \
        if parent.is_dir() else []  # fmt: skip
    return max(numbers, default=0)


def log_files(base: str | Path) -> list[Path]:
    """All files of the log at ``base``, oldest first; LogFileError if there are none."""
    base = Path(base)
    files = rotated_files(base)
    if base.is_file():
        files.append(base)
    if not files:
        if base.is_dir():
            raise LogFileError(f"{base}: a directory, not a log: give the log file's path")
        raise LogFileError(f"{base}: no such log (neither the file nor rotated files exist)")
    return files


def expand(paths: list[str]) -> list[Path]:
    """Command arguments to files: a base path expands to its rotated files too, and a
    file named explicitly is taken as it is.  Duplicates are dropped, order kept."""
    out: list[Path] = []
    for arg in paths:
        for p in log_files(arg):
            if p not in out:
                out.append(p)
    return out


def line_number_at(path: Path, offset: int) -> int:
    """The 1-based number of the line that starts at byte ``offset`` of ``path``."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def iter_lines(files: list[Path], on_torn: TornLine | None = None
               ) -> Iterator[tuple[Path, int, bytes]]:  # fmt: skip
    """(file, 1-based line number, line without its newline), in log order.  A last
    line without its newline, torn by a write cut short, is left out, and
    ``on_torn(file, line number)`` told of it."""
    for path in files:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    if on_torn is not None:
                        on_torn(path, n)
                    break
                yield path, n, line[:-1]
