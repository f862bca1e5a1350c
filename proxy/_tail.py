"""``stategate tail``: the last N decisions, then follow the log like ``tail -F``.

The last lines are found by reading the files backwards from the newest, so a long
log costs nothing to open.  Following polls the base path: when the file is renamed
away (rotation, by stategate or by logrotate) the rest of the old file is drained and
the new one read from its start.  When the last whole line it read is no longer where
it read it, the file was truncated in place (and perhaps written past that point
since the last poll), and it is read again from its start; when only a partial last
line went, which a restarted proxy cuts off before it writes on, it reads on from the
cut.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


from ._logfiles import SEAL_PREFIX, LogFileError, TornLine, line_number_at, log_files, rotated_files
from ._query import Filter, decode_record
from ._types import LogRecord

BLOCK = 1 << 20
POLL = 0.2
HEAD = 256  # bytes of the last whole line read that tell a rewritten file from an appended one

RED, YELLOW, DIM, RESET = "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def use_colour(stream: IO[str]) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


COLUMNS = (("time", 27), ("seq", 8), ("dir", 3), ("action", 6), ("rule", 24), ("agency", 9),
           ("groups", 16), ("mke", 3), ("fmt", 4), ("pur", 3), ("rsn", 3), ("imq", 3),
           ("shadow", 16), ("conn", 5))  # fmt: skip


def header() -> str:
    return "  ".join(f"{name:<{width}}" for name, width in COLUMNS).rstrip()


def format_row(r: LogRecord, colour: bool) -> str:
    cells = (r.ts, str(r.seq), r.dir, r.action, r.rule, r.agency or "-", ",".join(r.groups) or "-",
             r.mke or "-", r.fmt or "-", r.pur or "-", r.rsn or "-",
             "-" if r.imq is None else ("Y" if r.imq else "N"), r.shadow or "-", str(r.conn))  # fmt: skip
    text = "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS)).rstrip()
    if colour and r.action == "deny":
        return f"{RED}{text}{RESET}"
    if colour and r.action == "reject":
        return f"{YELLOW}{text}{RESET}"
    return text


def format_seal(line: bytes, colour: bool) -> str:
    text = "seal " + line.decode("ascii", "replace")
    return f"{DIM}{text}{RESET}" if colour else text


def _after_last_newline(f: IO[bytes]) -> None:
    """Put ``f`` just after its last newline (at its start if it has none)."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        size = min(BLOCK, pos)
        pos -= size
        f.seek(pos)
        i = f.read(size).rfind(b"\n")
        if i >= 0:
            f.seek(pos + i + 1)
            return
    f.seek(0)


def _last_line_head(f: IO[bytes]) -> tuple[int, bytes]:
    """Where the last line before ``f``'s position starts, and its first ``HEAD``
    bytes (of a line longer than 4 KiB, where its last 4 KiB start); keeps the
    position."""
    end = f.tell()
    begin = max(0, end - 4096)
    f.seek(begin)
    block = f.read(end - begin)
    i = block.rfind(b"\n", 0, len(block) - 1) + 1
    f.seek(end)
    return begin + i, block[i : i + HEAD]


def _backwards(path: Path, on_torn: TornLine | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number counted from the end as a negative index, line), last line first.
    A last line without its newline, torn by a write cut short, is left out, and
    ``on_torn(file, line number)`` told of it."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        _after_last_newline(f)
        pos = f.tell()  # the end of the last whole line
        if pos < size and on_torn is not None:
            on_torn(path, line_number_at(path, pos))
        rest = b""
        index = 0
        while pos > 0:
            block = min(BLOCK, pos)
            pos -= block
            f.seek(pos)
            data = f.read(block) + rest
            lines = data.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line:
                    index -= 1
                    yield index, line
        if rest:
            yield index - 1, rest


def last_lines(files: list[Path], n: int, keep: Callable[[bytes, Path, int], bool],
               on_torn: TornLine | None = None) -> list[bytes]:  # fmt: skip
    """The last ``n`` lines that ``keep(line, file, index from the end)`` accepts, in
    log order; torn last lines left out (see _backwards)."""
    found: deque[bytes] = deque()
    if n <= 0:
        return []
    for path in reversed(files):
        for index, line in _backwards(path, on_torn):
            if keep(line, path, index):
                found.appendleft(line)
                if len(found) >= n:
                    return list(found)
    return list(found)


class Printer:
    def __init__(self, flt: Filter, *, as_json: bool, seals: bool, out: IO[str] = sys.stdout) -> None:
        self.flt = flt
        self.as_json = as_json
        self.seals = seals
        self.out = out
        self.colour = not as_json and use_colour(out)
        self.header_done = False

    def accept(self, line: bytes, path: Path, lineno: int = 0) -> bool:
        if line.startswith(SEAL_PREFIX):
            return self.seals
        return self.flt(decode_record(path, lineno, line))

    def emit(self, line: bytes, path: Path) -> None:
        if self.as_json:
            self.out.write(line.decode("utf-8", "replace") + "\n")
        else:
            if not self.header_done:
                self.out.write(header() + "\n")
                self.header_done = True
            if line.startswith(SEAL_PREFIX):
                self.out.write(format_seal(line, self.colour) + "\n")
            else:
                self.out.write(format_row(decode_record(path, 0, line), self.colour) + "\n")
        self.out.flush()


def follow(base: Path, printer: Printer, *, stop: Callable[[], bool] = lambda: False) -> None:
    """Print lines appended to ``base`` until ``stop()``; survives rotation."""

    def open_base() -> tuple[IO[bytes] | None, int | None]:
        try:
            f = open(base, "rb")
        except FileNotFoundError:
            return None, None
        return f, os.fstat(f.fileno()).st_ino

    f, inode = open_base()
    partial = b""  # the last line read, not yet whole
    # Where the last whole line read starts, and its first bytes (its time, id and seq):
    # if they change, the file was rewritten, not appended to.
    last_at, last_head = 0, b""
    if f is not None:
        _after_last_newline(f)  # a line being written is printed once it is whole
        last_at, last_head = _last_line_head(f)

    def drain(fh: IO[bytes]) -> None:
        nonlocal partial, last_at, last_head
        start = fh.tell() - len(partial)
        if last_head:
            # Truncated in place (logrotate's copytruncate), whether or not written
            # past where we were since the last poll: the last line read is gone.
            fh.seek(last_at)
            if fh.read(len(last_head)) != last_head:
                partial, last_head, start = b"", b"", 0
        if partial:
            # A proxy restarted after a kill cuts a torn last line off and writes on
            # from there: if the partial line's bytes changed, read from its start.
            fh.seek(start)
            if fh.read(len(partial)) != partial:
                partial = b""
        fh.seek(start + len(partial))
        data = fh.read()
        if not data:
            return
        data = partial + data
        lines = data.split(b"\n")
        partial = lines.pop()
        if lines:
            at = len(data) - len(partial) - len(lines[-1]) - 1
            last_at, last_head = start + at, data[at : at + HEAD]
        for line in lines:
            if line and printer.accept(line, base):
                printer.emit(line, base)

    while not stop():
        if f is not None:
            drain(f)
        try:
            st = os.stat(base)
        except FileNotFoundError:
            st = None
        if st is not None and (f is None or st.st_ino != inode):
            if f is not None:
                drain(f)  # the rest of the rotated-away file
                f.close()
                # Several rotations may have passed since the last poll: read every
                # rotated file newer than the one we had open.
                rotated = rotated_files(base)
                inodes = [_inode(p) for p in rotated]
                if inode in inodes:
                    for p in rotated[inodes.index(inode) + 1 :]:
                        partial, last_head = b"", b""
                        with open(p, "rb") as fh:
                            drain(fh)
            partial, last_head = b"", b""
            f, inode = open_base()
            continue
        time.sleep(POLL)
    if f is not None:
        f.close()


def _inode(p: Path) -> int | None:
    try:
        return os.stat(p).st_ino
    except OSError:
        return None


def run_tail(log: str, n: int, follow_: bool, printer: Printer, on_torn: TornLine | None = None) -> int:
    base = Path(log)
    try:
        files = log_files(base)
    except LogFileError:
        if not follow_:
            raise
        files = []
    # Following, a last line without its newline is likely being written: it is
    # printed once whole, so it is not reported as torn.
    for line in last_lines(files, n, printer.accept, None if follow_ else on_torn):
        printer.emit(line, base)
    if follow_:
        try:
            follow(base, printer)
        except KeyboardInterrupt:
            pass
    return 0


