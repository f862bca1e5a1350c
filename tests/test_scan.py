"""The compiled log scanner against the plain path: same counts and same replay,
including lines it must hand to the strict fallback (other layouts, escapes)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from proxy._config import parse_config
from proxy._fastmatch import Matcher
from proxy._log import DecisionLog
from proxy._logfiles import log_files
from proxy._policy import compile_policy
from proxy._query import BadLogLine, Query, records
from proxy._replay import reference_counts
from proxy._scan import aggregate, replay_counts, weighted_rows
from proxy._stats import DISCLOSURE_FIELDS, count_by, disclosure, needed_fields, record_rows
from proxy._types import LogRecord

from .test_differential import random_policy_text

AGENCIES = ["VTICE0900", "TXICE0300", "AZ0070000", "NV0130000", "DCFBI0000", None]


def random_record(rng: random.Random, seq: int) -> LogRecord:
    action = rng.choice(["allow", "deny", "reject"])
    agency = rng.choice(AGENCIES) if action != "reject" else None
    direction = rng.choice(["in", "out"])
    decoded = action != "reject"
    return LogRecord(
        ts=f"2026-11-{rng.randint(20, 23)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.000000Z",
        id=f"r-{seq:x}", seq=seq, conn=rng.randint(1, 4), peer="127.0.0.1:5",
        dir=direction, fmt=rng.choice(["text", "xml", "json"]),
        mke=rng.choice(["DQ", "RQ", "IQ", "DR", "AM"]) if decoded else None,
        ori=(agency or "CA0000000") if decoded else None,
        dst=tuple(rng.sample(["CA", "NV", "AZ0070000"], rng.randint(1, 2))) if decoded else None,
        ctl=rng.choice([None, "C1"]), pur=rng.choice([None, "C", "F"]) if decoded else None,
        rsn=rng.choice([None, "I"]) if decoded else None,
        atn=rng.choice([None, "SA DOE", 'AGENT "Q"\\X', "ÉLÈVE"]) if decoded else None,
        imq=rng.random() < 0.3 if decoded else None, agency=agency,
        groups=tuple(rng.sample(["dhs", "fed"], rng.randint(0, 2))) if agency else (),
        action=action, rule=rng.choice(["default", "r1", "r-2"]) if decoded else "malformed",
        shadow=rng.choice([None, "s1"]), mode=rng.choice(["enforce", "monitor"]),
        forwarded=rng.random() < 0.5, rev="a" * 64, bytes=rng.randint(10, 500),
    )  # fmt: skip


def write_log(path: Path, rng: random.Random, n: int) -> None:
    """A sealed log where some lines are rewritten in layouts the scanner does not
    take (spaces, reordered keys), so the fallback is exercised too."""
    with DecisionLog(path, seal_every=50, rotate_bytes=30_000, fsync=False) as log:
        log.write([random_record(rng, i + 1) for i in range(n)])
    for f in log_files(path):
        out = []
        for line in f.read_bytes().splitlines(keepends=True):
            if b'"seq"' in line and rng.random() < 0.1:
                obj = json.loads(line)
                items = list(obj.items())
                rng.shuffle(items)
                line = (json.dumps(dict(items), ensure_ascii=rng.random() < 0.5) + "\n").encode()
            out.append(line)
        f.write_bytes(b"".join(out))


@pytest.mark.parametrize("seed", range(6))
def test_counts_agree_with_the_plain_path(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "d.jsonl"
    write_log(path, rng, 1500)
    files = log_files(path)
    for fields in (["dir", "action"], ["group", "mke", "action"], ["agency", "hour"],
                   ["atn", "dst", "imq"], ["day", "rule", "shadow", "forwarded"], ["category", "bytes"]):  # fmt: skip
        fast = count_by(weighted_rows(files, needed_fields(fields), None, None), fields)
        plain = count_by(record_rows(records(files)), fields)
        assert fast == plain, fields
    assert disclosure(weighted_rows(files, DISCLOSURE_FIELDS, None, None)) == \
        disclosure(record_rows(records(files)))  # fmt: skip
    # time windows and filters on aggregated rows equal filtering each record
    q = Query(since="2026-11-21T06:00:00Z", until="2026-11-23", agency="??ICE????,NV*", action="allow,deny")
    need = list(dict.fromkeys(needed_fields(["group", "mke"]) + q.fields))
    fast = count_by(((r, n) for r, n in weighted_rows(files, need, q.lo, q.hi) if q.matches(r)), ["group", "mke"])
    plain = count_by(record_rows(r for r in records(files) if q(r)), ["group", "mke"])
    assert fast == plain and sum(fast.values()) > 0


@pytest.mark.parametrize("seed", range(6))
def test_replay_agrees_with_the_plain_path(tmp_path, seed):
    rng = random.Random(100 + seed)
    path = tmp_path / "d.jsonl"
    write_log(path, rng, 1500)
    files = log_files(path)
    matcher = Matcher(compile_policy(parse_config(random_policy_text(rng))))
    assert replay_counts(files, matcher) == reference_counts(records(files), matcher)
    lo, hi = "2026-11-21T00:00:00.000000Z", "2026-11-22T12:00:00.000000Z"
    windowed = reference_counts((r for r in records(files) if lo <= r.ts < hi), matcher)
    assert replay_counts(files, matcher, lo, hi) == windowed


def test_a_line_that_is_not_a_record_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    write_log(path, random.Random(1), 200)
    last = log_files(path)[-1]
    with open(last, "ab") as f:
        f.write(b'{"ts":"2026-11-22T10:00:00.000000Z","id":"x"}\n')
    n = len(last.read_bytes().splitlines())
    with pytest.raises(BadLogLine, match=f"{last}:{n}: not a decision record"):
        aggregate(log_files(path), ["action"])


@pytest.mark.parametrize("tear", ["decision", "seal", "whole record, no newline"])
def test_a_torn_last_line_is_left_out_by_both_paths_and_named(tmp_path, tear):
    """A kill mid-write leaves the last line without its newline; both paths leave it
    out, count the rest alike, and name it to ``on_torn``."""
    rng = random.Random(7)
    path = tmp_path / "d.jsonl"
    write_log(path, rng, 400)
    files = log_files(path)
    matcher = Matcher(compile_policy(parse_config(random_policy_text(rng))))
    whole_counts = count_by(record_rows(records(files)), ["action", "mke"])
    whole_replay = replay_counts(files, matcher)
    newest = [f for f in files if f.stat().st_size][-1]  # the base file may be empty
    data = newest.read_bytes()
    line = msgspec_line(random_record(rng, 401)) if tear != "seal" else b""
    if tear == "decision":
        torn = line[: len(line) // 2]
    elif tear == "seal":
        data, torn = data[: data.rindex(b'{"seal"')], data[data.rindex(b'{"seal"') :][:30]
    else:
        torn = line[:-1]
    newest.write_bytes(data + torn)
    where = (newest, data.count(b"\n") + 1)
    told: list[tuple[Path, int]] = []
    fast = count_by(weighted_rows(files, ["action", "mke"], None, None, lambda *a: told.append(a)), ["action", "mke"])
    plain = count_by(record_rows(records(files, lambda *a: told.append(a))), ["action", "mke"])
    assert fast == plain == whole_counts
    assert replay_counts(files, matcher, on_torn=lambda *a: told.append(a)) == whole_replay
    assert told == [where] * 3
    # without a callback the line is still left out
    assert replay_counts(files, matcher) == whole_replay


def msgspec_line(r: LogRecord) -> bytes:
    import msgspec

    return msgspec.json.encode(r) + b"\n"


def test_scanner_reads_what_the_writer_writes_without_fallback(tmp_path):
    """The fast path really is taken for the writer's own lines."""
    path = tmp_path / "d.jsonl"
    rng = random.Random(3)
    with DecisionLog(path, seal_every=10, fsync=False) as log:
        log.write([random_record(rng, i + 1) for i in range(300)])
    from proxy import _scan

    calls = Counter()
    original = _scan.decode_record

    def counting(*a):
        calls["fallback"] += 1
        return original(*a)

    _scan.decode_record = counting
    try:
        counts = aggregate([path], ["action"])
    finally:
        _scan.decode_record = original
    assert sum(counts.values()) == 300
    assert calls["fallback"] == 0
