"""Reading decision records back: typed decoding, time bounds and filters shared by
``tail``, ``stats`` and ``replay``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from ._logfiles import SEAL_PREFIX, TornLine, iter_lines
from ._policy import ori_matches
from ._types import LogRecord

DEFAULT_LOG = "/var/log/stategate/decisions.jsonl"

_record = msgspec.json.Decoder(LogRecord)
_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BadLogLine(Exception):
    """A line that is neither a decision record nor a seal; names file and line."""


def decode_record(path: Path, lineno: int, line: bytes) -> LogRecord:
    """``lineno``: counted from the file's start (1, 2 …), or from its end (-1 the
    last line, for a file read backwards), or 0 where it is not known."""
    try:
        return _record.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if lineno > 0:
            where = f"{path}:{lineno}"
        else:
            where = f"{path}, line {-lineno} from the end" if lineno else str(path)
        raise BadLogLine(f"{where}: not a decision record ({exc})") from None


def records(files: list[Path], on_torn: TornLine | None = None) -> Iterator[LogRecord]:
    """Decision records in log order; seal lines skipped; blank lines ignored; a torn
    last line left out (``on_torn``: see iter_lines)."""
    for path, n, line in iter_lines(files, on_torn):
        if not line or line.startswith(SEAL_PREFIX):
            continue
        yield decode_record(path, n, line)


def parse_time(text: str, now: datetime | None = None) -> str:
    """A time bound as a log timestamp string, which then compares as text.

    Accepts RFC 3339 (``2026-11-22T10:00:00Z``, an offset, or no zone meaning UTC), a
    date (``2026-11-22``), or an age (``90s``, ``15m``, ``2h``, ``7d``, ``1w``)."""
    text = text.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        now = now or datetime.now(timezone.utc)
        when = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"cannot read time {text!r}: use RFC 3339 (2026-11-22T10:00:00Z), "
                "a date (2026-11-22) or an age (15m, 2h, 7d)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Query:
    """Which decisions a command looks at.  Each option given must hold; lists are
    comma separated; ``agency`` takes ORI patterns (``?``, trailing ``*``).

    ``lo``/``hi`` bound the time (as log timestamp strings); :attr:`fields` names the
    record fields the other tests read, so aggregated rows can carry them."""

    def __init__(
        self,
        *,
        action: str | None = None,
        agency: str | None = None,
        group: str | None = None,
        mke: str | None = None,
        rule: str | None = None,
        direction: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> None:
        def split(value: str) -> set[str]:
            return {v.strip() for v in value.split(",") if v.strip()}

        tests: list[tuple[tuple[str, ...], Callable[[Any], bool]]] = []
        if action:
            actions = split(action)
            tests.append((("action",), lambda r: r.action in actions))
        if agency:
            patterns = [p.upper() for p in split(agency)]
            tests.append((("agency",), lambda r: r.agency is not None
                          and any(ori_matches(p, r.agency) for p in patterns)))  # fmt: skip
        if group:
            groups = split(group)
            tests.append((("groups",), lambda r: any(g in groups for g in r.groups)))
        if mke:
            keys = {k.upper() for k in split(mke)}
            tests.append((("mke",), lambda r: r.mke in keys))
        if rule:
            rules = split(rule)
            tests.append((("rule", "shadow"), lambda r: r.rule in rules or r.shadow in rules))
        if direction:
            tests.append((("dir",), lambda r: r.dir == direction))
        self._tests = [t for _, t in tests]
        self.fields = list(dict.fromkeys(f for names, _ in tests for f in names))
        self.lo = parse_time(since) if since else None
        self.hi = parse_time(until) if until else None

    def matches(self, r: Any) -> bool:
        """The tests other than time, on a record or an aggregated row."""
        return all(t(r) for t in self._tests)

    def __call__(self, r: LogRecord) -> bool:
        if self.lo is not None and r.ts < self.lo:
            return False
        if self.hi is not None and r.ts >= self.hi:
            return False
        return self.matches(r)


Filter = Callable[[LogRecord], bool]


def make_filter(**options: str | None) -> Query:
    return Query(**options)
