"""Sans-I/O framing: cut a TCP byte stream into payloads (SPEC section 3).

This is the plain-Python statement of the framing rules.  The proxy's hot path runs
the compiled twin in ``_fastmatch.pyx``; tests feed both the same streams in random
chunkings and require the same events.

Events are plain tuples so the two implementations compare with ``==``:

* ``("frame", payload, raw)``: a complete payload and the exact bytes that carried it
  (length prefix or terminator included), which are what is forwarded if allowed.
* ``("oversize", size)``: a frame longer than ``max_frame``; its bytes are discarded
  as they arrive and never buffered.  For ``len32`` the size is the declared length,
  reported as soon as the prefix is read; for ``delimited`` it is the count of bytes
  skipped up to the terminator, reported when the terminator arrives.
"""

from __future__ import annotations

from typing import Protocol

Event = tuple

DEFAULT_TERMINATOR = b"\r\n\x7f"
DEFAULT_MAX_FRAME = 1 << 20


class Framer(Protocol):
    def feed(self, data: bytes) -> list[Event]: ...

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete and not yet decided (0 at a frame
        boundary, and while skipping an oversize frame already reported)."""
        ...

    @property
    def busy(self) -> bool:
        """Within a frame, including one being skipped."""
        ...


class Len32Framer:
    """4-byte big-endian payload length, then the payload."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize payload still to discard

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def busy(self) -> bool:
        return bool(self._buf) or self._skip > 0

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        self._buf += data
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if size > self.max_frame:
                events.append(("oversize", size))
                available = len(buf) - pos - 4
                if available >= size:
                    pos += 4 + size
                    continue
                self._skip = size - available
                pos = len(buf)
                break
            if len(buf) - pos - 4 < size:
                break
            raw = bytes(buf[pos : pos + 4 + size])
            events.append(("frame", raw[4:], raw))
            pos += 4 + size
        del buf[:pos]
        return events


class DelimitedFramer:
    """The payload, then a terminator (by default CR LF DEL)."""

    def __init__(
        self, terminator: bytes = DEFAULT_TERMINATOR, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        if not terminator:
            raise ValueError("terminator must not be empty")
        self.terminator = terminator
        self.max_frame = max_frame
        self._buf = bytearray()
        self._skipped = -1  # >= 0 while discarding an oversize frame

    @property
    def pending(self) -> int:
        return len(self._buf) + max(self._skipped, 0)

    @property
    def busy(self) -> bool:
        return self.pending > 0 or self._skipped >= 0

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        term = self.terminator
        tlen = len(term)
        self._buf += data
        buf = self._buf
        pos = 0
        while True:
            end = buf.find(term, pos)
            if self._skipped >= 0:
                if end < 0:
                    # Keep only what could be the start of a split terminator.
                    keep = min(tlen - 1, len(buf) - pos)
                    self._skipped += len(buf) - pos - keep
                    pos = len(buf) - keep
                    break
                events.append(("oversize", self._skipped + end - pos))
                self._skipped = -1
                pos = end + tlen
                continue
            if end < 0:
                if len(buf) - pos > self.max_frame + tlen - 1:
                    # Too long to be a frame whatever follows: discard from here on.
                    self._skipped = 0
                    continue
                break
            if end - pos > self.max_frame:
                events.append(("oversize", end - pos))
                pos = end + tlen
                continue
            raw = bytes(buf[pos : end + tlen])
            events.append(("frame", raw[: end - pos], raw))
            pos = end + tlen
        del buf[:pos]
        return events


def make_framer(framing: str, max_frame: int, terminator: bytes) -> Framer:
    if framing == "len32":
        return Len32Framer(max_frame)
    if framing == "delimited":
        return DelimitedFramer(terminator, max_frame)
    raise ValueError(f"unknown framing {framing!r}")


def frame(payload: bytes, framing: str, terminator: bytes = DEFAULT_TERMINATOR) -> bytes:
    """Wrap one payload for the wire (used for ER replies, the switch and tests)."""
    if framing == "len32":
        return len(payload).to_bytes(4, "big") + payload
    return payload + terminator
