"""Where the matcher's agency sieve stops paying: the compiled decision path under the
example policy with more and more exact ORIs added to one of its groups.

    python bench/sieve.py --pool 300000 --rounds 40 --extra 0,3,5,9,10

Each ``--extra`` count adds that many exact ORIs (``ZZ0000000``, ``ZZ0000001`` …, which
no generated message comes from) to the ``federal_other`` group, so the policy's sieve
has that many more tests; past the matcher's limit (``sieve_limit()``: 16 where the sieve
tests eight at a time with AVX-512, 12 one at a time, as with ``STATEGATE_AVX512=0``) it
has no sieve and every agency goes through the party table.  One process decides the same pool of the
year's mix (``Engine.decide`` over 64 KiB chunks, as ``year.py`` does) under each
policy in turn, the order reversed every other round, and prints per policy its number
of sieve tests, whether it has a sieve, the median ns a message and the median over
rounds of its ratio to the first policy in the same round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy._config import parse_config  # noqa: E402
from proxy._demo import EXAMPLE_POLICY  # noqa: E402
from proxy._fastmatch import Engine, Matcher, sieve_entries  # noqa: E402
from proxy._framing import frame  # noqa: E402
from proxy._pipeline import Sequencer  # noqa: E402
from proxy._policy import Policy, compile_policy  # noqa: E402
from proxy._traffic import TrafficGenerator  # noqa: E402


def policy_with(extra: int) -> Policy:
    """The example policy with ``extra`` exact ORIs added to its federal_other group."""
    text = Path(EXAMPLE_POLICY).read_text()
    anchor = 'ori = ["DCFBI????"'
    assert anchor in text, "the example policy's federal_other group has changed"
    added = "".join(f'"ZZ{i:07d}", ' for i in range(extra))
    return compile_policy(parse_config(text.replace(anchor, 'ori = [' + added + '"DCFBI????"')))


def sieve_tests(policy: Policy) -> int:
    return len(sieve_entries(policy.party_entries()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=300_000, help="distinct messages of the year's mix")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--extra", type=lambda s: [int(x) for x in s.split(",")], default=[0, 3, 5, 9, 10],
                    help="ORIs added to the group, one policy each (the first is the baseline)")
    ap.add_argument("--seed", type=int, default=2025)
    args = ap.parse_args()

    policies = {n: policy_with(n) for n in args.extra}
    matchers = {n: Matcher(p) for n, p in policies.items()}
    gen = TrafficGenerator(args.seed, policies[args.extra[0]].state)
    stream = b"".join(frame(gen.query().payload, "len32") for _ in range(args.pool))
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    engine = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", Sequencer())
    for m in matchers.values():  # warm: every party each matcher will see is entered
        for c in chunks:
            engine.decide(c, m)
    ns: dict[int, list[float]] = {n: [] for n in matchers}
    order = list(matchers.items())
    for r in range(args.rounds):
        for n, m in order if r % 2 == 0 else reversed(order):
            t = time.perf_counter()
            for c in chunks:
                engine.decide(c, m)
            ns[n].append((time.perf_counter() - t) / args.pool * 1e9)
    base = ns[args.extra[0]]
    print(f"pool {args.pool:,} messages, {args.rounds} rounds; ratio: median over rounds to {args.extra[0]} added")
    for n in matchers:
        tests = sieve_tests(policies[n])
        kind = "sieve" if matchers[n].sieved else "no sieve (the table)"
        ratio = statistics.median(a / b for a, b in zip(ns[n], base))
        print(f"  {n:>3} ORIs added: {tests:>3} tests, {kind:<21} {statistics.median(ns[n]):8.2f} ns/msg"
              f"  x{ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
