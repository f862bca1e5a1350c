"""The engine over the micro-benchmarks' mixed stream (1,000 messages), one engine
across passes as a connection has, for profilers and instruction counters, whose
figures do not move with a shared machine's noise as wall time does.

    python bench/feedloop.py --passes 3000                  # ns a message, wall clock
    valgrind --tool=callgrind --callgrind-out-file=cg.out python bench/feedloop.py --passes 20
    callgrind_annotate --inclusive=yes cg.out | grep -E "Engine__run |Engine__line "

``--decide`` runs ``Engine.decide`` (no log lines) instead of ``Engine.feed``.
``--format F`` takes 1,000 generated messages of the one format F (text, xml or json,
with the generator's share of malformed ones) instead of the mix, for the cost of each
format alone.  ``--messages N`` takes N generated messages (of ``--format``, else of the
generator's mix) instead of the micro-benchmarks' stream: tens of thousands are more
than the branch predictors learn, as the year's pool is.  ``--repeat`` takes the first
of them N times: what a message costs when every branch is predicted and its
agency's row is at hand, against the same messages varied.  ``--agencies K`` gives each
other state K agencies instead of the generator's 1,800 (with ten states, the 18,000
Nlets links): how much the agencies' table costs.  ``--warm`` runs one pass before the
timed ones, so that every agency has been seen (its row made, in Python) before the
clock starts, as in a proxy that has run a while.  ``--responses`` decides, in the
``out`` direction, what the simulated switch answers to the generated queries (its
responses: each to the query's nine-character ORI, who is the agency decided) instead
of the queries in the ``in`` direction: the other half of what the proxy decides.
``--log`` also does what the proxy does with each batch, but for the sockets: writes
its lines to a sealed decision log (the proxy's defaults: SHA-256, seals every 1,000
lines, fsync after each in the background, the synced pages dropped behind, in
a temporary directory) and its forwards to /dev/null.  ``--chunk N`` cuts the stream
in chunks of N bytes, as the proxy receives it (131072: its RECEIVE_SIZE).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from test_micro import MATCHER, POLICY, STREAM, TS  # noqa: E402

from proxy._fastmatch import Engine  # noqa: E402
from proxy._framing import frame  # noqa: E402
from proxy._log import DecisionLog  # noqa: E402
from proxy._pipeline import Sequencer  # noqa: E402
from proxy._traffic import TrafficGenerator, switch_response  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3000)
    ap.add_argument("--decide", action="store_true", help="Engine.decide: no log lines")
    ap.add_argument("--log", action="store_true", help="and write each batch as the proxy does")
    ap.add_argument("--chunk", type=int, help="bytes a chunk (default: the stream)")
    ap.add_argument("--format", choices=("text", "xml", "json"), help="one format instead of the mix")
    ap.add_argument("--messages", type=int, help="generated messages instead of the micro-benchmarks' stream")
    ap.add_argument("--repeat", action="store_true", help="the first generated message, --messages times")
    ap.add_argument("--agencies", type=int, help="agencies per other state in the generator")
    ap.add_argument("--warm", action="store_true", help="one untimed pass first")
    ap.add_argument("--responses", action="store_true", help="the switch's responses, decided out")
    args = ap.parse_args()
    if args.decide and args.log:
        ap.error("--log needs the lines that --decide does not make")
    print(machine(), flush=True)
    stream = STREAM
    if args.format or args.messages or args.agencies or args.repeat or args.responses:
        extra = {"formats": ((args.format, 1),)} if args.format else {}
        if args.agencies:
            extra["agencies_per_state"] = args.agencies
        gen = TrafficGenerator(5, **extra)
        count = args.messages or 1000
        payloads = generated(gen, count if not args.repeat else 1, args.responses)
        stream = b"".join(frame(payloads[i % len(payloads)], "len32") for i in range(count))
        print(f"stream: {count:,} " + ("copies of one generated " if args.repeat else "generated ")
              + ("response" if args.responses else "message") + ("" if args.repeat else "s")
              + (f" of {args.format}" if args.format else "")
              + f", {gen.agencies_per_state:,} agencies a state", flush=True)  # fmt: skip
    chunk = args.chunk or len(stream)
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    engine = Engine("out" if args.responses else "in", 1, "127.0.0.1:1", "len32", 1 << 20, b"\r\n\x7f", Sequencer())
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "wb") as sink:
        log = DecisionLog(Path(tmp) / "d.jsonl") if args.log else None
        if args.warm:
            for chunk in chunks:
                engine.decide(chunk, MATCHER)
        t = time.perf_counter()
        decided = 0
        for _ in range(args.passes):
            for chunk in chunks:
                if args.decide:
                    decided += engine.decide(chunk, MATCHER)
                    continue
                batch = engine.feed(chunk, MATCHER, TS)
                decided += batch.count
                if log is not None:
                    log.write_lines(batch.lines, batch.count, batch.last_seq)
                    sink.write(batch.forward)
        elapsed = time.perf_counter() - t
        if log is not None:
            log.close()
    what = "Engine.decide" if args.decide else "Engine.feed" + (" and the log" if args.log else "")
    print(f"{what}: {decided:,} messages, {elapsed / decided * 1e9:.0f} ns a message")
    return 0


def generated(gen: TrafficGenerator, count: int, responses: bool) -> list[bytes]:
    """count generated queries' payloads, or with responses count of what the
    simulated switch answers to them (a query it does not answer is skipped)."""
    if not responses:
        return [gen.query().payload for _ in range(count)]
    rng = random.Random(5)
    out: list[bytes] = []
    while len(out) < count:
        r = switch_response(gen.query().payload, POLICY.local_ori, rng)
        if r is not None:
            out.append(r)
    return out


if __name__ == "__main__":
    sys.exit(main())
