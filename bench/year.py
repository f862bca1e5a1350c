"""A year of Nlets DMV traffic at the seeds' scale through the compiled decision path.

    python bench/year.py --scale 1.0      # 290,000,000 messages, really all of them
    python bench/year.py --scale 0.01     # a quick run

Messages come from a pool of distinct synthetic messages (at least a million at scale
1.0: `--pool`), generated once from a seed with the seeds' share of ICE and HSI
queries, framed (len32) into one stream and fed to the compiled engine in 64 KiB
chunks, as the proxy receives them, again and again until the year's count is
decided.  The matcher caches per field value (an ORI, a key), never per message.
In the same run the plain-Python twin decides a sample of the pool, for the ratio.
What is timed is the decision path the issue sets the bar for: framing + decoding +
decision of every message, counted by rule (Engine.decide).  In the same run, one
pass over the pool with each decision's log line formatted too (Engine.feed, what the
proxy runs) gives that rate; writing and sealing the log is measured by
bench/sealcost.py and bench/e2e.py.  The twin's rate is the same path in plain Python:
proxy._framing, proxy._decode and proxy._policy.decide.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

YEAR = 290_000_000
CHUNK = 65536


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.01, help="share of the year (1.0 = 290 million)")
    ap.add_argument("--pool", type=int, default=1_000_000,
                    help="distinct messages in the pool (capped at the count)")  # fmt: skip
    ap.add_argument("--sample", type=int, default=20_000, help="messages for the plain-Python twin")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    from tqdm import tqdm

    from proxy._config import load_config
    from proxy._decode import Malformed, decode
    from proxy._demo import EXAMPLE_POLICY
    from proxy._fastmatch import Engine, Matcher
    from proxy._framing import frame, make_framer
    from proxy._pipeline import Sequencer, utc_timestamp
    from proxy._policy import compile_policy, decide
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

    seq = Sequencer()
    engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", seq)
    done = 0  # whole chunks are fed, so the count ends at or just past the total
    bar = tqdm(total=total, unit="msg", unit_scale=True, disable=args.no_progress, smoothing=0.1)
    t = time.perf_counter()
    while done < total:
        for c in chunks:
            n = engine.decide(c, matcher)
            done += n
            bar.update(n)
            if done >= total:
                break
    wall = time.perf_counter() - t
    bar.close()
    rate = done / wall
    counts: dict[str, int] = {}
    for (_, action, _), n in seq.counts.items():
        counts[action] = counts.get(action, 0) + n
    dhs = sum(n for (_, action, rule), n in seq.counts.items() if rule == "no-dmv-for-immigration")
    print(f"pool: {pool_size:,} messages, {distinct:,} distinct")
    print(f"decided: {done:,} messages in {wall:.1f} s = {rate:,.0f} decisions/s (compiled, one core)")
    print(f"  by action: {', '.join(f'{a} {n:,}' for a, n in sorted(counts.items()))}; "
          f"denied DMV to DHS immigration: {dhs:,}")  # fmt: skip
    print(f"plain-Python twin on {ref_n:,} messages: {twin_rate:,.0f} decisions/s; "
          f"compiled is {rate / twin_rate:.1f}x")  # fmt: skip
    print(f"with each decision's log line formatted (one pass, {fed:,} messages): {feed_rate:,.0f}/s")
    if args.scale != 1.0:
        print(f"(scale {args.scale}: {done:,} of the year's {YEAR:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
