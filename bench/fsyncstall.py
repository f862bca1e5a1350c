"""Why the log reserves disk space ahead and drops synced pages behind: appends
during a concurrent fsync, plain, with blocks reserved beforehand, and with the
synced pages also dropped from the page cache after each fsync.

    python bench/fsyncstall.py [--writes N] [--runs R]

A writer appends 64 KiB at a time (a little work between writes) while another thread
fsyncs the file every 50 ms, as the log's fsync thread does.  On ext4 an fsync
allocates the blocks of what was appended since the last one, and appends wait for
it; with space reserved (proxy._logfast.reserve, fallocate keeping the size) they do
not.  With drop-behind the fsync thread then lets go of the synced pages but the last
8 MiB (proxy._log.drop_behind, what the log's fsync thread calls), and the appends reuse the
freed pages instead of taking fresh memory, which on a virtual machine may fault in
from the host.  Every run's file is kept until all runs are done, so no run reuses
the pages of another's deleted file: each sees the memory a long-running writer sees.
Reports the slowest write and the writes' total time, median over runs.  The files
are created in the current directory, so run it on the disk the log uses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

CONFIGS = {"not reserved": (False, False), "reserved": (True, False), "reserved, drop-behind": (True, True)}


def one_run(path: Path, writes: int, reserved: bool, drop: bool) -> tuple[float, float]:
    from proxy._log import drop_behind
    from proxy._logfast import reserve

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
    if reserved:
        reserve(fd, 0, writes * 65536)
    stop = threading.Event()

    def syncer() -> None:
        dropped = 0
        while not stop.wait(0.05):
            size = os.fstat(fd).st_size
            os.fsync(fd)
            if drop:
                dropped = drop_behind(fd, dropped, size)

    thread = threading.Thread(target=syncer)
    thread.start()
    chunk = b"x" * 65535 + b"\n"
    times = []
    try:
        for _ in range(writes):
            t = time.perf_counter()
            os.write(fd, chunk)
            times.append(time.perf_counter() - t)
            sum(range(2000))  # the engine's share of the work between writes
    finally:
        stop.set()
        thread.join()
        os.close(fd)
    return max(times), sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    files: list[Path] = []
    try:
        for run in range(args.runs):
            for name, (reserved, drop) in CONFIGS.items():  # interleaved: drift hits all alike
                files.append(Path(f"fsyncstall-{run}-{len(files)}.tmp"))
                results[name].append(one_run(files[-1], args.writes, reserved, drop))
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    print(machine())
    print(f"{'space':<24}{'slowest write (ms)':>20}{'writes total (s)':>18}")
    for name, runs in results.items():
        slowest = statistics.median(r[0] for r in runs) * 1e3
        total = statistics.median(r[1] for r in runs)
        print(f"{name:<24}{slowest:>20.1f}{total:>18.3f}")


if __name__ == "__main__":
    main()
