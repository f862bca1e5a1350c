"""Speed of the log tools: verify, stats and replay, in lines per second on one core.

    python bench/logtools.py [--lines N] [--runs R]

Builds a sealed log of N lines from synthetic traffic (through the real engine and
writer), then times each tool's function in this process, median of R runs.  The bar
(issue 3): each at least 1,000,000 lines a second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import build_log, machine, median_time  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from proxy._config import load_config
    from proxy._demo import EXAMPLE_POLICY
    from proxy._fastmatch import Matcher
    from proxy._logfiles import log_files
    from proxy._policy import compile_policy
    from proxy._query import records
    from proxy._replay import reference_counts, summarize
    from proxy._scan import replay_counts, weighted_rows
    from proxy._stats import DISCLOSURE_FIELDS, count_by, disclosure, needed_fields, record_rows
    from proxy._verify import verify

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decisions.jsonl"
        n = build_log(path, args.lines)
        files = log_files(path)
        size = sum(f.stat().st_size for f in files)
        print(f"{machine()}")
        print(f"log: {n:,} decision lines, {size / 1e6:,.0f} MB")
        strict = compile_policy(load_config(EXAMPLE_POLICY))
        matcher = Matcher(strict)
        by = ["group", "mke", "action"]
        tools = {
            "verify": lambda: verify(files),
            "stats (disclosure report)": lambda: disclosure(weighted_rows(files, DISCLOSURE_FIELDS, None, None)),
            "stats --by group,mke,action": lambda: count_by(weighted_rows(files, needed_fields(by), None, None), by),
            "stats --by agency,hour": lambda: count_by(weighted_rows(files, ["agency", "hour"], None, None), ["agency", "hour"]),
            "replay": lambda: summarize(replay_counts(files, matcher)),
        }
        # The same answers one record at a time in plain Python, for the ratio.
        plain = {
            "stats (disclosure report)": lambda: disclosure(record_rows(records(files))),
            "replay": lambda: summarize(reference_counts(records(files), matcher)),
        }
        assert tools["stats (disclosure report)"]() == plain["stats (disclosure report)"]()
        assert tools["replay"]() == plain["replay"]()
        print(f"{'tool':<30}{'median s':>10}{'lines/s':>14}   runs")
        for name, fn in tools.items():
            med, times = median_time(fn, args.runs)
            print(f"{name:<30}{med:>10.3f}{n / med:>14,.0f}   {', '.join(f'{t:.3f}' for t in times)}")
        for name, fn in plain.items():
            med, times = median_time(fn, 1)
            print(f"{name + ' (plain Python)':<30}{med:>10.3f}{n / med:>14,.0f}")


if __name__ == "__main__":
    main()
