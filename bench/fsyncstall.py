"""Why the log reserves disk space ahead: appends during a concurrent fsync, with and
without blocks reserved beforehand.

    python bench/fsyncstall.py [--writes N] [--runs R]

A writer appends 64 KiB at a time (a little work between writes) while another thread
fsyncs the file every 50 ms, as the log's fsync thread does.  On ext4 an fsync
allocates the blocks of what was appended since the last one, and appends wait for
it; with space reserved (proxy._logfast.reserve, fallocate keeping the size) they do
not.  Reports the slowest write and the writes' total time, median over runs.  The
file is created in the current directory, so run it on the disk the log uses.
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


def one_run(path: Path, writes: int, reserved: bool) -> tuple[float, float]:
    from proxy._logfast import reserve

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
    if reserved:
        reserve(fd, 0, writes * 65536)
    stop = threading.Event()

    def syncer() -> None:
        while not stop.wait(0.05):
            os.fsync(fd)

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
        path.unlink()
    return max(times), sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.runs):
        for reserved in (False, True):
            results[reserved].append(one_run(Path("fsyncstall.tmp"), args.writes, reserved))
    print(machine())
    print(f"{'space':<12}{'slowest write (ms)':>20}{'writes total (s)':>18}")
    for reserved, runs in results.items():
        slowest = statistics.median(r[0] for r in runs) * 1e3
        total = statistics.median(r[1] for r in runs)
        print(f"{'reserved' if reserved else 'not reserved':<12}{slowest:>20.1f}{total:>18.3f}")


if __name__ == "__main__":
    main()
