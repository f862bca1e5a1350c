"""A year of Nlets DMV traffic at the seeds' scale through the compiled decision path.

    python bench/year.py --scale 1.0      # 290,000,000 messages, really all of them
    python bench/year.py --scale 0.01     # a quick run
    python bench/year.py --scale 1.0 --workers 2   # the year split over two processes

Messages come from a pool of distinct synthetic messages (at least a million at scale
1.0: `--pool`), generated once from a seed with the seeds' share of ICE and HSI
queries, framed (len32) into one stream and fed to the compiled engine in chunks of
the proxy's receive size (``proxy._pipeline.RECEIVE_SIZE``, 128 KiB), as the proxy
receives them at full load, again and again until the year's count is decided.  The
matcher caches per field value (an ORI, a key), never per message.
In the same run the plain-Python twin decides a sample of the pool, for the ratio.
What is timed is the decision path the issue sets the bar for: framing + decoding +
decision of every message, counted by rule (Engine.decide).  In the same run, one
pass over the pool with each decision's log line formatted too (Engine.feed, what the
proxy runs) gives that rate; writing and sealing the log is measured by
bench/sealcost.py and bench/e2e.py.  The twin's rate is the same path in plain Python:
proxy._framing, proxy._decode and proxy._policy.decide.

Beside the wall time the run reports the CPU time its deciding took, the share of the
machine's CPU time the hypervisor gave to other guests meanwhile (steal), and the rate
in each second of the run (its median, fastest and slowest second), so that a slow run
on a shared machine can be told from slow code: on the 2-core VM of bench/README.md one
process's rate moved by a third from one second to the next, its code and memory the
same.  ``--workers N`` splits the year over N processes, forked after the pool is built
(each with its own copy of the matcher and an engine of its own, each deciding its
share from the pool's start), as a state re-deciding a year of traffic would use every
core it has; the one-core rate is the default run's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_jiffies, machine, steal_share  # noqa: E402

YEAR = 290_000_000
PROGRESS_EVERY = 64  # chunks a worker decides between reports to the progress bar
SLICE = 1.0  # seconds: the rate is also reported per slice of the run this long


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.01, help="share of the year (1.0 = 290 million)")
    ap.add_argument("--pool", type=int, default=1_000_000,
                    help="distinct messages in the pool (capped at the count)")  # fmt: skip
    ap.add_argument("--sample", type=int, default=20_000, help="messages for the plain-Python twin")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the year (default 1: one core)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be at least 1")

    from tqdm import tqdm

    from proxy._config import load_config
    from proxy._decode import Malformed, decode
    from proxy._demo import EXAMPLE_POLICY
    from proxy._fastmatch import Engine, Matcher
    from proxy._framing import frame, make_framer
    from proxy._pipeline import Sequencer, utc_timestamp
    from proxy._policy import compile_policy, decide
    from proxy._pipeline import RECEIVE_SIZE as CHUNK
    from proxy._traffic import TrafficGenerator

    total = int(YEAR * args.scale)
    pool_size = max(1, min(args.pool, total))
    policy = compile_policy(load_config(EXAMPLE_POLICY))
    matcher = Matcher(policy)
    print(f"{machine()}\ngenerating a pool of {pool_size:,} distinct messages (seed {args.seed}) ...", flush=True)
    gen = TrafficGenerator(args.seed, policy.state)
    seen: set[bytes] = set()
    pool = []
    while len(pool) < pool_size:  # distinct messages only
        p = gen.query().payload
        if p not in seen:
            seen.add(p)
            pool.append(p)
    distinct = len(seen)
    del seen
    stream = b"".join(frame(p, "len32") for p in pool)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    del stream

    # The plain-Python twin on a sample, in the same run.
    sample = b"".join(frame(p, "len32") for p in pool[: args.sample])
    framer = make_framer("len32", 1 << 20, b"")
    t = time.perf_counter()
    ref_n = 0
    for i in range(0, len(sample), CHUNK):
        for event in framer.feed(sample[i : i + CHUNK]):
            try:
                decide(policy, decode(event[1], policy.xml), "in")
            except Malformed:
                pass
            ref_n += 1
    twin_rate = ref_n / (time.perf_counter() - t)

    # One pass with the log lines formatted, as the proxy runs it.
    engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", Sequencer())
    t = time.perf_counter()
    fed = sum(engine.feed(c, matcher, utc_timestamp()).count for c in chunks)
    feed_rate = fed / (time.perf_counter() - t)

    def decide_share(share: int, report: Any) -> tuple[int, float, dict, list[tuple[float, int]]]:
        """Decide at least ``share`` messages from the pool's start (whole chunks, so
        the count ends at or just past it) with a fresh engine, calling ``report(n)``
        now and then with the count since the last call.  Returns the count, the CPU
        time the deciding took, the counts by rule, and (time, count so far) at each
        report."""
        seq = Sequencer()
        engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", seq)
        done = unreported = 0
        marks = [(time.perf_counter(), 0)]
        cpu = time.process_time()
        while done < share:
            for k, c in enumerate(chunks):
                n = engine.decide(c, matcher)
                done += n
                unreported += n
                if k % PROGRESS_EVERY == 0 or done >= share:
                    report(unreported)
                    unreported = 0
                    marks.append((time.perf_counter(), done))
                if done >= share:
                    break
        return done, time.process_time() - cpu, seq.counts, marks

    bar = tqdm(total=total, unit="msg", unit_scale=True, disable=args.no_progress, smoothing=0.1)
    before = cpu_jiffies()
    if args.workers == 1:
        t = time.perf_counter()
        done, cpu, by_rule, marks = decide_share(total, bar.update)
        wall = time.perf_counter() - t
        cpus = [cpu]
        slices = [slice_rates(marks, SLICE)]
    else:
        shares = [total // args.workers + (1 if k < total % args.workers else 0) for k in range(args.workers)]
        wall, results = in_processes(decide_share, shares, bar)
        done = sum(r[0] for r in results)
        cpus = [r[1] for r in results]
        slices = [slice_rates(r[3], SLICE) for r in results]
        by_rule = {}
        for r in results:
            for key, n in r[2].items():
                by_rule[key] = by_rule.get(key, 0) + n
    steal = steal_share(before, cpu_jiffies())
    bar.close()
    rate = done / wall
    counts: dict[str, int] = {}
    for (_, action, _), n in by_rule.items():
        counts[action] = counts.get(action, 0) + n
    dhs = sum(n for (_, action, rule), n in by_rule.items() if rule == "no-dmv-for-immigration")
    print(f"pool: {pool_size:,} messages, {distinct:,} distinct, in chunks of {CHUNK:,} bytes")
    where = "one core" if args.workers == 1 else f"{args.workers} processes"
    print(f"decided: {done:,} messages in {wall:.1f} s = {rate:,.0f} decisions/s (compiled, {where})")
    print(f"  CPU time deciding: {' + '.join(f'{c:.2f}' for c in cpus)} s "
          f"({done / sum(cpus):,.0f} decisions a CPU second); "
          f"the hypervisor stole {100 * steal:.1f}% of the machine's CPU time meanwhile")  # fmt: skip
    for k, rates in enumerate(slices):
        if rates:
            who = "" if len(slices) == 1 else f"process {k + 1}, "
            print(f"  {who}decisions a second in each {SLICE:g} s of the run: median "
                  f"{statistics.median(rates):,.0f}, fastest {max(rates):,.0f}, slowest {min(rates):,.0f}")  # fmt: skip
    print(f"  by action: {', '.join(f'{a} {n:,}' for a, n in sorted(counts.items()))}; "
          f"denied DMV to DHS immigration: {dhs:,}")  # fmt: skip
    per = " a process" if args.workers > 1 else ""
    print(f"plain-Python twin on {ref_n:,} messages: {twin_rate:,.0f} decisions/s; "
          f"compiled is {rate / args.workers / twin_rate:.1f}x{per}")  # fmt: skip
    print(f"with each decision's log line formatted (one pass, {fed:,} messages): {feed_rate:,.0f}/s")
    if args.scale != 1.0:
        print(f"(scale {args.scale}: {done:,} of the year's {YEAR:,})")
    return 0


def slice_rates(marks: list[tuple[float, int]], length: float) -> list[float]:
    """The rate in each successive slice of at least ``length`` seconds, from
    (time, count so far) marks in time order: a slice runs from one mark to the first
    mark ``length`` or more after it, and the run's last part, shorter, is left out."""
    rates = []
    t0, n0 = marks[0]
    for t, n in marks[1:]:
        if t - t0 >= length:
            rates.append((n - n0) / (t - t0))
            t0, n0 = t, n
    return rates


def in_processes(decide_share: Any, shares: list[int], bar: Any) -> tuple[float, list[tuple]]:
    """Run decide_share once per share, each in a process forked from this one (the
    pool and the matcher are shared, copy on write), started together once all are
    ready; returns the wall time from their start to the last one's end, and their
    results in order.  A worker that ends before it is ready or has its result (the
    kernel's OOM killer, a crash) ends the run with an error, not a wait."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.SimpleQueue()
    progress = ctx.SimpleQueue()
    results = ctx.SimpleQueue()
    start = ctx.Event()

    def work(k: int) -> None:
        ready.put((k, None))
        start.wait()
        results.put((k, decide_share(shares[k], progress.put)))

    workers = [ctx.Process(target=work, args=(k,), daemon=True) for k in range(len(shares))]
    for w in workers:
        w.start()
    try:
        gather(ready, workers, progress, bar, "ready")
        t = time.perf_counter()
        start.set()
        out = gather(results, workers, progress, bar, "its result")
        wall = time.perf_counter() - t
    except BaseException:
        for w in workers:  # the others would wait for a start, or decide on for nothing
            w.kill()
        raise
    for w in workers:
        w.join()
    while not progress.empty():
        bar.update(progress.get())
    return wall, [out[k] for k in range(len(shares))]


def gather(queue: Any, workers: list[Any], progress: Any, bar: Any, what: str) -> dict[int, Any]:
    """Each worker's one (number, item) on queue, by number, passing progress to bar
    meanwhile.  SystemExit naming the worker if one ends without putting it."""
    got: dict[int, Any] = {}
    while len(got) < len(workers):
        while not progress.empty():
            bar.update(progress.get())
        if not queue.empty():
            k, item = queue.get()
            got[k] = item
            continue
        ended = [k for k, w in enumerate(workers) if k not in got and w.exitcode is not None]
        if ended and queue.empty():  # looked again: what a worker put before it ended is there now
            raise SystemExit("; ".join(f"worker {k} ended (exit status {workers[k].exitcode}) without {what}"
                                       for k in ended))  # fmt: skip
        time.sleep(0.02)
    return got


if __name__ == "__main__":
    sys.exit(main())
