"""``stategate verify``: check the seal chain of a decision log.

Sealed blocks are hashed whole, so a good log is checked at the speed of SHA-256.
When a block fails, it is read again line by line to name the first line that breaks
it: a sequence number out of place (a line deleted, inserted or moved), a line that is
not a record, or, when every line looks in place, the seal itself (a line altered).
Lines after the last seal are reported as unsealed, which is what a killed proxy
leaves, and are not a break.  Nor is a torn last line (no newline at the end) of the
newest file: a proxy killed, or a machine that lost power, in the middle of a write
leaves one, and since the message waited for that write it was never forwarded.  It is
reported as torn.  Cutting a log short mid-line proves no more than cutting it at a
line's end, which leaves unsealed lines, so nothing is lost to tamper evidence.  A
torn line in any older file is a break: a rotated file ends with a seal.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ._fastmatch import seal_scan
from ._log import Seal, new_hasher
from ._logfiles import SEAL_PREFIX, ZERO_HASH

CHUNK = 1 << 23


class _Seq(msgspec.Struct):
    seq: int


_seq = msgspec.json.Decoder(_Seq)
_seal = msgspec.json.Decoder(Seal)


class Break(msgspec.Struct):
    file: str
    line: int
    reason: str


class VerifyResult(msgspec.Struct):
    files: list[str]
    lines: int = 0
    seals: int = 0
    unsealed: int = 0
    unsealed_from: str | None = None  # "file:line" of the first unsealed line
    torn: str | None = None  # "file:line" of a torn last line (cut short mid-write)
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


def _line_seq(line: bytes) -> int | None:
    try:
        return _seq.decode(line).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Block:
    """Where the current run of decision lines (since the last seal) began."""

    __slots__ = ("file_index", "line", "offset", "first_seq")

    def __init__(self, file_index: int, line: int, offset: int, first_seq: int | None) -> None:
        self.file_index = file_index
        self.line = line
        self.offset = offset
        self.first_seq = first_seq


class _Verifier:
    def __init__(self, files: list[Path], key: bytes | None) -> None:
        self.files = files
        self.key = key
        self.n = 0
        self.prev = ZERO_HASH
        self.hasher = new_hasher(ZERO_HASH, key)
        self.block_lines = 0
        self.block: _Block | None = None
        self.next_seq: int | None = None  # seq the next decision line must carry
        self.result = VerifyResult(files=[str(f) for f in files])

    # ---------------------------------------------------------------- scanning

    def run(self) -> VerifyResult:
        r = self.result
        for index, path in enumerate(self.files):
            brk = self._file(index, path)
            if brk is not None:
                r.broken = brk
                return r
        if self.block_lines and self.block is not None:
            r.unsealed = self.block_lines
            r.unsealed_from = f"{self.files[self.block.file_index]}:{self.block.line}"
            # Unsealed lines cannot be proven, but they must still be in order.
            r.broken = self._first_bad_line(None, 0)
        return r

    def _file(self, index: int, path: Path) -> Break | None:
        lineno = 0
        offset = 0
        carry = b""
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                data = carry + chunk
                if not chunk:
                    if not data:
                        return None
                    if index == len(self.files) - 1:
                        self.result.torn = f"{path}:{lineno + 1}"
                        return None
                    return Break(str(path), lineno + 1, "truncated line (no newline at the end)")
                end = data.rfind(b"\n") + 1
                carry = data[end:]
                brk = self._chunk(index, path, data, end, lineno, offset)
                if brk is not None:
                    return brk
                lineno += data.count(b"\n", 0, end)
                offset += end

    def _chunk(self, index: int, path: Path, data: bytes, end: int, lineno: int, offset: int) -> Break | None:
        r = self.result
        view = memoryview(data)
        pos = 0
        while pos < end:
            if data.startswith(SEAL_PREFIX, pos):
                seal_at, n = pos, 0
            else:  # one pass in C: the next seal line, and the newlines before it
                seal_at, n = seal_scan(data, pos, end)
            if seal_at > pos:  # decision lines in [pos, seal_at)
                if self.block is None:
                    first = data[pos : data.find(b"\n", pos)]
                    self.block = _Block(index, lineno + 1, offset + pos, _line_seq(first))
                self.hasher.update(view[pos:seal_at])
                self.block_lines += n
                r.lines += n
                lineno += n
                pos = seal_at
            if pos < end:  # a seal line at pos
                nl = data.find(b"\n", pos)
                lineno += 1
                brk = self._seal(path, lineno, data[pos:nl])
                if brk is not None:
                    return brk
                r.seals += 1
                pos = nl + 1
        return None

    # ------------------------------------------------------------------ seals

    def _seal(self, path: Path, lineno: int, line: bytes) -> Break | None:
        try:
            seal = _seal.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._first_bad_line(path, lineno) or Break(str(path), lineno, "unreadable seal record")
        why = None
        if seal.seal != self.n + 1:
            why = f"seal {seal.seal} where {self.n + 1} was expected (a seal removed or added)"
        elif seal.prev != self.prev:
            why = f"seal {seal.seal}: prev does not match seal {self.n}'s hash (chain broken)"
        elif seal.lines != self.block_lines:
            why = f"seal {seal.seal} covers {seal.lines} lines but {self.block_lines} precede it"
        elif not hmac.compare_digest(self.hasher.hexdigest(), seal.h):
            start = self.block.line if self.block else lineno
            hint = " (or the wrong --key-file)" if self.n == 0 else ""
            why = (f"seal {seal.seal} does not match lines {start}-{lineno - 1}: "
                   f"a line in that range was altered{hint}")  # fmt: skip
        if why is not None:
            return self._first_bad_line(path, lineno) or Break(str(path), lineno, why)
        # The block is good: its lines were written in order by the proxy.
        if self.block is not None:
            if self.next_seq is None and self.block.first_seq is not None:
                self.next_seq = self.block.first_seq
            if self.next_seq is not None:
                self.next_seq += self.block_lines
        self.n = seal.seal
        self.prev = seal.h
        self.hasher = new_hasher(seal.h, self.key)
        self.block_lines = 0
        self.block = None
        return None

    def _first_bad_line(self, path: Path | None, lineno: int) -> Break | None:
        """Read the current block again; the first line out of sequence, or None."""
        if self.block is None:
            return None
        expected = self.next_seq
        for p, n, line in self._block_lines(path, lineno):
            seq = _line_seq(line)
            if seq is None:
                return Break(str(p), n, "not a decision record (line altered or inserted)")
            if expected is not None and seq != expected:
                what = "lines missing before it" if seq > expected else "line inserted or moved"
                return Break(str(p), n, f"seq {seq} where {expected} was expected ({what})")
            expected = seq + 1
        return None

    def _block_lines(self, stop_file: Path | None, stop_line: int) -> Iterator[tuple[Path, int, bytes]]:
        """Decision lines from the block's start up to (stop_file, stop_line), or to
        the end of the log."""
        assert self.block is not None
        for index in range(self.block.file_index, len(self.files)):
            p = self.files[index]
            with open(p, "rb") as f:
                n = 0
                if index == self.block.file_index:
                    f.seek(self.block.offset)
                    n = self.block.line - 1
                for line in f:
                    n += 1
                    if p == stop_file and n >= stop_line:
                        return
                    if line.startswith(SEAL_PREFIX) or not line.endswith(b"\n"):
                        continue
                    yield p, n, line[:-1]
            if p == stop_file:
                return


def verify(files: list[Path], key: bytes | None = None) -> VerifyResult:
    return _Verifier(files, key).run()
