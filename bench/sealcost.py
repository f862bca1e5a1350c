"""What seals cost the proxy: the decision path with every decision logged, sealed
(SHA-256 and HMAC, fsync at each seal) against the same logging without seals.

    python bench/sealcost.py [--messages N] [--runs R]
    python bench/sealcost.py --proxy [--runs R] [--seconds T] [--rate Q [--latency-seconds L]]

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

``--proxy`` measures the same through the running proxy, which is what the bar names:
``stategate run`` with its default log (sealed with SHA-256, fsync after seals) and with
``fsync = false``, against the same proxy with its log unsealed (``bench/_unsealed.py``:
the same lines, no hash, no seals, no fsync), each driven in turn by bench/e2e.py's load
generator and switch (four connections sending as fast as the proxy takes them,
responses flowing back), rounds interleaved as above: messages decided and logged a
second, from the log's ``seq``.  On this two-core machine the seal's hash thread and
fsync share the CPUs with the load generator and the switch, so their whole cost shows.
With ``--rate Q``, each round also offers each proxy Q queries a second on one
connection for ``--latency-seconds`` (e2e.py's latency run) and reports the round
trip's p50 and p99, and what each configuration adds to the unsealed one's (the median
over rounds of each round's difference): whether the seals and their fsync lengthen
a query's round trip, at the rate of the p99 bar (issue 4).
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

from _common import print_machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--proxy", action="store_true", help="through a running proxy (see above)")
    ap.add_argument("--seconds", type=float, default=3.0, help="--proxy: sending time of each run")
    ap.add_argument("--rate", type=int, default=0,
                    help="--proxy: also a latency run at this many queries a second each round (0: none)")
    ap.add_argument("--latency-seconds", type=float, default=4.0, help="--proxy: sending time of a latency run")
    args = ap.parse_args()
    if args.proxy:
        proxy_runs(args)
        return

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
    print_machine(latency=False)
    _report(results)


def proxy_runs(args: argparse.Namespace) -> None:
    """--proxy: the proxy's own throughput, sealed against unsealed."""
    import subprocess

    import e2e

    load_args = argparse.Namespace(seed=7, pool=20_000, connections=4, seconds=args.seconds)
    unsealed = [sys.executable, str(Path(__file__).resolve().parent / "_unsealed.py")]
    programs = {"unsealed": (unsealed, ""), "sealed sha256, fsync": (None, ""),
                "sealed sha256, no fsync": (None, "fsync = false\n")}  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in programs}
    #: per configuration, each round's (p50, p99) round trip in microseconds (--rate)
    latencies: dict[str, list[tuple[float, float]]] = {name: [] for name in programs}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        switch = subprocess.Popen([sys.executable, str(e2e.HERE), "--role", "switch", "--seed", "7",
                                   "--pool", str(load_args.pool)], stdout=subprocess.PIPE)  # fmt: skip
        procs = [switch]
        try:
            switch_port = int(switch.stdout.readline())
            proxies = {}
            for i, (name, (program, log)) in enumerate(programs.items()):
                workdir = Path(tmp) / str(i)
                workdir.mkdir()
                proc, port = e2e.start_stategate(switch_port, workdir, program=program, log=log)
                procs.append(proc)
                proxies[name] = (proc, port, workdir)
            for run in range(args.runs):
                for name, (proc, port, workdir) in list(proxies.items())[:: -1 if run % 2 else 1]:
                    r = e2e.stategate_throughput(load_args, port, proc.pid, workdir)
                    results[name].append(r["decided"] / r["seconds"])
                    _drop_rotated(workdir)
                    os.sync()  # this run's writeback done before the next run starts
                    if args.rate:
                        r = e2e.load(load_args, port, rate=args.rate, seconds=args.latency_seconds)
                        latencies[name].append((r["p50_us"], r["p99_us"]))
                        os.sync()
            seals = {name: _seal_records(workdir) for name, (_, _, workdir) in proxies.items()}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=15)
    print_machine(latency=True)
    print(f"through the proxy (stategate run), {load_args.connections} connections, "
          f"{args.seconds:g} s of sending a run, {args.runs} rounds:")
    _report(results)
    if args.rate:
        print(f"\nround trip at {args.rate:,} queries a second, one connection, {args.latency_seconds:g} s a run:")
        _report_latency(latencies)
    # what each proxy's log holds now (the older rotated files were deleted)
    print("seal records in each log: " + ", ".join(f"{name} {n:,}" for name, n in seals.items()))
    if seals["unsealed"] or not all(n for name, n in seals.items() if name != "unsealed"):
        raise SystemExit("sealcost: the unsealed log has seals, or a sealed one has none")


def _report_latency(latencies: dict[str, list[tuple[float, float]]]) -> None:
    """Each configuration's median p50 and p99, and the median over rounds of its
    difference to the unsealed run of the same round."""
    base = latencies["unsealed"]
    print(f"{'configuration':<26}{'p50 us':>8}{'p99 us':>8}{'vs unsealed: p50':>18}{'p99':>7}   p99 of each round (us)")
    for name, runs in latencies.items():
        p50 = statistics.median(a for a, _ in runs)
        p99 = statistics.median(b for _, b in runs)
        d50 = statistics.median(a - a0 for (a, _), (a0, _) in zip(runs, base))
        d99 = statistics.median(b - b0 for (_, b), (_, b0) in zip(runs, base))
        print(f"{name:<26}{p50:>8,.0f}{p99:>8,.0f}{d50:>+18,.0f}{d99:>+7,.0f}   {', '.join(f'{b:,.0f}' for _, b in runs)}")
    print("(vs unsealed: the median over rounds of each round's difference to its own unsealed run)")


def _seal_records(workdir: Path) -> int:
    return sum(line.startswith(b'{"seal"') for path in workdir.glob("decisions.jsonl*")
               for line in path.open("rb"))  # fmt: skip


def _drop_rotated(workdir: Path) -> None:
    """Delete all but the newest rotated file of the log in workdir, so a long run does
    not fill the disk (the newest stays: it holds the last ``seq`` when the base file
    has just been rotated)."""
    rotated = sorted(workdir.glob("decisions.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    for path in rotated[:-1]:
        path.unlink()


def _report(results: dict[str, list[float]]) -> None:
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
