"""Fast reading of decision logs for ``stats`` and ``replay``.

Files are read in large chunks cut at line ends and handed to the compiled scanner
(:func:`proxy._fastmatch.count_records`, :func:`proxy._fastmatch.replay_records`),
which counts lines by the raw JSON of the fields asked for.  Keys are decoded once per
distinct value afterwards, and filters are applied to the aggregated keys, which gives
exactly the answer filtering each line would, at a fraction of the cost.  A line the
scanner cannot read is decoded strictly by msgspec instead; one that is not a record
at all is an error naming its file and line.  A torn last line (no newline at the end)
is not a line: it is left out, and the caller told.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ._fastmatch import FIELD_NAMES, TS_PREFIX_BASE, Matcher, count_records, replay_records
from ._logfiles import TornLine, line_number_at
from ._query import BadLogLine, decode_record
from ._types import LogRecord, Message

CHUNK = 1 << 23
TS_PREFIXES = {"hour": 13, "day": 10, "month": 7}
_FIELD_ID = {name: i for i, name in enumerate(FIELD_NAMES)}
_json = msgspec.json.Encoder()


def _chunks(files: list[Path], on_torn: TornLine | None = None) -> Iterator[tuple[Path, bytes, int, int]]:
    """(file, data, end, offset of data in the file): data[:end] is whole lines.  A
    last line without its newline is torn, a write cut short by a kill or a crash (its
    message was never forwarded): it is left out, and ``on_torn(file, line number)``
    told of it."""
    for path in files:
        with open(path, "rb") as f:
            offset = 0
            carry = b""
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    if carry and on_torn is not None:
                        on_torn(path, line_number_at(path, offset))
                    break
                data = carry + chunk if carry else chunk
                end = data.rfind(b"\n") + 1
                if end:
                    yield path, data, end, offset
                carry = data[end:]
                offset += end


def _in_window(ts: str, lo: str | None, hi: str | None) -> bool:
    return (not lo or ts >= lo) and (not hi or ts < hi)


def _key_ids(fields: list[str]) -> tuple[int, ...]:
    return tuple(
        TS_PREFIX_BASE + TS_PREFIXES[f] if f in TS_PREFIXES else _FIELD_ID[f] for f in fields
    )


def _raw_value(r: LogRecord, field: str) -> bytes:
    if field in TS_PREFIXES:
        return r.ts[: TS_PREFIXES[field]].encode()
    return _json.encode(getattr(r, field))


def aggregate(files: list[Path], fields: list[str], lo: str | None = None,
              hi: str | None = None, on_torn: TornLine | None = None) -> dict[tuple, int]:  # fmt: skip
    """Counts of decision lines by the values of ``fields`` (record fields, or hour,
    day, month), within [lo, hi) if given.  Keys hold decoded values; list fields
    (dst, groups) as tuples."""
    ids = _key_ids(fields)
    counts: dict[tuple, int] = {}
    current: list[Path] = []

    def fallback(line: bytes, offset: int):
        path = current[0]
        r = decode_record(path, line_number_at(path, offset), line)
        if not _in_window(r.ts, lo, hi):
            return r.ts, None
        return r.ts, b"\x00".join(_raw_value(r, f) for f in fields)

    lo_b, hi_b = (lo or "").encode(), (hi or "").encode()
    for path, data, end, offset in _chunks(files, on_torn):
        current[:] = [path]
        count_records(data, end, ids, lo_b, hi_b, counts, fallback, offset)
    return _decode_keys(counts, fields)


def _decode_keys(counts: dict[bytes, int], fields: list[str]) -> dict[tuple, int]:
    cache: dict[bytes, Any] = {}
    derived = [f in TS_PREFIXES for f in fields]
    out: dict[tuple, int] = {}

    def value(raw: bytes, is_derived: bool) -> Any:
        v = cache.get(raw, cache)
        if v is cache:
            if is_derived:
                v = raw.decode("ascii", "replace")
            else:
                v = msgspec.json.decode(raw)
                if isinstance(v, list):
                    v = tuple(v)
            cache[raw] = v
        return v

    for raw_key, n in counts.items():
        key = tuple(value(r, d) for r, d in zip(raw_key.split(b"\x00"), derived))
        out[key] = out.get(key, 0) + n
    return out


class Row:
    """An aggregated key seen as a record, for filters and reports."""

    __slots__ = ("__dict__",)

    def __init__(self, fields: list[str], values: tuple) -> None:
        self.__dict__.update(zip(fields, values))


def weighted_rows(files: list[Path], fields: list[str], lo: str | None, hi: str | None,
                  on_torn: TornLine | None = None) -> Iterator[tuple[Row, int]]:  # fmt: skip
    for key, n in aggregate(files, fields, lo, hi, on_torn).items():
        yield Row(fields, key), n


# ------------------------------------------------------------------- replay


def replay_counts(files: list[Path], matcher: Matcher, lo: str | None = None, hi: str | None = None,
                  on_torn: TornLine | None = None) -> dict[tuple[str, str, str, str], int]:  # fmt: skip
    """(logged action, logged rule, new action, new rule) -> lines."""
    counts: dict[bytes, int] = {}
    cache: dict[bytes, bytes] = {}
    current: list[Path] = []

    def fallback(line: bytes, offset: int):
        path = current[0]
        r = decode_record(path, line_number_at(path, offset), line)
        if not _in_window(r.ts, lo, hi):
            return r.ts, None
        if r.action == "reject" or r.mke is None or r.ori is None:
            action, rule = r.action, r.rule
        else:
            msg = Message(r.fmt or "text", r.mke, r.ori, r.dst or (), r.ctl, r.pur, r.rsn,
                          r.atn, bool(r.imq))  # fmt: skip
            action, rule, _, _, _ = matcher.decide(msg, r.dir)
        parts = (_json.encode(r.action), _json.encode(r.rule), action.encode(), rule.encode())
        return r.ts, b"\x00".join(parts)

    lo_b, hi_b = (lo or "").encode(), (hi or "").encode()
    for path, data, end, offset in _chunks(files, on_torn):
        current[:] = [path]
        replay_records(data, end, matcher, lo_b, hi_b, counts, fallback, cache, offset)
    out: dict[tuple, int] = {}
    for raw, n in counts.items():
        a, r, na, nr = raw.split(b"\x00")
        key = (msgspec.json.decode(a), msgspec.json.decode(r), na.decode(), nr.decode())
        out[key] = out.get(key, 0) + n
    return out


