"""The proxy's chunk-time histogram, kept as bare bucket counts, reads on /metrics
exactly as prometheus_client's own Histogram would for the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.registry import Collector

from proxy._metrics import LATENCY_BUCKETS, BucketCounts

NAME = "stategate_decision_latency_seconds"
DOC = "From a chunk's arrival to its decisions logged and its messages forwarded"


def exposition_lines(registry: CollectorRegistry) -> list[str]:
    """The histogram's bucket, count and sum lines (not ``_created``, which only
    prometheus_client's own Histogram has)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines()
            if line.startswith(NAME) and not line.startswith(f"{NAME}_created")]  # fmt: skip


class _One(Collector):
    def __init__(self, counts: BucketCounts) -> None:
        self.counts = counts

    def collect(self):
        yield self.counts.family(NAME, DOC)


def test_bucket_counts_read_as_prometheus_histogram():
    rng = random.Random(7)
    # every bound exactly (a value on a bound counts in that bucket), just either
    # side of each, zero, and values past the last bound
    values = [0.0, 1.0, 3.0]
    for b in LATENCY_BUCKETS:
        values += [b, b * (1 - 1e-9), b * (1 + 1e-9)]
    values += [rng.expovariate(1 / 3e-4) for _ in range(5000)]
    rng.shuffle(values)

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = BucketCounts(LATENCY_BUCKETS)
    ours.register(_One(counts))
    reference = Histogram(NAME, DOC, buckets=LATENCY_BUCKETS, registry=theirs)
    for v in values:
        counts.observe(v)
        reference.observe(v)

    got, want = exposition_lines(ours), exposition_lines(theirs)
    assert len(got) == len(LATENCY_BUCKETS) + 3  # each bound, +Inf, count, sum
    # prometheus_client sums in a different order: compare the sum as a number
    assert got[:-1] == want[:-1]
    assert got[-1].startswith(f"{NAME}_sum ") and want[-1].startswith(f"{NAME}_sum ")
    assert abs(float(got[-1].split()[1]) - float(want[-1].split()[1])) < 1e-9
    assert f'{NAME}_count {float(len(values))}' in got


def test_empty_bucket_counts_read_as_zero():
    registry = CollectorRegistry()
    registry.register(_One(BucketCounts(LATENCY_BUCKETS)))
    lines = exposition_lines(registry)
    assert f'{NAME}_bucket{{le="+Inf"}} 0.0' in lines
    assert f"{NAME}_count 0.0" in lines
    assert all(line.endswith(" 0.0") for line in lines)
