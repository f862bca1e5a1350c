"""Shared by the benchmarks: machine description, medians, a realistic log."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from proxy._fastmatch import text_masks_in_use

    return f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, text masks {text_masks_in_use()}"


def idle_polling() -> str | None:
    """How long an idle CPU polls before it halts, where the guest kernel's haltpoll
    idle driver says (a KVM guest): None elsewhere.  A halted virtual CPU is woken
    through the hypervisor, and on the 2-core VM of bench/README.md, whose polling is
    off, that wake-up is most of a relay's latency at 10,000 queries a second
    ("halt polling"), so a latency figure is read with it."""
    try:
        ns = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns").read_text().strip()
        driver = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        return None
    if driver != "haltpoll":
        return None
    return f"idle CPUs poll {int(ns) / 1000:g} us before halting (haltpoll guest_halt_poll_ns {ns})"


def print_machine(latency: bool) -> None:
    """The machine line, and where latency is measured, the idle CPUs' polling under
    it (idle_polling), which such a figure is read with."""
    print(machine(), flush=True)
    if latency and (polling := idle_polling()) is not None:
        print(polling, flush=True)


def cpu_jiffies() -> dict[str, int]:
    """The machine's CPU time so far by kind, all CPUs (/proc/stat's first line), in
    clock ticks; empty where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields)))


def steal_share(before: dict[str, int], after: dict[str, int]) -> float:
    """Of the CPU time between two :func:`cpu_jiffies` readings, the share the
    hypervisor gave to other guests while this one had work (``steal``): time a
    process here was ready and no real CPU ran it."""
    if not before or not after:
        return float("nan")
    total = sum(after.values()) - sum(before.values())
    return (after["steal"] - before["steal"]) / total if total else 0.0


def order_balanced(ratios: list[float | None]) -> float | None:
    """The median, over pairs of rounds (the first and second, the third and fourth
    ...), of each pair's geometric mean ratio; None when no pair has both ratios.

    bench/ab.py runs a round's trees in one order and the next round's in the
    reverse order.  When the tree that runs first in a round gains from it (a cache
    or a CPU frequency still warm from the round before), a ratio per round swings
    with the order, and their median can land on one side of it; in a pair the
    gain counts once each way and cancels."""
    pairs = [math.sqrt(a * b) for a, b in zip(ratios[0::2], ratios[1::2]) if a and b]
    return statistics.median(pairs) if pairs else None


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def build_log(path: Path, lines: int, *, seal_every: int = 1000, seed: int = 1) -> int:
    """A log of about ``lines`` decision lines from synthetic traffic through the real
    engine and policy (in and out), written by the real sealed writer."""
    from proxy._config import load_config
    from proxy._demo import EXAMPLE_POLICY
    from proxy._fastmatch import Engine, Matcher
    from proxy._framing import frame
    from proxy._log import DecisionLog
    from proxy._pipeline import Sequencer, utc_timestamp
    from proxy._policy import compile_policy
    from proxy._traffic import TrafficGenerator, response_for

    import random

    policy = compile_policy(load_config(EXAMPLE_POLICY))
    matcher = Matcher(policy)
    seqr = Sequencer()
    gen = TrafficGenerator(seed, policy.state, dhs_share=0.02, malformed_share=0.005)
    rng = random.Random(seed)
    # A pool of chunks, replayed with fresh timestamps until the log is long enough.
    chunks_in, chunks_out = [], []
    for _ in range(200):
        qs = list(gen.queries(100))
        chunks_in.append(b"".join(frame(q.payload, "len32") for q in qs))
        outs = []
        for q in qs:
            if q.malformed:
                continue
            r = response_for(q.fmt, q.mke, q.ori, None, policy.local_ori, rng)
            if r is not None:
                outs.append(frame(r, "len32"))
        chunks_out.append(b"".join(outs))
    if path.exists():
        path.unlink()
    written = 0
    with DecisionLog(path, seal_every=seal_every, rotate_bytes=1 << 40, fsync=False) as log:
        i = 0
        while written < lines:
            for direction, chunk in (("in", chunks_in[i % 200]), ("out", chunks_out[i % 200])):
                e = Engine(direction, 1 + i % 50, f"127.0.0.1:{40000 + i % 50}", "len32", 1 << 20,
                           b"\r\n\x7f", seqr)  # fmt: skip
                batch = e.feed(chunk, matcher, utc_timestamp())
                log.write_lines(batch.lines, batch.count, batch.last_seq)
                written += batch.count
            i += 1
    return written
