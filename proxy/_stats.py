"""``stategate stats``: counts over a decision log, and the disclosure report.

Streams the log once in constant memory: only counters are kept, one per distinct
combination of the fields asked for.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable

import msgspec

from ._policy import BUILTIN_CATEGORIES
from ._types import LogRecord

NO_GROUP = "(no group)"
UNIDENTIFIED = "(unidentified: rejected)"

#: What ``--by`` accepts: record fields, ``group`` (one count per group of the agency),
#: ``category`` (of the key) and the timestamp's ``hour``, ``day`` and ``month``.
TIME_FIELDS = ("hour", "day", "month")
RECORD_FIELDS = tuple(f for f in LogRecord.__struct_fields__ if f not in ("ts", "id"))
BY_FIELDS = RECORD_FIELDS + ("group", "category") + TIME_FIELDS
_TS_LEN = {"hour": 13, "day": 10, "month": 7}

_CATEGORY_OF = {k: name for name, keys in BUILTIN_CATEGORIES.items() for k in keys}


def category_of(mke: str | None) -> str:
    return _CATEGORY_OF.get(mke or "", "other")


def parse_by(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",") if f.strip()]
    for f in fields:
        if f not in BY_FIELDS:
            raise ValueError(f"cannot count by {f!r}; choose from: {', '.join(BY_FIELDS)}")
    if not fields:
        raise ValueError("--by needs at least one field")
    return fields


def needed_fields(by: list[str]) -> list[str]:
    """The row fields that counting by ``by`` reads."""
    need = []
    for f in by:
        need.append({"group": "groups", "category": "mke"}.get(f, f))
    return list(dict.fromkeys(need))


class _RecordRow:
    """A record seen with the derived time fields, for the plain path."""

    __slots__ = ("r",)

    def __init__(self, r: LogRecord) -> None:
        self.r = r

    def __getattr__(self, name: str):
        if name in _TS_LEN:
            return self.r.ts[: _TS_LEN[name]]
        return getattr(self.r, name)


def record_rows(records: Iterable[LogRecord]) -> Iterable[tuple[object, int]]:
    """Records as weighted rows: the plain path, one record at a time."""
    return ((_RecordRow(r), 1) for r in records)


def _value(r, field: str):
    if field == "category":
        return category_of(r.mke)
    v = getattr(r, field)
    if isinstance(v, (tuple, list)):
        return ",".join(v)
    return v


def count_by(rows: Iterable[tuple[object, int]], fields: list[str]) -> Counter:
    """Counts keyed by a tuple of the fields' values.  ``group`` counts a row once for
    each group its agency is in (``(no group)`` when none)."""
    counts: Counter = Counter()
    explode = "group" in fields
    gi = fields.index("group") if explode else -1
    others = [f for f in fields if f != "group"]
    for r, n in rows:
        key = [_value(r, f) for f in others]
        if explode:
            for g in r.groups or (NO_GROUP,):
                k = list(key)
                k.insert(gi, g)
                counts[tuple(k)] += n
        else:
            counts[tuple(key)] += n
    return counts


# ----------------------------------------------------------- disclosure report


class GroupReport(msgspec.Struct):
    group: str
    queries: int = 0
    allowed: int = 0
    denied: int = 0
    denied_but_forwarded: int = 0  # monitor mode
    responses_dmv: int = 0
    responses_chri: int = 0
    responses_immigration: int = 0
    responses_photo: int = 0
    responses_other: int = 0


DISCLOSURE_FIELDS = ["dir", "action", "groups", "forwarded", "mke", "imq"]


def disclosure(rows: Iterable[tuple[object, int]]) -> list[GroupReport]:
    """Per agency group (and agencies in none): queries that arrived, allowed, denied;
    and responses that left the state to them, by kind of data.

    A response is an ``out`` message that was forwarded; its kind comes from its key
    (the built-in categories), and it counts as photo data when it carries IMQ.
    Rejected queries have no trustworthy agency and are counted on their own row."""
    reports: dict[str, GroupReport] = {}

    def row(name: str) -> GroupReport:
        rep = reports.get(name)
        if rep is None:
            rep = reports[name] = GroupReport(name)
        return rep

    for r, n in rows:
        if r.action == "reject":
            if r.dir == "in":
                row(UNIDENTIFIED).queries += n
            continue
        for g in r.groups or (NO_GROUP,):
            rep = row(g)
            if r.dir == "in":
                rep.queries += n
                if r.action == "allow":
                    rep.allowed += n
                else:
                    rep.denied += n
                    if r.forwarded:
                        rep.denied_but_forwarded += n
            elif r.forwarded:
                cat = category_of(r.mke)
                if cat == "dmv":
                    rep.responses_dmv += n
                elif cat == "chri":
                    rep.responses_chri += n
                elif cat == "immigration":
                    rep.responses_immigration += n
                else:
                    rep.responses_other += n
                if r.imq:
                    rep.responses_photo += n
    special = (NO_GROUP, UNIDENTIFIED)
    named = sorted(g for g in reports if g not in special)
    return [reports[g] for g in named + [s for s in special if s in reports]]


DISCLOSURE_COLUMNS = (("group", "agency group"), ("queries", "queries"), ("allowed", "allowed"),
                      ("denied", "denied"), ("responses_dmv", "DMV out"),
                      ("responses_chri", "CHRI out"), ("responses_immigration", "immig. out"),
                      ("responses_photo", "photo out"), ("responses_other", "other out"))  # fmt: skip


# ------------------------------------------------------------------ rendering


def render_table(header: list[str], rows: list[list[object]]) -> str:
    """Aligned columns; a column of numbers is right-aligned."""
    numeric = [all(isinstance(r[i], int) for r in rows) for i in range(len(header))]
    cells = [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(row, widths, numeric)).rstrip()  # fmt: skip

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


def render_csv(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().rstrip("\n")
