"""The engine over the micro-benchmarks' mixed stream (1,000 messages), one engine
across passes as a connection has, for profilers and instruction counters, whose
figures do not move with a shared machine's noise as wall time does.

    python bench/feedloop.py --passes 3000                  # ns a message, wall clock
    valgrind --tool=callgrind --callgrind-out-file=cg.out python bench/feedloop.py --passes 20
    callgrind_annotate --inclusive=yes cg.out | grep -E "Engine__run |Engine__line "

``--decide`` runs ``Engine.decide`` (no log lines) instead of ``Engine.feed``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from test_micro import MATCHER, STREAM, TS  # noqa: E402

from proxy._fastmatch import Engine  # noqa: E402
from proxy._pipeline import Sequencer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3000)
    ap.add_argument("--decide", action="store_true", help="Engine.decide: no log lines")
    args = ap.parse_args()
    print(machine(), flush=True)
    engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"\r\n\x7f", Sequencer())
    t = time.perf_counter()
    decided = 0
    for _ in range(args.passes):
        if args.decide:
            decided += engine.decide(STREAM, MATCHER)
        else:
            decided += engine.feed(STREAM, MATCHER, TS).count
    elapsed = time.perf_counter() - t
    what = "Engine.decide" if args.decide else "Engine.feed"
    print(f"{what}: {decided:,} messages, {elapsed / decided * 1e9:.0f} ns a message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
