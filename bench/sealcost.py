"""What seals cost the proxy: the decision path with every decision logged, sealed
(SHA-256 and HMAC, fsync at each seal) against the same logging without seals.

    python bench/sealcost.py [--messages N] [--runs R]

Each configuration runs the compiled engine over the same pre-framed synthetic
traffic in 64 KiB chunks (as the proxy receives it) and writes every batch to a real
log file, as the proxy does before forwarding.  Configurations are interleaved run by
run, in the reverse order every other run, and each is compared with the unsealed run
of the same round (the median of those ratios), so machine noise hits all alike.
Between configurations, untimed, everything written is synced to disk and the file
deleted, so that no run pays for the writeback of the one before it (without that,
at a million messages a run the unsealed run, which follows the unsynced one, was
the slowest by half).  The bar (issue 3): sealed logging costs no more than 15% of
the unsealed throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from proxy._config import load_config
    from proxy._demo import EXAMPLE_POLICY
    from proxy._fastmatch import Engine, Matcher
    from proxy._framing import frame
    from proxy._log import DecisionLog
    from proxy._pipeline import Sequencer, utc_timestamp
    from proxy._policy import compile_policy
    from proxy._traffic import TrafficGenerator

    policy = compile_policy(load_config(EXAMPLE_POLICY))
    matcher = Matcher(policy)
    gen = TrafficGenerator(3, policy.state)
    stream = b"".join(frame(g.payload, "len32") for g in gen.queries(args.messages))
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]

    configs = {
        "unsealed": dict(sealed=False),
        "sealed sha256, fsync": dict(),
        "sealed hmac, fsync": dict(key=b"benchmark-key"),
        "sealed sha256, no fsync": dict(fsync=False),
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for run in range(args.runs):
            for name, kw in list(configs.items())[:: -1 if run % 2 else 1]:
                path = Path(tmp) / f"{run}-{name.replace(' ', '_')}.jsonl"
                log = DecisionLog(path, seal_every=1000, **kw)
                engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"\r\n\x7f", Sequencer())
                t = time.perf_counter()
                for c in chunks:
                    batch = engine.feed(c, matcher, utc_timestamp())
                    log.write_lines(batch.lines, batch.count, batch.last_seq)
                    log.tick()
                # steady state: the final seal and fsync at close happen once a run
                results[name].append(args.messages / (time.perf_counter() - t))
                log.close()
                path.unlink()
                os.sync()  # this run's writeback done before the next run's clock starts
    print(machine())
    # Each run's configurations ran back to back, so the ratio within a run cancels most
    # of the machine's drift; the median of those ratios is the figure.
    base = results["unsealed"]
    print(f"{'configuration':<26}{'median msg/s':>14}{'vs unsealed':>13}   runs (msg/s)")
    for name, rates in results.items():
        ratio = statistics.median(r / b for r, b in zip(rates, base))
        print(f"{name:<26}{statistics.median(rates):>14,.0f}{ratio:>12.1%}   {', '.join(f'{r:,.0f}' for r in rates)}")
    print("(vs unsealed: the median over runs of each run's ratio to its own unsealed run)")


if __name__ == "__main__":
    main()
