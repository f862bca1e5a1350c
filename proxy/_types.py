"""The records that flow through stategate: a decoded message and a decision-log line.

Both are msgspec Structs so that decoding is strict and encoding to JSON Lines is one
C call per batch.  Field order of :class:`LogRecord` is the order of SPEC section 6.
"""

from __future__ import annotations

import msgspec

#: Formats a payload can be in, as they appear in the log's ``fmt`` field.
FORMATS = ("text", "xml", "json")
#: Directions: ``in`` travels listen -> upstream, ``out`` upstream -> listen.
DIRECTIONS = ("in", "out")
#: Decision actions as logged.
ACTIONS = ("allow", "deny", "reject")


class Message(msgspec.Struct, frozen=True, gc=False):
    """The header fields of one payload, whatever its format.

    Only these fields are ever read for a decision or logged; the body's other data
    elements (names, dates of birth, licence numbers ...) never leave the decoder.
    """

    fmt: str
    mke: str
    ori: str
    dst: tuple[str, ...]
    ctl: str | None = None
    pur: str | None = None
    rsn: str | None = None
    atn: str | None = None
    imq: bool = False


class LogRecord(msgspec.Struct, gc=False):
    """One decision-log line (SPEC section 6)."""

    ts: str
    id: str
    seq: int
    conn: int
    peer: str | None
    dir: str
    fmt: str | None
    mke: str | None
    ori: str | None
    dst: tuple[str, ...] | None
    ctl: str | None
    pur: str | None
    rsn: str | None
    atn: str | None
    imq: bool | None
    agency: str | None
    groups: tuple[str, ...]
    action: str
    rule: str
    shadow: str | None
    mode: str
    forwarded: bool
    rev: str
    bytes: int
