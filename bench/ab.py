"""A/B: `stategate run` from two or more source trees, in turn, against one switch,
so that a change is judged on a noisy machine by runs that interleave with those of
the tree before it.

    git worktree add ../before HEAD~1
    python bench/ab.py --build ../before .        # builds each tree's extensions in place
    python bench/ab.py ../before . --rounds 6 --rate 10000 --trips 2000
    python bench/ab.py ../before . --decide --pool 60000   # the decision path only
    python bench/ab.py ../before . --decide --one-process --rounds 300 --passes 1 --pool 300000

Each round starts every tree's proxy in turn (the order reversed every other round)
with the same config, policy and log settings as bench/e2e.py, and measures it the
same way, with e2e's load generator and switch:

* throughput (`--connections` connections for `--seconds`): messages decided and
  logged a second, both directions, from the log's `seq`, and the proxy's CPU time
  (user plus system) and minor page faults (memory touched for the first time, which
  costs much on a VM) per message decided;
* latency at `--rate` queries a second (0: skipped): round trip p50 and p99, and the
  proxy's CPU per query;
* serial round trips (`--trips`, 0: skipped): the proxy's CPU per round trip, one
  query in flight, so every chunk is one message.

With `--decide`, a round measures each tree's compiled decision path instead, as
bench/year.py runs it (`Engine.decide` over chunks of the proxy's receive size, or of
`--chunk` bytes, of `--pool` distinct messages of the mix, framed len32, the example
policy), in a process of its own with that tree's `proxy` on its path: ns a message,
the fastest of `--passes` passes, since on a shared machine noise only ever adds.  A
pool larger than the branch predictors can learn (tens of thousands) is what the year
sees; a small pool flatters the code.

With `--decide --feed`, the path measured is `Engine.feed` instead: the decisions
and each one's log line formatted, what the proxy runs on a chunk before writing it.

With `--decide --one-process`, every tree's compiled engine is loaded into one process
(each from its own file, under the one module name; the Python modules are the first
tree's, so this compares engines, not the rest) and the rounds alternate between them
there: a pass takes milliseconds, so hundreds of rounds fit in a minute, and the two
sides of each ratio ran a few milliseconds apart.  On this machine that resolved a
change of 5% that separate processes could only suggest (bench/README.md).

It prints each round, then per tree the medians, and for every tree after the first
the median over rounds of its ratio to the first tree in the same round (a round's
trees share the machine's state of the moment).  Beside it, the order-balanced
ratio (_common.order_balanced): the median over pairs of rounds, whose orders are
reversed, of each pair's geometric mean.  Where the two differ, the tree that ran
first in a round had an edge (in a run of six rounds of the proxy's throughput on
2026-12-02, the tree that ran first was the faster in five, by 7 to 27%), and the
order-balanced figure is the one to quote; it needs an even number of rounds.

`--build` builds each tree's extensions (`pip wheel`, with the build dependencies of
that tree's pyproject.toml) and puts them in the tree, for a worktree that has none.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402
from _common import order_balanced, print_machine  # noqa: E402
from proxy._pipeline import RECEIVE_SIZE  # noqa: E402

#: What one round measures of a tree, and whether more is better.
MEASURES = {
    "decided_per_s": True,
    "cpu_us_per_msg": False,
    "faults_per_msg": False,
    "p50_us": False,
    "p99_us": False,
    "cpu_us_per_query": False,
    "cpu_us_per_trip": False,
    "decide_ns_per_msg": False,
    "feed_ns_per_msg": False,
}

#: The decision path of each tree given (--decide: one tree a process, with that tree's
#: proxy on sys.path; --one-process: all of them), each tree's compiled engine loaded
#: from its own file under the one name, the Python modules (policy, generator,
#: framing) the first tree's.  Prints a line a round: each tree's ns a message, the
#: fastest of its passes, trees in turn, the order reversed every other round.
DECIDE = """
import glob, importlib.util, sys, time
from proxy._config import load_config
from proxy._demo import EXAMPLE_POLICY
from proxy._framing import frame
from proxy._pipeline import Sequencer
from proxy._policy import compile_policy
from proxy._traffic import TrafficGenerator
pool, passes, seed, rounds, size, feed = (int(a) for a in sys.argv[1:7])
trees = sys.argv[7:]

def load(tree):
    (path,) = glob.glob(tree + "/proxy/_fastmatch*.so")
    spec = importlib.util.spec_from_file_location("proxy._fastmatch", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["proxy._fastmatch"] = module  # its relative imports find the first tree's
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["proxy._fastmatch"]
    if module.__file__ != path:
        raise SystemExit(f"loaded {module.__file__}, not {path}")
    return module

policy = compile_policy(load_config(EXAMPLE_POLICY))
gen = TrafficGenerator(seed, policy.state)
stream = b"".join(frame(gen.query().payload, "len32") for _ in range(pool))
chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
runs = []
for module in map(load, trees):
    engine = module.Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", Sequencer())
    matcher = module.Matcher(policy)
    for c in chunks:  # every party seen once: the year's steady state
        engine.decide(c, matcher)
    runs.append((engine, matcher))

def fastest(engine, matcher):
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        if feed:  # with each decision's log line formatted, as the proxy runs it
            n = sum(engine.feed(c, matcher).count for c in chunks)
        else:
            n = sum(engine.decide(c, matcher) for c in chunks)
        best = min(best, (time.perf_counter() - t) / n * 1e9)
    return best

for r in range(rounds):
    order = range(len(runs)) if r % 2 == 0 else range(len(runs) - 1, -1, -1)
    ns = {i: fastest(*runs[i]) for i in order}
    print(" ".join(repr(ns[i]) for i in range(len(runs))), flush=True)
"""


def build(tree: Path) -> None:
    """Build tree's extensions with pip, as a fresh install would, and unpack them
    into the tree's proxy/ (a source tree has none until built)."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, str(tree)],
                       check=True)  # fmt: skip
        (wheel,) = Path(out).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("proxy/") and name.endswith(".so"):
                    (tree / name).write_bytes(z.read(name))
                    print(f"built {tree / name}")


def shown(v: float) -> str:
    """A figure to read: whole numbers from 100 up, four significant digits below."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


def measure_decide(trees: list[Path], rounds: int, args: argparse.Namespace) -> list[list[dict[str, float]]]:
    """The trees' decision paths in one process of their own, ``rounds`` rounds
    alternated; by tree, a measure a round."""
    out = subprocess.run([sys.executable, "-c", DECIDE, str(args.pool), str(args.passes), str(args.seed),
                          str(rounds), str(args.chunk), str(int(args.feed)), *map(str, trees)],
                         cwd=trees[0], env={"PYTHONPATH": str(trees[0])}, capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{', '.join(map(str, trees))}: the decision path did not run:\n{out.stderr}")
    rows = [[float(x) for x in line.split()] for line in out.stdout.splitlines()]
    key = "feed_ns_per_msg" if args.feed else "decide_ns_per_msg"
    return [[{key: row[i]} for row in rows] for i in range(len(trees))]


def measure(tree: Path, switch_port: int, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    """One tree's proxy, started fresh, through each measurement in turn."""
    for f in workdir.glob("decisions*"):
        f.unlink()
    proc, port = e2e.start_stategate(switch_port, workdir, tree)
    out: dict[str, float] = {}
    try:
        if f"{tree}/proxy/_fastmatch" not in Path(f"/proc/{proc.pid}/maps").read_text():
            raise SystemExit(f"the proxy started for {tree} did not load that tree's engine")
        e2e.load(args, port, rate=2000, seconds=1)  # warm up: caches, buffers, the log file
        r = e2e.stategate_throughput(args, port, proc.pid, workdir)
        decided = r["decided"]
        if decided <= 0:
            raise SystemExit(f"{tree}: the proxy decided nothing (did it start? are its extensions built?)")
        out["decided_per_s"] = decided / r["seconds"]
        out["cpu_us_per_msg"] = r["cpu_seconds"] / decided * 1e6
        out["faults_per_msg"] = r["faults"] / decided
        if args.rate:
            cpu0 = e2e.cpu_seconds(proc.pid)
            r = e2e.load(args, port, rate=args.rate, seconds=args.latency_seconds)
            out["p50_us"], out["p99_us"] = r["p50_us"], r["p99_us"]
            out["cpu_us_per_query"] = (e2e.cpu_seconds(proc.pid) - cpu0) / r["sent"] * 1e6
        if args.trips:
            cpu0 = e2e.cpu_seconds(proc.pid)
            e2e.load(args, port, trips=args.trips)
            out["cpu_us_per_trip"] = (e2e.cpu_seconds(proc.pid) - cpu0) / args.trips * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", type=Path, help="source trees; the first is the baseline")
    ap.add_argument("--build", action="store_true", help="build each tree's extensions, then exit")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0, help="sending time of a throughput run")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rate", type=int, default=10000, help="queries/s of the latency run (0: none)")
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    ap.add_argument("--trips", type=int, default=1000, help="serial round trips a round (0: none)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pool", type=int, default=20_000)
    ap.add_argument("--decide", action="store_true", help="measure the decision path, not the proxy")
    ap.add_argument("--passes", type=int, default=7, help="passes over the pool a round (--decide)")
    ap.add_argument("--chunk", type=int, default=RECEIVE_SIZE,
                    help="--decide: bytes a chunk (default the proxy's receive size, as bench/year.py)")
    ap.add_argument("--feed", action="store_true",
                    help="--decide: Engine.feed, each decision's log line formatted (the proxy's path)")
    ap.add_argument("--one-process", action="store_true",
                    help="--decide: every tree's engine in one process, rounds alternated (use many rounds)")
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    if args.build:
        for tree in trees:
            build(tree)
        return 0
    for tree in trees:
        if not list((tree / "proxy").glob("_fastmatch*.so")):
            ap.error(f"{tree} has no built extensions: run with --build first")

    print_machine(latency=not args.decide)
    results: list[list[dict[str, float]]] = [[] for _ in trees]  # by index: a tree may come twice

    def run_rounds(measure_one: Callable[[Path], dict[str, float]]) -> None:
        order = list(range(len(trees)))
        for r in range(args.rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                m = measure_one(trees[i])
                results[i].append(m)
                print(f"round {r + 1} {trees[i]}: " + ", ".join(f"{k} {shown(v)}" for k, v in m.items()),
                      flush=True)  # fmt: skip

    if args.decide and args.one_process:
        results = measure_decide(trees, args.rounds, args)
    elif args.decide:
        run_rounds(lambda tree: measure_decide([tree], 1, args)[0][0])
    else:
        switch = subprocess.Popen([sys.executable, str(e2e.HERE), "--role", "switch", "--seed", str(args.seed),
                                   "--pool", str(args.pool)], stdout=subprocess.PIPE)  # fmt: skip
        try:
            switch_port = int(switch.stdout.readline())
            with tempfile.TemporaryDirectory() as tmp:
                run_rounds(lambda tree: measure(tree, switch_port, Path(tmp), args))
        finally:
            switch.terminate()
            switch.wait(timeout=15)
    report(trees, results, args.rounds)
    return 0


def report(trees: list[Path], results: list[list[dict[str, float]]], rounds: int) -> None:
    """Per tree the medians, and after the first tree the median per-round ratios."""
    base = results[0]
    print(f"\nmedians of {rounds} rounds; for each tree after the first, the median of its "
          "per-round ratio to the first (> 1: more of the measure)")  # fmt: skip
    for i, tree in enumerate(trees):
        print(f"  {tree}")
        for key, more_is_better in MEASURES.items():
            if key not in base[0]:
                continue
            values = [m[key] for m in results[i]]
            line = f"    {key:<18}{shown(statistics.median(values)):>14}"
            # a CPU figure can read 0 ticks in a very short run: no ratio that round
            ratios = [m[key] / b[key] if b[key] > 0 else None for m, b in zip(results[i], base)]
            known = [r for r in ratios if r is not None]
            if i and known:
                ratio = statistics.median(known)
                better = (ratio > 1) == more_is_better
                line += f"   x{ratio:.3f} ({'better' if better else 'worse'})"
                balanced = order_balanced(ratios)
                if balanced is not None:
                    line += f"; order-balanced x{balanced:.3f}"
            print(line)


if __name__ == "__main__":
    sys.exit(main())
