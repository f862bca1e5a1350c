"""Per-connection decision pipelines and what they share.

:class:`ReferenceEngine` is the plain-Python statement of what one chunk of one
direction produces: frame with :mod:`proxy._framing`, decode with
:mod:`proxy._decode`, decide with :func:`proxy._policy.decide`.  The proxy runs the
compiled :class:`proxy._fastmatch.Engine`, which must produce identical batches; the
differential tests feed both the same streams.
"""

from __future__ import annotations

import secrets
import time

import msgspec

from ._decode import decode, detect_format
from ._framing import make_framer
from ._policy import Policy, decide
from ._reply import Denial, ReplyWriter
from ._types import LogRecord

#: The most the proxy's pump receives at once (proxy._server), so one chunk decided at
#: a time: 128 KiB, since at full load every chunk carries trio's and the pump's fixed
#: cost (bench/README.md: 2.58 -> 2.16 us of CPU a message against 64 KiB, and no
#: better at 256 KiB), while each direction of a connection keeps buffers of a few
#: times one chunk (its log lines).  Here, not in the trio layer, so that what imports
#: no trio (the profile-guided build's training, proxy._pgo) cuts chunks the same size.
RECEIVE_SIZE = 131072


class Sequencer:
    """Numbers shared by every engine that writes to one log.

    ``seq`` is the last sequence number handed out (the log continues it across
    restarts); ``decisions`` counts this process's decisions and, prefixed with a random
    ``run_id`` drawn at start, makes decision ids unique across restarts.
    """

    # Slots: the compiled engine reads and sets seq and decisions once a chunk, and a
    # chunk may be one message (bench/README.md, "the carried frame").
    __slots__ = ("seq", "decisions", "run_id", "counts")

    def __init__(self, seq: int = 0, run_id: str | None = None) -> None:
        self.seq = seq
        self.decisions = 0
        self.run_id = run_id or secrets.token_hex(6)
        #: decisions by (direction, action, rule), read by the metrics endpoint
        self.counts: dict[tuple[str, str, str], int] = {}


def utc_timestamp() -> str:
    """The system clock's time, RFC 3339 UTC with microseconds, e.g.
    ``2026-11-22T15:04:05.123456Z``."""
    return format_utc_ns(time.time_ns())


#: The last second formatted, and its text up to the seconds: the proxy stamps every
#: chunk it decides, often thousands a second, and ``strftime`` with ``%f`` costs several
#: microseconds a call, as much as deciding the chunk's message.
_last_second: tuple[int, str] = (-1, "")


def format_utc_ns(ns: int) -> str:
    """:func:`utc_timestamp` of a time in nanoseconds since the epoch (truncated to the
    microsecond, as ``datetime.now`` does)."""
    global _last_second
    second, us = divmod(ns // 1000, 1_000_000)
    cached, prefix = _last_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, prefix)
    return f"{prefix}.{us:06d}Z"


_lines_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(LogRecord)


class Batch:
    """What one chunk produced: its log lines, encoded (``count`` of them, the last
    numbered ``last_seq``), the exact bytes to forward, and the ER replies to its
    denied ``in`` messages, framed, in order, to send back on the listen side.
    ``records`` decodes the lines when asked."""

    __slots__ = ("lines", "count", "last_seq", "forward", "replies", "_records")

    def __init__(
        self,
        lines: bytes,
        count: int,
        last_seq: int,
        forward: bytes,
        replies: bytes,
        records: list[LogRecord] | None = None,
    ) -> None:
        self.lines = lines
        self.count = count
        self.last_seq = last_seq
        self.forward = forward
        self.replies = replies
        self._records = records

    @property
    def records(self) -> list[LogRecord]:
        if self._records is None:
            self._records = [_record_decoder.decode(line) for line in self.lines.splitlines()]
        return self._records

    @classmethod
    def of_records(
        cls, records: list[LogRecord], forward: bytes, replies: bytes
    ) -> Batch:
        last = records[-1].seq if records else 0
        lines = _lines_encoder.encode_lines(records) if records else b""
        return cls(lines, len(records), last, forward, replies, records)


class ReferenceEngine:
    """One direction of one connection, in plain Python."""

    def __init__(
        self,
        direction: str,
        conn: int,
        peer: str | None,
        framing: str,
        max_frame: int,
        terminator: bytes,
        sequencer: Sequencer,
    ) -> None:
        self.direction = direction
        self.conn = conn
        self.peer = peer
        self.framer = make_framer(framing, max_frame, terminator)
        self.framing = framing
        self.terminator = terminator
        self.sequencer = sequencer

    @property
    def pending(self) -> int:
        return self.framer.pending

    @property
    def busy(self) -> bool:
        return self.framer.busy

    def _record(self, ts: str, policy: Policy, **fields: object) -> LogRecord:
        s = self.sequencer
        s.seq += 1
        s.decisions += 1
        base: dict[str, object] = dict(
            ts=ts, id=f"{s.run_id}-{s.decisions:x}", seq=s.seq, conn=self.conn,
            peer=self.peer, dir=self.direction, fmt=None, mke=None, ori=None, dst=None,
            ctl=None, pur=None, rsn=None, atn=None, imq=None, agency=None, groups=(),
            shadow=None, mode=policy.mode, rev=policy.rev,
        )  # fmt: skip
        base.update(fields)
        key = (self.direction, base["action"], base["rule"])
        s.counts[key] = s.counts.get(key, 0) + 1
        return LogRecord(**base)  # type: ignore[arg-type]

    def feed(self, data: bytes, policy: Policy, ts: str) -> Batch:
        records: list[LogRecord] = []
        forward: list[bytes] = []
        denials: list[Denial] = []
        monitor = policy.mode == "monitor"
        for event in self.framer.feed(data):
            if event[0] == "oversize":
                records.append(
                    self._record(ts, policy, action="reject", rule="oversize",
                                 forwarded=False, bytes=event[1])  # fmt: skip
                )
                continue
            _, payload, raw = event
            try:
                msg = decode(payload, policy.xml)
            except Exception:  # fail closed: an undecodable message is rejected
                records.append(
                    self._record(ts, policy, fmt=detect_format(payload), action="reject",
                                 rule="malformed", forwarded=False, bytes=len(payload))  # fmt: skip
                )
                continue
            v = decide(policy, msg, self.direction)
            forwarded = v.action == "allow" or monitor
            rec = self._record(
                ts, policy, fmt=msg.fmt, mke=msg.mke, ori=msg.ori, dst=msg.dst, ctl=msg.ctl,
                pur=msg.pur, rsn=msg.rsn, atn=msg.atn, imq=msg.imq, agency=v.agency,
                groups=v.groups, action=v.action, rule=v.rule, shadow=v.shadow,
                forwarded=forwarded, bytes=len(payload),
            )  # fmt: skip
            records.append(rec)
            if forwarded:
                forward.append(raw)
            elif self.direction == "in" and policy.deny_reply:
                denials.append(Denial(msg.fmt, msg.mke, msg.ori, msg.ctl, v.rule, rec.id, payload))
        replies = ReplyWriter(policy, self.framing, self.terminator).replies(denials) if denials else b""
        return Batch.of_records(records, b"".join(forward), replies)


def incomplete_record(engine, sequencer: Sequencer, matcher, ts: str) -> LogRecord:
    """The decision for a frame a closing connection cut off: rejected as
    ``incomplete``, never forwarded; ``bytes`` is what had arrived of it."""
    sequencer.seq += 1
    sequencer.decisions += 1
    key = (engine.direction, "reject", "incomplete")
    sequencer.counts[key] = sequencer.counts.get(key, 0) + 1
    return LogRecord(ts, f"{sequencer.run_id}-{sequencer.decisions:x}", sequencer.seq, engine.conn,
                     engine.peer, engine.direction, None, None, None, None, None, None, None, None,
                     None, None, (), "reject", "incomplete", None, matcher.mode, False, matcher.rev,
                     engine.pending)  # fmt: skip
