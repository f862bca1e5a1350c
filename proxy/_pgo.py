"""The workload the compiled hot path is profiled on while it is built.

setup.py builds ``proxy/_fastmatch.pyx`` profile-guided where the compiler is GCC:
first instrumented, then it runs :func:`train` in a separate process, then it compiles
again with the branch and call counts that run recorded, so that gcc lays out and
inlines the parsers' common paths first (bench/README.md has the gain).  A profile
changes only how fast the code is: never an answer, which the tests check on the
profiled build as on any other.

The workload is generated traffic of the kind the proxy sees: the three formats, both
text header forms, a share of malformed payloads, both directions, both framings,
decided with and without log lines, under the example policy.  Its seed is not the
benchmarks' (bench/year.py and bench/ab.py use their own), so the benchmarks do not
run the very messages the profile was taken on.  It imports only what a build
environment has (the package's Python modules, msgspec and defusedxml; not trio).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: Differs from every benchmark's seed.
TRAINING_SEED = 8_675_309
TRAINING_MESSAGES = 120_000


def train(messages: int = TRAINING_MESSAGES, seed: int = TRAINING_SEED) -> int:
    """Frame, decode and decide ``messages`` generated messages through the compiled
    engine in the ways the proxy and the benchmarks do; returns how many it decided."""
    from ._config import load_config
    from ._fastmatch import Engine, Matcher
    from ._framing import frame
    from ._pipeline import RECEIVE_SIZE, Sequencer
    from ._policy import compile_policy
    from ._traffic import TrafficGenerator

    policy = compile_policy(load_config(Path(__file__).resolve().parent / "examples" / "policy.toml"))
    matcher = Matcher(policy)
    gen = TrafficGenerator(seed, policy.state)
    payloads = [gen.query().payload for _ in range(messages)]
    decided = 0
    for framing, terminator in (("len32", b""), ("delimited", b"\r\n\x7f")):
        stream = b"".join(frame(p, framing, terminator) for p in payloads)
        # cut as the proxy receives it at full load (and bench/year.py cuts the year)
        chunks = [stream[i : i + RECEIVE_SIZE] for i in range(0, len(stream), RECEIVE_SIZE)]
        for direction in ("in", "out"):
            engine = Engine(direction, 1, "127.0.0.1:1", framing, 1 << 20, terminator or b"\r\n\x7f", Sequencer())
            for chunk in chunks:
                decided += engine.decide(chunk, matcher)
            if framing == "len32" and direction == "in":  # the proxy's own path: with log lines
                for chunk in chunks[: max(1, len(chunks) // 4)]:
                    decided += engine.feed(chunk, matcher, "2026-01-01T00:00:00.000000Z").count
    return decided


if __name__ == "__main__":
    print(train(int(sys.argv[1]) if len(sys.argv) > 1 else TRAINING_MESSAGES))
