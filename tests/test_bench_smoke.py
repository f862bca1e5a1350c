"""A quick smoke of every benchmark in bench/ (seconds each, never the full year):
each runs end to end, at a tiny size, and prints the figures it exists to report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(*args: str, timeout: float = 240) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, timeout=timeout, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode()


def _all_answered(row: str) -> bool:
    """A latency row's ``answered/sent``: the run's 1,000 queries all sent (the smoke
    runs pass ``--late-ms inf``: a generator that stalls sends late rather than skips,
    since how many it would skip is the machine's, not the code's) and all answered."""
    answered, sent = (int(x.replace(",", "")) for x in row.split()[-1].split("/"))
    return answered == sent == 1000


def test_micro_benchmarks_run():
    out = bench("-m", "pytest", "-q", "-p", "no:cacheprovider", str(BENCH / "test_micro.py"), "--benchmark-disable")
    assert " passed" in out and "failed" not in out


def test_year_smoke():
    out = bench(str(BENCH / "year.py"), "--scale", "0.0002", "--pool", "20000", "--sample", "2000", "--no-progress")
    assert "decisions/s (compiled, one core)" in out and "plain-Python twin on 2,000 messages" in out
    decided = int(out.split("decided: ")[1].split()[0].replace(",", ""))
    assert decided >= 58_000  # 0.0002 of 290 million, all of it
    assert "CPU time deciding: " in out and "the hypervisor stole " in out


def test_year_smoke_split_over_processes():
    """--workers 2: each process decides its half, and every decision is counted once."""
    out = bench(str(BENCH / "year.py"), "--scale", "0.0002", "--pool", "20000", "--sample", "200",
                "--no-progress", "--workers", "2")  # fmt: skip
    assert "decisions/s (compiled, 2 processes)" in out
    decided = int(out.split("decided: ")[1].split()[0].replace(",", ""))
    assert 58_000 <= decided < 58_000 + 2 * 1000  # each half whole chunks, at most one over
    by_action = out.split("by action: ")[1].split(";")[0]
    assert sum(int(part.split()[1].replace(",", "")) for part in by_action.split(", ")) == decided
    assert len(out.split("CPU time deciding: ")[1].split(" s ")[0].split(" + ")) == 2


def test_e2e_smoke():
    out = bench(str(BENCH / "e2e.py"), "--seconds", "1", "--runs", "1", "--rates", "1000",
                "--latency-seconds", "1", "--latency-runs", "1", "--serial", "1000", "--pool", "2000",
                "--late-ms", "inf")  # fmt: skip
    assert "stategate / baseline:" in out and "added by stategate" in out
    decided = out.split("stategate messages decided and logged")[1].split(": ")[1].split("/s")[0]
    assert int(decided.replace(",", "")) > 0  # counted from the log's seq
    serial = out.split("serial round trips")[1]
    assert float(serial.split("stategate")[1].split(" us CPU")[0]) > 0
    assert "trio relay" in out and "added over the trio relay" in out
    us = float(out.split("stategate CPU per message decided")[1].split(": ")[1].split(" us")[0])
    assert 0 < us < 1000  # a real reading of the proxy's CPU time, per message
    assert "stategate peak RSS (VmHWM):" in out
    rows = [line for line in out.splitlines() if re.search(r" [\d,]+/[\d,]+$", line)]  # answered/sent
    assert len(rows) >= 3 and all(_all_answered(row) for row in rows)  # every query sent was answered
    assert "queries skipped, the load generator itself over inf ms late" in out
    assert "CPU time stolen by the hypervisor" in out
    polling = _bench_module("_common").idle_polling()  # printed under the machine line where known
    if polling is None:
        assert "before halting" not in out
    else:
        ns = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read_text().strip()
        assert out.splitlines()[1] == polling and polling.endswith(f"(haltpoll guest_halt_poll_ns {ns})")
    cpu = out.split("CPU a query (median): ")[1].split("\n")[0]
    assert float(cpu.split("stategate ")[1].split(" us")[0]) > 0  # the proxy's CPU, read from /proc
    chunks = out.split("stategate's own time a chunk (its /metrics; ")[1].split(" chunks")[0]
    assert int(chunks.replace(",", "")) > 0  # its histogram counted this run's chunks
    harness = out.split("CPUs it and the path took): ")[1].split("\n")[0]
    load_us, switch_us = harness.split("direct ")[1].split(" us")[0].split(" + ")
    assert float(load_us) > 0 and float(switch_us) > 0  # the harness's own CPU, measured
    shares = re.findall(r"\((\d+)%\)", harness)
    assert len(shares) >= 3 and all(0 <= int(x) <= 100 for x in shares)  # one a path


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs two CPUs")
def test_e2e_latency_only_pinned():
    """--runs 0 skips the throughput runs; --pin puts the paths on one CPU and the
    harness on the others, and the paths still answer every query."""
    out = bench(str(BENCH / "e2e.py"), "--runs", "0", "--pin", "--rates", "1000", "--latency-seconds", "1",
                "--latency-runs", "1", "--serial", "0", "--pool", "2000", "--late-ms", "inf")  # fmt: skip
    assert "pinned: the paths under test on CPU" in out
    assert "throughput," not in out and "stategate / baseline" not in out
    rows = [line for line in out.splitlines() if re.search(r" [\d,]+/[\d,]+$", line)]  # answered/sent
    assert len(rows) >= 3 and all(_all_answered(row) for row in rows)  # each path answered all
    assert "added by stategate" in out and "stategate peak RSS (VmHWM):" in out


def test_e2e_throughput_only():
    """--latency-runs 0 skips the latency and serial runs (it once ended in a traceback,
    the medians of no runs); a negative count is a usage error."""
    out = bench(str(BENCH / "e2e.py"), "--seconds", "1", "--runs", "1", "--latency-runs", "0",
                "--pool", "2000")  # fmt: skip
    assert "stategate / baseline:" in out and "stategate messages decided and logged" in out
    assert "latency (round trip" not in out and "serial round trips" not in out
    assert "stategate peak RSS (VmHWM):" in out
    bad = subprocess.run([sys.executable, str(BENCH / "e2e.py"), "--latency-runs", "-1"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--latency-runs must be 0 or more" in bad.stderr


def test_load_generator_skips_what_is_more_than_late_behind():
    """e2e.py's pacing (the smoke runs above send every query, so this is its test):
    at 1,000 a second, 10.5 ms into a run with nothing sent yet, queries 0 to 10 are
    due; with 1 ms of grace those due before 9.5 ms (0 to 9) are skipped and 10 is
    sent, and with an infinite grace all eleven are sent."""
    sys.path.insert(0, str(BENCH))
    try:
        from e2e import due_queries
    finally:
        sys.path.remove(str(BENCH))
    assert due_queries(0.0105, 1000, 0, 1000, 0.001) == (10, 11)
    assert due_queries(0.0105, 1000, 0, 1000, float("inf")) == (0, 11)
    assert due_queries(0.0105, 1000, 11, 1000, 0.001) == (11, 11)  # nothing new is due
    assert due_queries(5.0, 1000, 990, 1000, 0.001) == (1000, 1000)  # past the run's end: the rest skipped
    assert due_queries(0.0005, 1000, 0, 1000, 0.001) == (0, 1)  # on time: nothing skipped


def test_sieve_smoke():
    out = bench(str(BENCH / "sieve.py"), "--pool", "5000", "--rounds", "2", "--extra", "0,10")
    rows = [line for line in out.splitlines() if "ORIs added" in line]
    assert len(rows) == 2
    assert "7 tests, sieve" in rows[0] and "x1.000" in rows[0]
    assert "17 tests, no sieve (the table)" in rows[1]


def test_ab_smoke():
    """bench/ab.py with this checkout as both trees: each round runs both, in turn, and
    the second is reported as a ratio to the first."""
    tree = str(BENCH.parent)
    out = bench(str(BENCH / "ab.py"), tree, tree, "--rounds", "2", "--seconds", "0.5", "--rate", "500",
                "--latency-seconds", "0.5", "--trips", "200", "--pool", "2000")  # fmt: skip
    assert out.count("round 1 ") == 2 and out.count("round 2 ") == 2
    medians = out.split("medians of 2 rounds")[1]
    assert "decided_per_s" in medians and "cpu_us_per_trip" in medians
    ratios = [float(x.split()[0]) for x in medians.split("   x")[1:]]
    assert len(ratios) == 7 and all(r > 0 for r in ratios)
    assert medians.count("; order-balanced x") >= 6  # each measure whose rounds both have a ratio


def test_order_balanced_ratio_cancels_an_edge_for_running_first():
    sys.path.insert(0, str(BENCH))
    try:
        from _common import order_balanced
    finally:
        sys.path.remove(str(BENCH))
    # the tree under test runs second, first, second, first ...: 20% faster when first
    ratios = [0.9 / 1.2, 0.9 * 1.2, 0.9 / 1.2, 0.9 * 1.2, 0.9 / 1.2, 0.9 * 1.2]
    assert abs(order_balanced(ratios) - 0.9) < 1e-9
    assert order_balanced([0.8, None, 1.1, 1.1]) == pytest.approx(1.1)  # a pair without a ratio is left out
    assert order_balanced([0.8]) is None and order_balanced([]) is None


def test_ab_decide_smoke():
    """bench/ab.py --decide: each tree's decision path in a process of its own, in turn."""
    tree = str(BENCH.parent)
    out = bench(str(BENCH / "ab.py"), tree, tree, "--decide", "--rounds", "2", "--pool", "3000", "--passes", "2")
    assert out.count("round 1 ") == 2 and out.count("round 2 ") == 2
    medians = out.split("medians of 2 rounds")[1]
    assert "decide_ns_per_msg" in medians
    ratio = float(medians.split("   x")[1].split()[0])
    assert 0.2 < ratio < 5  # the same tree twice: a reading, not a wild one


def test_ab_decide_in_one_process_smoke():
    """bench/ab.py --decide --one-process: the trees' engines in one process, rounds
    alternated, reported as for separate processes."""
    tree = str(BENCH.parent)
    out = bench(str(BENCH / "ab.py"), tree, tree, "--decide", "--one-process", "--rounds", "6", "--pool", "3000",
                "--passes", "1")  # fmt: skip
    medians = out.split("medians of 6 rounds")[1]
    assert medians.count("decide_ns_per_msg") == 2
    ratio = float(medians.split("   x")[1].split()[0])
    assert 0.2 < ratio < 5  # the same tree twice: a reading, not a wild one
    assert "; order-balanced x" in medians


def test_ab_feed_in_one_process_smoke():
    """bench/ab.py --decide --feed: Engine.feed, the decisions with their log lines."""
    tree = str(BENCH.parent)
    out = bench(str(BENCH / "ab.py"), tree, tree, "--decide", "--feed", "--one-process", "--rounds", "2",
                "--pool", "3000", "--passes", "1")  # fmt: skip
    medians = out.split("medians of 2 rounds")[1]
    assert medians.count("feed_ns_per_msg") == 2 and "decide_ns_per_msg" not in medians
    assert float(medians.split("feed_ns_per_msg")[1].split()[0]) > 0


def test_soak_smoke():
    out = bench(str(BENCH / "soak.py"), "--messages", "4000", "--connections", "2")
    assert "mismatches: 0" in out


@pytest.mark.parametrize("script, args, shown", [
    ("logtools.py", ["--lines", "20000", "--runs", "1"], "verify"),
    ("sealcost.py", ["--messages", "5000", "--runs", "1"], "sealed sha256, fsync"),
    ("fsyncstall.py", ["--writes", "50", "--runs", "1"], "reserved, drop-behind"),
    ("feedloop.py", ["--passes", "3"], "Engine.feed: 3,000 messages"),
    ("feedloop.py", ["--passes", "3", "--log", "--chunk", "65536"], "Engine.feed and the log: 3,000 messages"),
    ("feedloop.py", ["--passes", "2", "--decide", "--format", "xml"], "Engine.decide: 2,000 messages"),
    ("feedloop.py", ["--passes", "2", "--decide", "--format", "text", "--messages", "500", "--repeat", "--agencies", "10"],
     "stream: 500 copies of one generated message of text, 10 agencies a state"),
    ("feedloop.py", ["--passes", "1", "--decide", "--messages", "700", "--chunk", "65536", "--warm"],
     "stream: 700 generated messages, 1,800 agencies a state"),
    ("feedloop.py", ["--passes", "1", "--decide", "--responses", "--messages", "400"],
     "stream: 400 generated responses, 1,800 agencies a state"),
])  # fmt: skip
def test_log_benchmarks_smoke(script, args, shown):
    out = bench(str(BENCH / script), *args)
    assert "nproc" in out and shown in out


def test_sealcost_proxy_smoke():
    """Through running proxies: the throughput table (sealcost checks itself that only
    the unsealed log has no seals) and, with --rate, each round a latency run through
    each configuration's proxy: a row for each with its p50 and p99, its differences to
    the unsealed run's, and every round's p99."""
    out = bench(str(BENCH / "sealcost.py"), "--proxy", "--runs", "1", "--seconds", "0.3",
                "--rate", "500", "--latency-seconds", "0.4")  # fmt: skip
    assert "nproc" in out and "seal records in each log: unsealed 0, sealed" in out
    table = out.split("round trip at 500 queries a second, one connection, 0.4 s a run:\n")[1]
    rows = {}
    for name in ("unsealed", "sealed sha256, fsync", "sealed sha256, no fsync"):
        line = next(line for line in table.splitlines() if line[:26].rstrip() == name)
        p50, p99, d50, d99, *rounds = (float(x.rstrip(",").replace(",", "")) for x in line[26:].split())
        rows[name] = (p50, p99, d50, d99, rounds)
    for p50, p99, _, _, rounds in rows.values():
        assert 0 < p50 <= p99 and rounds == [p99]  # one round: its p99 is the median
    base50, base99 = rows["unsealed"][:2]
    for p50, p99, d50, d99, _ in rows.values():  # one round: the differences of the medians
        assert abs(d50 - (p50 - base50)) <= 1 and abs(d99 - (p99 - base99)) <= 1  # each rounded
    assert rows["unsealed"][2:4] == (0, 0)  # the baseline's own difference


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def test_the_year_rate_in_slices_of_its_run():
    slice_rates = _bench_module("year").slice_rates
    marks = [(0.0, 0), (0.5, 5), (1.0, 10), (1.2, 14), (2.5, 30), (2.7, 31)]
    # 0 to 1.0 s: 10 in 1 s; 1.0 to 2.5 s: 20 in 1.5 s; the last 0.2 s is too short
    assert slice_rates(marks, 1.0) == pytest.approx([10.0, 20 / 1.5])
    assert slice_rates(marks, 5.0) == []
    assert slice_rates(marks[:1], 1.0) == []


def test_the_load_generator_skips_what_a_stall_made_late_instead_of_bursting():
    due_queries = _bench_module("e2e").due_queries
    rate, late = 10_000, 0.001
    assert due_queries(0.0, rate, 0, 1000, late) == (0, 1)  # the first query at once
    assert due_queries(0.00015, rate, 1, 1000, late) == (1, 2)  # on time: one a tick
    # 16 ms late: only the queries of the last millisecond go, the 150 before are skipped
    assert due_queries(0.016, rate, 2, 1000, late) == (150, 161)
    # with no limit, as before: every query owed, in one burst
    assert due_queries(0.016, rate, 2, 1000, float("inf")) == (2, 161)
    assert due_queries(5.0, rate, 990, 1000, late) == (1000, 1000)  # never past the run's count


@settings(max_examples=500, deadline=None)
@given(elapsed=st.floats(0, 10), rate=st.integers(1, 200_000), behind=st.integers(0, 10_000),
       late_ms=st.sampled_from([0.1, 1.0, 5.0, float("inf")]))  # fmt: skip
def test_each_query_is_sent_once_on_time_or_skipped_for_lateness(elapsed, rate, behind, late_ms):
    due_queries = _bench_module("e2e").due_queries
    late = late_ms / 1000
    total = 1_000_000
    due = min(total, int(elapsed * rate) + 1)  # the queries whose time has come
    next_slot = max(0, due - 1 - behind)  # what was sent or skipped before now
    first, end = due_queries(elapsed, rate, next_slot, total, late)
    assert next_slot <= first <= end == due  # every query due goes now or is skipped, once
    eps = 1e-9
    for i in (first, end - 1) if end > first else ():
        assert elapsed - i / rate <= late + eps  # what is sent is at most `late` behind
    if first > next_slot:
        assert elapsed - (first - 1) / rate > late - eps  # what is skipped was later than that
    if late_ms != float("inf"):
        assert end - first <= rate * late + 1  # so no burst beyond the last `late` of queries


@pytest.mark.parametrize("status", [3, 0])
def test_the_split_year_ends_with_an_error_when_a_worker_ends_without_its_result(status):
    """A worker that dies (here at once, with each exit status) must not leave the
    year waiting for it; the other worker is stopped too."""
    year = _bench_module("year")

    class Bar:
        def update(self, n: int) -> None:
            pass

    def decide_share(share: int, report) -> tuple:
        if share == 1:
            os._exit(status)
        time.sleep(60)  # the other worker: still deciding when the first dies
        return (share, 0.0, {}, [])

    started = time.monotonic()
    with pytest.raises(SystemExit, match=f"worker 0 ended \\(exit status {status}\\) without its result"):
        year.in_processes(decide_share, [1, 2], Bar())
    assert time.monotonic() - started < 30
